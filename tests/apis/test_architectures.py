"""Grouping, equivalence and reload through the compact config on the configs mmdet and
mmpretrain ship (``<pkg>/.mim/configs``), at several random pruning ratios.

Each case builds the model from the shipped config (no weights), masks a random fraction of every
prunable group, deploys the compact model through ``GFPCompactModel``, rebuilds it from the
written config and compares outputs in eval mode with non-trivial BN statistics.
"""
import pytest

import mmgfp  # noqa: F401
from mmgfp.apis.check import check_model, load_config

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


@pytest.fixture(scope='module')
def reports():
    return {}


def _report(reports, config, ratio):
    key = (config, ratio)
    if key not in reports:
        reports[key] = check_model(load_config(config), ratio=ratio, seed=1,
                                   input_size=(64, 64))
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
