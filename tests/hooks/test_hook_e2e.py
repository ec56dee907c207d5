"""End to end with real MMEngine Runners: train with the hook, prune, save, resume, deploy, test.

Each test builds its config from a config that mmdet or mmpretrain ships (``mmdet::...``,
``mmpretrain::...``) on digits data generated into a temporary folder.
"""
import glob
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmgfp  # noqa: F401
from mmgfp.apis.checking.check import rel_diff
from mmgfp.apis.inputs import tensor_forward
from runner_utils import cls_config, det_config, hook_masks, pruning_hook, train_runner

pytestmark = pytest.mark.slow


def _check_pruned_run(runner, work_dir):
    hook = pruning_hook(runner)
    assert hook.pruner is not None and hook.steps >= 1
    assert hook.finished, 'a target of 0.97 FLOPs must be reached within the run'
    rem = hook.pruner.remaining()
    assert rem['flops'] <= 0.97 and rem['acts'] < 1 and rem['params'] < 1
    # the threshold checkpoint and spec were written, and the final spec
    assert osp.isfile(osp.join(work_dir, 'pruned_flops_0.98.pth'))
    spec = json.load(open(osp.join(work_dir, 'pruned_flops_0.98.json')))
    assert spec['format'] == 'mmgfp.channel_spec'
    assert osp.isfile(osp.join(work_dir, 'channels_final.json'))
    # pruning progress went to the normal training log / message hub
    scalars = runner.message_hub.log_scalars
    assert 'train/gfp_flops' in scalars
    assert scalars['train/gfp_flops'].current() == pytest.approx(rem['flops'])
    logs = ''.join(open(p).read() for p in glob.glob(osp.join(work_dir, '*', '*.log')))
    assert 'FisherPruningHook: pruned' in logs
    # masked channels are really zero where they are consumed: optimizer did not revive them
    ckpt = torch.load(osp.join(work_dir, f'iter_{runner.iter}.pth'), weights_only=True)
    assert ckpt['mmgfp']['finished'] is True


def _deploy_and_compare(config, ckpt, out_dir, runner):
    """Deploy; the compact model rebuilt from its config computes what the masked model did."""
    import tools.deploy_pruned as deploy_tool
    out = deploy_tool.main([config, ckpt, '--out-dir', str(out_dir)])
    assert out['pruned'] == 'yes'
    cfg = Config.fromfile(out['config'])
    assert cfg.model.type == 'GFPCompactModel'
    assert not any(h['type'] == 'FisherPruningHook' for h in cfg.custom_hooks)
    # masked reference: the trained runner's model with masks attached
    masked = runner.model
    masked.eval()
    batch = next(iter(runner.val_dataloader))
    with torch.no_grad():
        ref = tensor_forward(batch)(masked)
    init_default_scope(cfg.default_scope)
    from mmengine.registry import MODELS
    compact = MODELS.build(cfg.model)  # what init_detector / mmpretrain's init_model build
    assert type(compact).__name__ == type(masked).__name__
    state = torch.load(out['checkpoint'], weights_only=True)['state_dict']
    compact.load_state_dict(state)
    compact.eval()
    with torch.no_grad():
        out_t = tensor_forward(batch)(compact)
    assert rel_diff(out_t, ref) < 1e-4
    n_masked = sum(p.numel() for p in masked.parameters())
    n_compact = sum(p.numel() for p in compact.parameters())
    assert n_compact < n_masked
    return out


@pytest.mark.parametrize('base', ['retinanet/retinanet_r18_fpn_1x_coco.py',
                                  'fcos/fcos_r18_fpn_gn-head-center_1x_coco.py'])
def test_detector_prune_deploy_test(tmp_path, det_data, base):
    if not osp.isfile(osp.join(osp.dirname(__import__('mmdet').__file__), '.mim', 'configs',
                               base)):
        # mmdet 3.3 ships no FCOS-R18 config: use R50's and make it an R18 in our template
        base = base.replace('fcos_r18', 'fcos_r50-caffe')
    config = det_config(tmp_path, det_data, base=base)
    work = tmp_path / 'work'
    runner = train_runner(config, work)
    _check_pruned_run(runner, str(work))
    out = _deploy_and_compare(config, str(work / 'iter_12.pth'), tmp_path / 'deploy', runner)
    # mmdet's own test loop on the compact config, through tools/test.py
    import tools.test as test_tool
    metrics = test_tool.main([out['config'], out['checkpoint'], '--work-dir',
                              str(tmp_path / 'test')])
    assert 'coco/bbox_mAP' in metrics and metrics['coco/bbox_mAP'] >= 0
    # the masked model evaluated from the hook config gives the same mAP as the compact one
    metrics_masked = test_tool.main([config, str(work / 'iter_12.pth'), '--work-dir',
                                     str(tmp_path / 'test_masked')])
    assert metrics_masked['coco/bbox_mAP'] == pytest.approx(metrics['coco/bbox_mAP'], abs=1e-3)
    # mmdet's own inference API takes the compact config and checkpoint as they are
    from mmdet.apis import inference_detector, init_detector
    det = init_detector(out['config'], out['checkpoint'], device='cpu')
    # One image at 96x96 gives FCOS a 1x1 top level, where GroupNorm with one channel per
    # group has a single value per group and refuses the batch (as the unpruned model does):
    # infer at 160x160 instead.
    resize = next(t for t in det.cfg.test_dataloader.dataset.pipeline if t['type'] == 'Resize')
    resize['scale'] = (160, 160)
    img = sorted(glob.glob(osp.join(det_data, 'val', '*.png')))[0]
    result = inference_detector(det, img)
    assert result.pred_instances.bboxes.shape[-1] == 4


def test_detector_resume_matches_uninterrupted(tmp_path, det_data):
    config = det_config(tmp_path, det_data, max_iters=12, interval=2, target=0.7, per_step=4,
                        ckpt_interval=6)
    full = train_runner(config, tmp_path / 'full')
    # the same run, killed after 6 iterations (mid-pruning) and resumed
    train_runner(config, tmp_path / 'part', **{'train_cfg.max_iters': 6})
    part_hook_ckpt = torch.load(tmp_path / 'part' / 'iter_6.pth', weights_only=True)
    assert part_hook_ckpt['mmgfp']['finished'] is False, 'the kill must fall mid-pruning'
    assert part_hook_ckpt['mmgfp']['pruner']['recorder']  # accumulated statistics are saved
    resumed = train_runner(config, tmp_path / 'part', resume=True)
    assert resumed.iter == 12
    a, b = hook_masks(full), hook_masks(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f'group {k} differs after resume'
    assert pruning_hook(full).steps == pruning_hook(resumed).steps
    for (n, p), (_, q) in zip(full.model.state_dict().items(),
                              resumed.model.state_dict().items()):
        if p.is_floating_point():
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), n


def test_load_from_restores_masks(tmp_path, det_data):
    """`load_from` a pruned checkpoint: masks are restored and pruning continues from them."""
    config = det_config(tmp_path, det_data, max_iters=6, interval=2, target=0.85, per_step=8)
    first = train_runner(config, tmp_path / 'a')
    kept_a = {k: int(v.sum()) for k, v in hook_masks(first).items()}
    second = train_runner(config, tmp_path / 'b', load_from=str(tmp_path / 'a' / 'iter_6.pth'),
                    **{'custom_hooks.0.target': 0.7})
    kept_b = {k: int(v.sum()) for k, v in hook_masks(second).items()}
    assert all(kept_b[k] <= kept_a[k] for k in kept_a)
    assert sum(kept_b.values()) < sum(kept_a.values())


def test_finetune_keeps_the_saved_masks(tmp_path, det_data):
    """What the *_gfp_finetune.py configs do: `load_from` a threshold checkpoint of a pruning
    run with `prune=False` and its spec as `init_spec`; the masks stay as saved while the
    weights train, the final checkpoint carries them, and it deploys. With no pruning state in
    the loaded weights, `init_spec` alone sets the same masks."""
    config = det_config(tmp_path, det_data)
    train_runner(config, tmp_path / 'prune')
    saved = torch.load(tmp_path / 'prune' / 'pruned_flops_0.98.pth', weights_only=True)
    saved_masks = saved['mmgfp']['pruner']['masks']
    assert any(not bool(v.all()) for v in saved_masks.values())
    finetune = {'custom_hooks': [dict(type='FisherPruningHook', prune=False,
                                      init_spec=str(tmp_path / 'prune' /
                                                    'pruned_flops_0.98.json'))],
                'train_cfg.max_iters': 4}
    ft = train_runner(config, tmp_path / 'ft', load_from=str(tmp_path / 'prune' /
                                                        'pruned_flops_0.98.pth'), **finetune)
    hook = pruning_hook(ft)
    assert hook.steps == 0 and hook.finished
    masks = hook_masks(ft)
    assert masks.keys() == saved_masks.keys()
    for k in masks:
        assert torch.equal(masks[k], saved_masks[k]), f'group {k} changed while fine-tuning'
    moved = [n for n, p in ft.model.state_dict().items()
             if p.is_floating_point() and not torch.equal(p, saved['state_dict'][n])]
    assert moved, 'fine-tuning did not train the weights'
    final = torch.load(tmp_path / 'ft' / 'iter_4.pth', weights_only=True)
    for k in masks:
        assert torch.equal(final['mmgfp']['pruner']['masks'][k], saved_masks[k])
    _deploy_and_compare(config, str(tmp_path / 'ft' / 'iter_4.pth'), tmp_path / 'deploy', ft)
    # init_spec alone (e.g. the baseline's weights under a given channel spec)
    spec_only = train_runner(config, tmp_path / 'spec', **dict(finetune, **{'train_cfg.max_iters': 1}))
    for k, v in hook_masks(spec_only).items():
        assert torch.equal(v, saved_masks[k]), f'group {k} differs from the spec'


@pytest.mark.parametrize('base', ['resnet/resnet18_8xb32_in1k.py',
                                  'mobilenet_v2/mobilenet-v2_8xb32_in1k.py'])
def test_classifier_prune_deploy_test(tmp_path, cls_data, base):
    config = cls_config(tmp_path, cls_data, base=base, optimizer='AdamW', lr=0.001,
                        per_step=128)
    work = tmp_path / 'work'
    runner = train_runner(config, work)
    _check_pruned_run(runner, str(work))
    out = _deploy_and_compare(config, str(work / 'iter_12.pth'), tmp_path / 'deploy', runner)
    import tools.test as test_tool
    metrics = test_tool.main([out['config'], out['checkpoint'], '--work-dir',
                              str(tmp_path / 'test')])
    assert 'accuracy/top1' in metrics
    metrics_masked = test_tool.main([config, str(work / 'iter_12.pth'), '--work-dir',
                                     str(tmp_path / 'test_masked')])
    assert metrics_masked['accuracy/top1'] == pytest.approx(metrics['accuracy/top1'])
