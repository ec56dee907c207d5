"""MMSegmentation end to end with real Runners: train with the hook on the digits segmentation
set, prune, save, resume, deploy, mmseg's test loop and inference API on the compact config.

The config is configs/digits/fcn_r18-d8_digits.py (an FCN with the auxiliary head mmseg trains
with) on a tiny generated set.
"""
import os.path as osp
import sys

import pytest
import torch

pytest.importorskip('mmseg')

from mmengine.config import Config  # noqa: E402

import mmgfp  # noqa: E402,F401
from mmgfp.apis.checking.check import rel_diff  # noqa: E402
from mmgfp.apis.inputs import tensor_forward  # noqa: E402

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'hooks'))
from runner_utils import hook_masks, pruning_hook, train_runner  # noqa: E402  (tests/hooks)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'digits', 'fcn_r18-d8_digits.py')
GEN = dict(num_train=16, num_val=4, seed=0)
HOOK = dict(type='FisherPruningHook', interval=2, delta='acts', target=0.6,
            target_metric='flops', channels_per_step=8, save_thresholds=(0.9, ))


@pytest.fixture(scope='module')
def seg_data(tmp_path_factory):
    from mmgfp.datasets import prepare_digits_seg
    root = str(tmp_path_factory.mktemp('digits_seg'))
    prepare_digits_seg(root, **GEN)
    return root


def _config(tmp_path, data_root, max_iters=8):
    """The digits FCN config on ``data_root``, ``max_iters`` iterations, with the hook."""
    text = f'''
_base_ = {CONFIG!r}
data_root = {data_root!r}
# no dropout: MMEngine does not restore the random state on resume, so dropout would make the
# resumed run's gradients (and masks) differ from the uninterrupted run's
model = dict(decode_head=dict(dropout_ratio=0.0), auxiliary_head=dict(dropout_ratio=0.0))
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root, generate_cfg={GEN}))
val_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root, generate_cfg={GEN}))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={max_iters}, val_interval=1000)
param_scheduler = []
default_hooks = dict(checkpoint=dict(interval=4, max_keep_ckpts=-1),
                     logger=dict(interval=2))
custom_hooks = [{HOOK}]
'''
    path = osp.join(str(tmp_path), 'seg.py')
    with open(path, 'w') as f:
        f.write(text)
    return path


def test_segmentor_prune_resume_deploy_test(tmp_path, seg_data):
    config = _config(tmp_path, seg_data)
    full = train_runner(config, tmp_path / 'full')
    hook = pruning_hook(full)
    assert hook.steps >= 1 and hook.pruner.remaining()['flops'] < 1
    aux = [k for k in hook.pruner.masker.keep if k.startswith('auxiliary_head')]
    assert aux, 'the auxiliary head (loss only) is traced and grouped'
    # killed after 4 iterations (mid-pruning) and resumed: the same masks
    train_runner(config, tmp_path / 'part', **{'train_cfg.max_iters': 4})
    assert torch.load(tmp_path / 'part' / 'iter_4.pth',
                      weights_only=True)['mmgfp']['finished'] is False
    resumed = train_runner(config, tmp_path / 'part', resume=True)
    a, b = hook_masks(full), hook_masks(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    import tools.deploy_pruned as deploy_tool
    out = deploy_tool.main([config, str(tmp_path / 'full' / 'iter_8.pth'), '--out-dir',
                            str(tmp_path / 'deploy')])
    assert out['pruned'] == 'yes'
    cfg = Config.fromfile(out['config'])
    assert cfg.model.type == 'GFPCompactModel' and 'auxiliary_head' in cfg.model
    # mmseg's own inference API builds the compact model; it computes what the masked did
    from mmseg.apis import inference_model, init_model
    compact = init_model(out['config'], out['checkpoint'], device='cpu')
    masked = full.model.eval()
    batch = next(iter(full.val_dataloader))
    with torch.no_grad():
        assert rel_diff(tensor_forward(batch)(compact), tensor_forward(batch)(masked)) < 1e-4
        # the auxiliary head, sliced with the backbone, reads the compact features
        feats = compact.extract_feat(compact.data_preprocessor(batch)['inputs'])
        assert compact.auxiliary_head(feats).shape[1] == 11
    assert sum(p.numel() for p in compact.parameters()) < sum(
        p.numel() for p in masked.parameters())
    img = osp.join(seg_data, 'img_dir', 'val', '00000.png')
    assert inference_model(compact, img).pred_sem_seg.data.shape[-2:] == (64, 64)
    # mmseg's test loop on the compact config and on the masked (hook) config: same mIoU
    import tools.test as test_tool
    got = test_tool.main([out['config'], out['checkpoint'], '--work-dir',
                          str(tmp_path / 'test')])
    ref = test_tool.main([config, str(tmp_path / 'full' / 'iter_8.pth'), '--work-dir',
                          str(tmp_path / 'test_masked')])
    assert 'mIoU' in got and got['mIoU'] == pytest.approx(ref['mIoU'], abs=1e-2)
