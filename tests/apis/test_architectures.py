"""Grouping, equivalence and reload through the compact config on the configs mmdet and
mmpretrain ship (``<pkg>/.mim/configs``), at several random pruning ratios.

Each case builds the model from the shipped config (no weights), masks a random fraction of every
prunable group, deploys the compact model through ``GFPCompactModel``, rebuilds it from the
written config and compares outputs in eval mode with non-trivial BN statistics.
"""
import pytest
import torch

import mmgfp  # noqa: F401
from mmgfp.apis.checking.check import compact_pair, compare, load_config, pair_report, verdict

pytestmark = pytest.mark.slow

ARCHS = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'mmdet::atss/atss_r50_fpn_1x_coco.py',
    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'mmdet::retinanet/retinanet_x101-32x4d_fpn_1x_coco.py',
    'mmdet::regnet/retinanet_regnetx-800MF_fpn_1x_coco.py',
    'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
    'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py',
    'mmpretrain::resnet/resnet50_8xb32_in1k.py',
    'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py',
    'mmpretrain::regnet/regnetx-400mf_8xb128_in1k.py',
    'mmpretrain::resnext/resnext50-32x4d_8xb32_in1k.py',
]
# every architecture at two random pruning ratios (a light and a heavy one)
CASES = [(a, r) for i, a in enumerate(ARCHS) for r in ((0.3, 0.7) if i % 2 else (0.4, 0.6))]
# two-stage models whose discrete decisions (proposals, cascade refinements, RoI levels) the
# check takes in the masked model and replays in the compact one; one ratio each (CI time)
CASCADE = 'mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py'
MASK_RCNN = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
CASES += [(MASK_RCNN, 0.5), (CASCADE, 0.5)]


@pytest.fixture(scope='module')
def reports():
    return {}


def _report(reports, config, ratio):
    key = (config, ratio)
    if key not in reports:
        pair = compact_pair(load_config(config), ratio=ratio, seed=1, input_size=(64, 64))
        reports[key] = pair_report(pair)
        if config == CASCADE:  # kept for the planted-error tests below
            reports['pair', config, ratio] = pair
    return reports[key]


@pytest.mark.parametrize('config,ratio', CASES, ids=[f'{c.split("/")[-1]}-{r}'
                                                     for c, r in CASES])
def test_compact_equivalent_and_reloads(reports, config, ratio):
    rep = _report(reports, config, ratio)
    assert rep['num_prunable_groups'] > 0
    assert rep['equivalent'], f"max relative difference {rep['max_rel_diff']}"
    assert rep['max_rel_diff'] < 1e-4
    assert rep['rebuilt_class'] == rep['original_class']
    assert rep['flops_after'] < rep['flops_before']
    assert rep['acts_after'] < rep['acts_before']
    assert rep['params_after'] < rep['params_before']
    # the predicted parameter count is what the rebuilt model really has
    assert rep['params_after'] == pytest.approx(rep['params_after_predicted'], rel=1e-6)
    for g in rep['groups']:
        assert g['prunable'] == (not g['reasons'])


def _groups(reports, config, ratio):
    return {g['key']: g for g in _report(reports, config, ratio)['groups']}


def test_retinanet_fpn_and_shared_head(reports):
    groups = _groups(reports, 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 0.4)
    # laterals, top-down adds, output convs and the extra level feed one shared head: the FPN
    # output channels of every level are one group, consumed by the head once per level
    fpn = [g for g in groups.values() if 'neck.fpn_convs.0.conv' in g['producers']]
    assert len(fpn) == 1
    fpn = fpn[0]
    assert {'neck.fpn_convs.1.conv', 'neck.fpn_convs.2.conv'} <= set(fpn['producers'])
    assert 'bbox_head.cls_convs.0.conv' in fpn['consumers']
    assert 'bbox_head.reg_convs.0.conv' in fpn['consumers']
    assert fpn['prunable']
    laterals = [g for g in groups.values() if 'neck.lateral_convs.0.conv' in g['producers']]
    assert laterals and set(laterals[0]['producers']) >= {'neck.lateral_convs.1.conv',
                                                          'neck.lateral_convs.2.conv'}
    # residual stream of a ResNet stage: every block's conv3 and the downsample are coupled
    stage = [g for g in groups.values() if 'backbone.layer1.0.conv3' in g['producers']][0]
    assert {'backbone.layer1.0.downsample.0', 'backbone.layer1.1.conv3',
            'backbone.layer1.2.conv3'} <= set(stage['producers'])
    # the classifier output feeds the loss, not a layer: it cannot be pruned
    assert not groups['bbox_head.retina_cls']['prunable']


def test_depthwise_and_group_convs(reports):
    groups = _groups(reports, 'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py', 0.3)
    dw = [g for g in groups.values() if any('conv.1.conv' in p for p in g['passthrough'])]
    assert dw, 'depth-wise convs must carry their group through'
    groups = _groups(reports, 'mmpretrain::resnext/resnext50-32x4d_8xb32_in1k.py', 0.3)
    grouped = [g for g in groups.values() if g['block'] > 1]
    assert grouped and all(g['channels'] % g['block'] == 0 for g in grouped)


def test_fcos_group_norm_whole_groups(reports):
    groups = _groups(reports, 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 0.3)
    head = [g for g in groups.values() if 'bbox_head.cls_convs.0.conv' in g['producers']][0]
    # GN(32 groups) over 256 channels: only whole norm groups of 8 channels can go
    assert head['block'] == 256 // 32
    assert any('gn' in p for p in head['passthrough'])


def test_two_stage_decisions_replayed(reports):
    rep = _report(reports, MASK_RCNN, 0.5)
    assert rep['replayed']['rpn_head.predict'] == 1
    assert rep['replayed']['roi_head.mask_roi_extractor.map_roi_levels'] == 1
    rep = _report(reports, CASCADE, 0.5)
    # two images: each stage but the last refines the boxes of both
    assert rep['replayed']['roi_head.bbox_head.0.regress_by_class'] == 2
    assert rep['replayed']['roi_head.bbox_head.1.regress_by_class'] == 2
    assert 'roi_head.bbox_head.2.regress_by_class' not in rep['replayed']


@pytest.mark.parametrize('layer', [
    'backbone.layer2.0.conv2',
    'rpn_head.rpn_conv',  # before the proposals are chosen
    'roi_head.bbox_head.0.shared_fcs.1',  # before stage 1 refines the boxes
    'roi_head.bbox_head.1.shared_fcs.1',  # after a replayed refinement
])
def test_wrong_channel_in_compact_model_is_caught(reports, layer):
    """Replaying decisions must not hide a wrong compact model: one kept input channel of one
    compact layer zeroed is seen, and the restored model passes again."""
    _report(reports, CASCADE, 0.5)
    pair = reports['pair', CASCADE, 0.5]
    weight = dict(pair['rebuilt'].named_modules())[layer].weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[:, 0] = 0
        wrong = compare(pair['rebuilt'], pair['data'], pair['reference'])
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert wrong > 1e-3
    assert compare(pair['rebuilt'], pair['data'], pair['reference']) < 1e-4


def test_float64_rerun_of_a_two_stage_detector(reports):
    """The float64 rerun runs Cascade R-CNN (its NMS on float32 copies, the masked copy's
    decisions replayed in the compact copy): the right compact model agrees to far below
    float32 rounding, one with a zeroed kept channel differs in float32 and in float64."""
    _report(reports, CASCADE, 0.5)
    pair = reports['pair', CASCADE, 0.5]
    diff = compare(pair['rebuilt'], pair['data'], pair['reference'])
    right = verdict(pair, diff, tol=1e-12)  # below float32 rounding: forces the rerun
    assert right['equivalent'] and right['max_rel_diff_float64'] < 1e-12 < diff
    assert 'NMSop' in right['float64_note']
    weight = pair['rebuilt'].roi_head.bbox_head[1].shared_fcs[1].weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[:, 0] = 0
        wrong = verdict(pair, compare(pair['rebuilt'], pair['data'], pair['reference']), 1e-4)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert not wrong['equivalent'] and wrong['max_rel_diff_float64'] > 1e-3
    assert wrong['max_rel_diff'] > 1e-3


def test_tood_groups_outside_a_runner():
    """TOOD's loss reads the epoch a Runner puts in the message hub; analyze (and so
    check_model and tools/analyze_groups.py) set what the training loop would."""
    from mmengine.logging import MessageHub

    from mmgfp.apis.checking.check import analyze
    hub = MessageHub.get_instance('mmgfp_test_tood_no_runner')  # fresh: no epoch, no iter
    assert MessageHub.get_current_instance() is hub and hub.get_info('epoch') is None
    found = analyze(load_config('mmdet::tood/tood_r50_fpn_1x_coco.py'), (64, 64))
    assert hub.get_info('epoch') == 0 and found['model'].bbox_head.epoch == 0
    assert found['groups'].prunable
