"""The hooks under MMEngine's AmpOptimWrapper in a real Runner (loss scaling and autocast).

MMEngine's AmpOptimWrapper refuses to build without a GPU; the fixture lets it build on the CPU
(bfloat16 autocast, which MMEngine's own ``autocast`` picks there, and PyTorch's CPU
GradScaler), so the Runner takes the code path it takes on a GPU: the loss scaled before the
backward, the gradients unscaled before clipping and the step, the scale updated after it.
"""
import functools
import math

import pytest
import torch

import mmgfp  # noqa: F401
from mmgfp.hooks import FisherPruningHook, GFPDistillHook
from runner_utils import cls_config, det_config, hook_fisher, hook_masks, train_runner

from test_distill_unlabeled import NO_VAL, _hook, _images, _prune

AMP = 'mmengine.optim.optimizer.amp_optimizer_wrapper'
# the scale doubles after every finite step, as a dynamic scaler does after growth_interval
GROWING = dict(init_scale=2.0 ** 10, growth_interval=1)


@pytest.fixture
def amp_on_cpu(monkeypatch):
    monkeypatch.setattr(f'{AMP}.is_cuda_available', lambda: True)
    monkeypatch.setattr(f'{AMP}.GradScaler', functools.partial(torch.amp.GradScaler, 'cpu'))


def _amp(loss_scale, **kw):
    return {'optim_wrapper.type': 'AmpOptimWrapper', 'optim_wrapper.loss_scale': loss_scale,
            **kw}


def _scale(runner):
    return float(runner.optim_wrapper.loss_scaler.get_scale())


@pytest.mark.parametrize('distill,accumulate', [(None, 1), ('all', 1), ('task', 1), (None, 2)])
def test_fisher_is_that_of_the_unscaled_loss_while_the_scale_grows(tmp_path, cls_data,
                                                                   amp_on_cpu, distill,
                                                                   accumulate):
    """The gradients of a scaled loss are the unscaled ones times the scale of *that*
    iteration's backward: the Fisher information accumulated while the scale doubles on every
    step equals that of a run at scale 1 (multiplying by a power of two is exact), with the
    pruning hook alone, with the teacher's term in the ranking or out of it, and with
    gradient accumulation (the scale changes after every second iteration's step only)."""
    config = cls_config(tmp_path, cls_data, max_iters=4, ckpt_interval=100)
    hooks = [_prune(interval=100)]  # accumulate only
    if distill:
        hooks.append(dict(type='GFPDistillHook', fisher=distill,
                          losses=[dict(module='head', type='kl', tau=4.0, weight=10.0)]))
    extra = {'optim_wrapper.accumulative_counts': accumulate}
    growing = train_runner(config, tmp_path / 'g', **dict(NO_VAL, custom_hooks=hooks,
                                                          **_amp(GROWING, **extra)))
    plain = train_runner(config, tmp_path / 'p', **dict(NO_VAL, custom_hooks=hooks,
                                                        **_amp(1.0, **extra)))
    steps = 4 // accumulate
    assert _scale(growing) == 2.0 ** (10 + steps) and _scale(plain) == 1.0  # the scaler ran
    assert _hook(growing, FisherPruningHook).pruner.recorder.iters == 4
    a, b = hook_fisher(growing), hook_fisher(plain)
    assert a.keys() == b.keys() and any(bool(v.any()) for v in b.values())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=0,
                                   msg=lambda m, k=k: f'{k}: {m}')


def test_retinanet_prunes_and_distils_with_pseudo_labels_under_amp(tmp_path, det_data,
                                                                   amp_on_cpu):
    """A detector through pruning steps under AMP (a smoke test: the dynamic scale does not
    change in 6 iterations), the teacher's CWD on the neck and its detections as labels of
    images without labels (it predicts in full precision: mmcv's CPU NMS takes float32 only):
    channels go, every logged term is finite, the pseudo boxes are there."""
    config = det_config(tmp_path, det_data, max_iters=6, interval=2, target=0.8, per_step=8,
                        ckpt_interval=100)
    hooks = [_prune(target=0.8), dict(
        type='GFPDistillHook', unlabeled_dataloader=_images(det_data),
        pseudo_labels=dict(score_thr=0.002, weight=2.0))]
    runner = train_runner(config, tmp_path / 'amp', **dict(
        NO_VAL, custom_hooks=hooks, **_amp('dynamic'),
        **{'model.test_cfg.score_thr': 0.0, 'model.test_cfg.max_per_img': 20}))
    assert _hook(runner, FisherPruningHook).steps == 3
    masks = hook_masks(runner)
    assert sum(int((~m).sum()) for m in masks.values()) > 0, 'channels were pruned'
    scalars = runner.message_hub.log_scalars
    for key in ('train/loss_distill_cwd_neck', 'train/loss_cls_pseudo', 'train/loss'):
        values = list(scalars[key].data[0])
        assert values and all(math.isfinite(v) for v in values), key
    assert all(b > 0 for b in scalars['train/pseudo_boxes'].data[0])
    assert _hook(runner, GFPDistillHook).teacher is not None
