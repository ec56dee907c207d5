"""benchmarks/accuracy.py on the digits pose and segmentation configs (issue 17, item 6).

The codebase-aware pieces (benchmarks/_accuracy_tasks.py): which task a config is, the layers
that are predictions (never pruned), Torch-Pruning's forward through a segmentor's auxiliary
head, the metric read from each evaluator; and --quick end to end for GFP, Torch-Pruning and
the unpruned model at 30% of the FLOPs.
"""
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import accuracy  # noqa: E402  (imports no torch at module level)

POSE = osp.join(ROOT, 'configs', 'digits', 'td-hm_r18_digits.py')
SEG = osp.join(ROOT, 'configs', 'digits', 'fcn_r18-d8_digits.py')
NEEDS = {POSE: 'mmpose', SEG: 'mmseg'}


def _model(config):
    pytest.importorskip(NEEDS[config])
    import _accuracy_methods as M
    from _accuracy_tasks import task_of
    from mmengine.registry import init_default_scope

    from mmgfp.apis.checking.check import load_config
    from mmgfp.codebases.base import prepare_scope
    cfg = load_config(config)
    prepare_scope(cfg)
    init_default_scope(cfg.default_scope)
    return task_of(cfg), M.build(cfg)


def test_prediction_layers_are_the_heads_last_convs():
    task, model = _model(SEG)
    assert task.keys == ('mIoU', 'mAcc')
    assert task.output_layers(model) == [model.decode_head.conv_seg,
                                         model.auxiliary_head.conv_seg]
    task, model = _model(POSE)
    assert task.keys == ('AP', 'AP50')
    assert task.output_layers(model) == [model.head.final_layer]


def test_torch_pruning_sees_the_auxiliary_head():
    """mmseg's test path skips the auxiliary head; Torch-Pruning must prune its input with the
    backbone stage it reads, or the pruned model cannot train."""
    pytest.importorskip('torch_pruning')
    import _accuracy_methods as M
    import torch
    task, model = _model(SEG)
    M.set_task(task, (64, 64))
    M.tp_prune(model, 'l1', 0.5, True)
    aux_in = model.auxiliary_head.convs[0].conv.in_channels
    assert aux_in == model.backbone.layer3[-1].conv2.out_channels < 64
    model.train()
    feats = model.extract_feat(torch.rand(2, 3, 64, 64))
    assert model.auxiliary_head(feats).shape[1] == 11


@pytest.mark.parametrize('task_name, metrics, expected', [
    ('mmseg', {'aAcc': 91.0, 'mIoU': 62.2, 'mAcc': 75.2}, {'mIoU': 62.2, 'mAcc': 75.2}),
    ('mmpose', {'coco/AP': 0.8, 'coco/AP .5': 0.9, 'coco/AR': 0.85}, {'AP': 0.8, 'AP50': 0.9}),
    ('mmdet', {'coco/bbox_mAP': 0.5, 'coco/bbox_mAP_50': 0.7}, {'mAP': 0.5, 'mAP50': 0.7}),
])
def test_each_task_reads_its_metric(task_name, metrics, expected):
    from _accuracy_tasks import TASKS
    assert TASKS[task_name]().read(metrics) == pytest.approx(expected)
    with pytest.raises(KeyError, match='gave none of'):
        TASKS[task_name]().read({'other': 1.0})


def test_a_bottom_up_pose_model_is_refused(tmp_path):
    pytest.importorskip('mmpose')
    config = tmp_path / 'dekr.py'
    config.write_text(f"_base_ = '{POSE}'\nmodel = dict(type='BottomupPoseEstimator')\n")
    with pytest.raises(SystemExit, match="'BottomupPoseEstimator' is not a top-down pose"):
        accuracy.main(['--config', str(config), '--work-dir', str(tmp_path / 'wd'),
                       '--methods', 'gfp_acts', '--baseline-iters', '2'])


@pytest.mark.slow
@pytest.mark.parametrize('config', [POSE, SEG], ids=['pose', 'seg'])
def test_quick_gfp_tp_and_unpruned_at_30_percent(config, tmp_path):
    pytest.importorskip(NEEDS[config])
    pytest.importorskip('torch_pruning')
    out = accuracy.main(['--config', config, '--quick', '--threads', '1', '--targets', '0.3',
                         '--methods', 'gfp_acts', 'tp_l1', 'unpruned',
                         '--work-dir', str(tmp_path / 'wd')])
    key = next(iter(out['metric']))
    assert out['task'] == NEEDS[config] and key in ('AP', 'mIoU')
    runs = {r['method']: r for r in out['runs']}
    assert sorted(runs) == ['gfp_acts', 'tp_l1', 'unpruned']
    for method, r in runs.items():
        assert 'error' not in r, f'{method}: {r.get("error")}'
        assert r[key] >= 0.0
        if method != 'unpruned':
            assert r['flops'] < 0.3 + accuracy.QUICK['tol'], (method, r['flops'])
    assert abs(runs['tp_l1']['flops'] - 0.3) <= accuracy.QUICK['tol']
    assert runs['gfp_acts']['info']['target_reached']
    assert key in runs['tp_l1']['info']['pruned_eval']
