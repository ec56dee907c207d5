"""FisherPruningHook pieces that need no Runner: the AMP loss scale and the batch size.

Argument checks are in tests/apis/test_bad_input.py.
"""
from types import SimpleNamespace

import pytest
import torch
from mmengine.optim import OptimWrapper

from mmgfp.hooks import FisherPruningHook
from mmgfp.hooks.fisher_pruning_hook import _batch_size, _grad_scale


def _runner(wrapper):
    return SimpleNamespace(optim_wrapper=wrapper)


def test_grad_scale_reads_an_enabled_loss_scaler():
    """AMP multiplies the loss by the scaler's scale: the hook must divide it out again."""
    scaler = torch.amp.GradScaler('cpu', init_scale=256.0)
    assert _grad_scale(_runner(SimpleNamespace(loss_scaler=scaler))) == 256.0
    off = torch.amp.GradScaler('cpu', init_scale=256.0, enabled=False)
    assert _grad_scale(_runner(SimpleNamespace(loss_scaler=off))) == 1.0


def test_grad_scale_is_one_without_amp():
    model = torch.nn.Linear(2, 2)
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    assert _grad_scale(_runner(wrapper)) == 1.0


def test_batch_size_comes_from_the_data():
    assert _batch_size({'inputs': [torch.zeros(3, 8, 8)] * 5, 'data_samples': []}) == 5
    assert _batch_size((torch.zeros(7, 3, 8, 8), None)) == 7


class _FakeRunner:
    """Just what the threshold save needs: work_dir, save_checkpoint, logger."""

    def __init__(self, work_dir, fail=False):
        self.work_dir, self.fail = str(work_dir), fail
        self.logger = SimpleNamespace(info=lambda *a, **k: None)

    def save_checkpoint(self, out_dir, filename, **kw):
        with open(f'{out_dir}/{filename}', 'wb') as f:
            f.write(b'half a checkpoint')
            if self.fail:
                raise OSError('disk full')
            f.write(b' and the rest')


def test_threshold_checkpoint_is_written_atomically(tmp_path):
    from mmgfp.hooks.fisher_pruning_hook import _save_checkpoint_atomic
    final = tmp_path / 'pruned_flops_0.50.pth'
    final.write_bytes(b'an earlier, complete checkpoint')
    with pytest.raises(OSError, match='disk full'):
        _save_checkpoint_atomic(_FakeRunner(tmp_path, fail=True), final.name)
    assert final.read_bytes() == b'an earlier, complete checkpoint'
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]  # no partial file left
    _save_checkpoint_atomic(_FakeRunner(tmp_path), final.name)
    assert final.read_bytes() == b'half a checkpoint and the rest'
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


class _OneLayerNet(__import__('mmengine').model.BaseModel):
    """A model whose only conv produces the network output: no channel can go."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.conv(torch.stack(inputs) if isinstance(inputs, list) else inputs)
        return {'loss': out.mean()} if mode == 'loss' else out


def test_nothing_prunable_is_a_clear_error():
    hook = FisherPruningHook()
    runner = SimpleNamespace(model=_OneLayerNet(), logger=SimpleNamespace(info=print))
    batch = {'inputs': [torch.randn(3, 8, 8), torch.randn(3, 8, 8)], 'data_samples': None}
    with pytest.raises(RuntimeError, match='found nothing prunable.*Remove the hook'):
        hook.before_train_iter(runner, 0, batch)


def test_non_finite_iteration_is_warned_and_left_out():
    """The hook passes an overflowed iteration's verdict on to the log, and pruning goes on from
    the finite statistics."""
    from mmgfp.core import FisherPruner, build_groups
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3))
    x = torch.randn(2, 3, 10, 10)
    hook = FisherPruningHook(interval=100)
    hook.pruner = FisherPruner(model, build_groups(model, lambda m: m(x)))
    hook.pruner.masker.attach()
    hook.pruner.recorder.start()
    warnings = []
    runner = SimpleNamespace(iter=6, optim_wrapper=SimpleNamespace(),
                             logger=SimpleNamespace(warning=warnings.append))
    for scale in (1.0, float('inf')):
        hook.pruner.recorder.begin_iter(2)
        (model(x).square().mean() * scale).backward()
        hook.after_train_iter(runner, 6)
    rec = hook.pruner.recorder
    assert rec.iters == 1 and rec.skipped == 1
    assert all(bool(torch.isfinite(v).all()) and bool((v > 0).any()) for v in rec.fisher.values())
    assert len(warnings) == 1 and 'iteration 7 gave non-finite gradients' in warnings[0]
