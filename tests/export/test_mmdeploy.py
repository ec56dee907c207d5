"""Deploy pruned detectors with MMDeploy to ONNX Runtime (NMS in the graph), compare with PyTorch.

RetinaNet, FCOS, RTMDet and Faster R-CNN (mmdet's configs at small widths): mask a random half
of every prunable group, deploy to a compact config + checkpoint, export that with
``tools/deploy_mmdeploy.py --check`` (``mmdeploy.apis.torch2onnx`` inside mmgfp's compatibility
layer) and compare MMDeploy's ONNX Runtime detections on a digits canvas with MMDetection's.
Random weights give saturated, tied scores; the heads' last layers are scaled so that scores
spread (as a trained detector's do) and the comparison means something.
"""
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

pytestmark = pytest.mark.slow
mmdeploy = pytest.importorskip(
    'mmdeploy', reason='mmdeploy is not installed: pip install -e ".[deploy]" (tools/setup_env.sh '
    'installs it for the tests)')

import mmgfp  # noqa: E402,F401
from mmgfp.apis.deploying import mmdeploy_export as md  # noqa: E402
from mmgfp.apis.deploying.mmdeploy_compat import (  # noqa: E402
    apply_mmdeploy_compat, mmdeploy_compat, restore_mmdeploy_compat)
from mmgfp.codebases import mmdet as det  # noqa: E402

HEAD = ("bbox_head=dict(num_classes=10, in_channels=32, feat_channels=32, stacked_convs=2{norm}), "
        "test_cfg=dict(score_thr={thr}, max_per_img=100)")
R18 = ("backbone=dict(depth=18, init_cfg=None), "
       "neck=dict(in_channels=[64, 128, 256, 512], out_channels=32)")
# name: (mmdet config, model changes, scale of the classifier weights, score threshold); the
# scale spreads the scores of random weights (measured) so that 10-60 detections pass
MODELS = {
    'retinanet': ('retinanet/retinanet_r18_fpn_1x_coco.py', f"{R18}, {HEAD}", 0.5, 0.5),
    # 8 GN groups: 32 channels in 32 groups, pruned, leave one channel per group on a 1x1 level
    'fcos': ('fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
             f"{R18}, " + HEAD.replace('{norm}', ", norm_cfg=dict(type='GN', num_groups=8, "
                                                "requires_grad=True)"), 3.0, 0.3),
    'rtmdet': ('rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
               "backbone=dict(deepen_factor=0.167, widen_factor=0.125, init_cfg=None), "
               "neck=dict(in_channels=[32, 64, 128], out_channels=32, num_csp_blocks=1), "
               "bbox_head=dict(num_classes=10, in_channels=32, feat_channels=32, "
               "stacked_convs=1), test_cfg=dict(score_thr={thr}, max_per_img=100)", 30.0, 0.6),
    'faster_rcnn': ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                    f"{R18}, rpn_head=dict(in_channels=32, feat_channels=32), "
                    "roi_head=dict(bbox_roi_extractor=dict(out_channels=32), bbox_head=dict("
                    "in_channels=32, fc_out_channels=64, num_classes=10)), "
                    "test_cfg=dict(rcnn=dict(score_thr={thr}, max_per_img=100))", 0.5, 0.3),
}
CONFIG = '''
_base_ = 'mmdet::{base}'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
model = dict({model})
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
'''


def _head_layers(model: nn.Module):
    """(name, layer) of the last classification and regression layers of each head."""
    for name, m in model.named_modules():
        last = name.split('.')[-1] if not name.split('.')[-1].isdigit() else \
            name.split('.')[-2]
        if isinstance(m, (nn.Conv2d, nn.Linear)) and last.endswith(('cls', 'reg')):
            yield last, m


def _trained_like(model: nn.Module, seed: int, cls_scale: float) -> None:
    """Variance-keeping weights, then heads whose scores and boxes spread as trained ones do."""
    from mmgfp.apis.checking.check import randomize_norms
    from test_onnx import _spread_weights
    _spread_weights(model, seed)
    with torch.no_grad():
        for last, m in _head_layers(model):
            if last.endswith('cls'):  # logits around -3, spread by cls_scale
                m.weight.mul_(cls_scale)
                m.bias.fill_(-3.0)
            else:  # small positive deltas/distances: boxes near their priors, width > 0
                m.weight.mul_(0.1)
                m.bias.fill_(0.5)
    randomize_norms(model, seed)


def _compact(name: str, tmp) -> dict:
    from export_utils import random_pruned
    from mmgfp.apis.deploying.deploy import deploy
    base, model_cfg, cls_scale, thr = MODELS[name]
    config = str(tmp / f'{name}.py')
    with open(config, 'w') as f:
        f.write(CONFIG.format(base=base, model=model_cfg.replace('{norm}', '').replace(
            '{thr}', str(thr))))
    model, _, ckpt = random_pruned(config, (64, 64), tmp,
                                   lambda m: _trained_like(m, seed=1, cls_scale=cls_scale))
    out = deploy(config, ckpt, str(tmp / 'compact'), logger=lambda *a: None)
    out.update(original_conv=_conv_shapes(model), pruning_config=config, pruning_ckpt=ckpt)
    return out


def _conv_shapes(model: nn.Module) -> set:
    return {tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d)}


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    from mmgfp.datasets.digits import prepare_digits_det
    root = tmp_path_factory.mktemp('digits')
    prepare_digits_det(str(root), num_train=1, num_val=1)
    return str(root / 'val' / '00000.png')


_DONE = {}


def _deployed(name, tmp_path_factory, image):
    """Prune, deploy, export with the tool (--check); keep what the tests compare."""
    from export_utils import deployed_with_tool
    return deployed_with_tool(name, tmp_path_factory, image, _compact, _DONE)


def _onnx_facts(path: str) -> dict:
    import onnx
    graph = onnx.load(path).graph
    inits = {i.name: i for i in graph.initializer}
    weights = {n.input[1] for n in graph.node if n.op_type == 'Conv' and n.input[1] in inits}
    return {'ops': {n.op_type for n in graph.node},
            'conv': {tuple(inits[w].dims) for w in weights},
            'roi_align_modes': [a.s.decode() for n in graph.node if n.op_type == 'RoiAlign'
                                for a in n.attribute if a.name == 'coordinate_transformation_mode'],
            'outputs': [o.name for o in graph.output]}


def _detections(out, image):
    from mmengine.config import Config
    ref = md.pytorch_prediction(out['config'], out['checkpoint'], image)
    got = md.onnxruntime_prediction(out['config'], Config.fromfile(out['deploy_cfg']),
                                    out['onnx'], image)
    return det.as_arrays(ref), det.as_arrays(got)


def _check_compact_onnx(out):
    from mmgfp.apis.deploying.onnx_export import load_model
    facts = _onnx_facts(out['onnx'])
    assert facts['outputs'] == ['dets', 'labels']
    assert 'NonMaxSuppression' in facts['ops']  # NMS inside the graph
    compact = _conv_shapes(load_model(out['config'], out['checkpoint']))
    # the compact layers went into the graph, not the original (masked) ones
    assert facts['conv'] == compact != out['original_conv']
    return facts


@pytest.mark.parametrize('name', list(MODELS))
def test_matches_pytorch(name, tmp_path_factory, image):
    from mmengine.config import Config
    out = _deployed(name, tmp_path_factory, image)
    assert out['rc'] == 0 and out['pruned'] == 'yes'
    facts = _check_compact_onnx(out)
    if name == 'faster_rcnn':
        # opset 16: RoiAlign's half-pixel mode is mmcv's aligned=True (opset 11 approximates)
        assert facts['roi_align_modes'] and set(facts['roi_align_modes']) == {'half_pixel'}
    ref, got = _detections(out, image)
    res = det.compare_detections(ref, got, MODELS[name][3],
                                det.min_bbox_size(Config.fromfile(out['config'])))
    assert res['ok'] and not res['unmatched_ref'] and not res['unmatched_got'], res
    # scores spread, below the cap: every PyTorch detection above the threshold has a partner
    # (MMDetection's FCOS also returns some below it: it thresholds before centerness)
    above = int((ref['scores'] >= MODELS[name][3]).sum())
    assert 10 <= above and len(ref['scores']) < 100 and res['matched'] == above, res
    assert res['max_score_diff'] < 1e-4 and res['max_box_diff'] < 1e-2


def test_static_shape(tmp_path_factory, tmp_path, image):
    """``--static W H``: a fixed input size (the canvas is 128x128, so nothing is resized)."""
    import onnx

    import tools.deploy_mmdeploy as tool
    out = _deployed('retinanet', tmp_path_factory, image)
    assert tool.main([out['config'], out['checkpoint'], '--out', str(tmp_path), '--image', image,
                      '--static', '128', '128', '--check']) == 0
    dims = onnx.load(str(tmp_path / md.ONNX_FILE)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 128, 128]


def test_compat_patches_only_inside():
    import torch.onnx.symbolic_opset9 as opset9
    export = torch.onnx.export
    had_cast = hasattr(opset9, '_cast_Long')
    with mmdeploy_compat() as patched:
        assert opset9._cast_Long is not None
        assert ('torch.onnx.symbolic_opset9._cast_Long' in patched) != had_cast
        with mmdeploy_compat() as again:  # nested: nothing left to patch
            assert again == []
    assert torch.onnx.export is export and hasattr(opset9, '_cast_Long') == had_cast
    assert apply_mmdeploy_compat() == patched
    restore_mmdeploy_compat()
    assert torch.onnx.export is export and hasattr(opset9, '_cast_Long') == had_cast
    # the patched export only changes the default: an explicit choice passes through
    from mmgfp.apis.deploying.mmdeploy_compat import _legacy_export
    calls = []
    legacy = _legacy_export(lambda *args, **kwargs: calls.append(kwargs))
    legacy(1)
    legacy(1, dynamo=True)
    assert calls == [{'dynamo': False}, {'dynamo': True}]


class _Indices(torch.autograd.Function):
    """An op whose ONNX symbolic casts with ``_cast_Long``, as MMDeploy's RoIAlign does."""

    @staticmethod
    def forward(ctx, x):
        return x.long()

    @staticmethod
    def symbolic(g, x):
        from torch.onnx.symbolic_opset9 import _cast_Long
        return _cast_Long(g, x, False)


class _Net(nn.Module):

    def forward(self, x):
        return _Indices.apply(x * 2)


def test_cast_long_exports_with_dynamic_axes(tmp_path):
    """The two PyTorch fixes: ``_cast_Long`` and the TorchScript exporter with dynamic_axes."""
    import onnxruntime as ort
    path = str(tmp_path / 'cast.onnx')
    with mmdeploy_compat():
        torch.onnx.export(_Net(), (torch.rand(2, 3) * 3, ), path, input_names=['x'],
                          output_names=['y'], opset_version=11,
                          dynamic_axes={'x': {0: 'n'}, 'y': {0: 'n'}})
    x = np.array([[0.5, 1.7, 2.2], [3.9, 0.0, 1.1], [2.5, 0.4, 0.6]], np.float32)
    y = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(None, {'x': x})[0]
    assert y.dtype == np.int64 and (y == (x * 2).astype(np.int64)).all()  # batch 3: dynamic
    assert 'Cast' in _onnx_facts(path)['ops']


def _dets(boxes, scores, labels):
    return {'bboxes': np.array(boxes, np.float64).reshape(-1, 4),
            'scores': np.array(scores, np.float64), 'labels': np.array(labels, np.int64)}


def test_compare_detections():
    ref = _dets([[0, 0, 0, 9], [0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 3, 3]],
                [0.8, 0.9, 0.5, 0.30001], [4, 1, 2, 3])
    # same detections in another order, rounded; the one at the threshold lost; the empty box
    # (MMDeploy keeps those) differs
    got = _dets([[5, 5, 20.004, 20], [0, 0, 10, 10], [0, 0, 0, 5]],
                [0.50002, 0.9, 0.7], [2, 1, 4])
    res = det.compare_detections(ref, got, 0.3, min_bbox_size=0)
    assert res['ok'] and res['matched'] == 2
    assert res['max_box_diff'] == pytest.approx(0.004) and res['max_score_diff'] < 3e-5
    assert not det.compare_detections(ref, got, 0.3)['ok']  # without the size filter
    for changed in ({'labels': [3, 1, 4]}, {'scores': [0.5003, 0.9, 0.7]},
                    {'bboxes': [[5, 5, 20.1, 20], [0, 0, 10, 10], [0, 0, 0, 5]]}):
        bad = dict(got, **{k: np.array(v) for k, v in changed.items()})
        res = det.compare_detections(ref, bad, 0.3, min_bbox_size=0)
        # positions in the lists given
        assert not res['ok'] and res['unmatched_ref'] == [2] and res['unmatched_got'] == [0]


def test_tool_errors_are_clear(tmp_path, tmp_path_factory, image, monkeypatch):
    import tools.deploy_mmdeploy as tool
    with pytest.raises(SystemExit, match='image .*missing.png does not exist'):
        tool.main([image, image, '--out', str(tmp_path), '--image', str(tmp_path / 'missing.png')])
    out = _deployed('retinanet', tmp_path_factory, image)
    # the pruning checkpoint with its own config would deploy the unpruned network
    with pytest.raises(SystemExit, match='is a pruning checkpoint.*deploy_pruned'):
        tool.main([out['pruning_config'], out['pruning_ckpt'], '--out', str(tmp_path / 'a'),
                   '--image', image])
    cls_config = tmp_path / 'resnet.py'
    cls_config.write_text("_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'\n"
                          "model = dict(backbone=dict(init_cfg=None))\n")
    from mmgfp.apis.deploying.onnx_export import load_model
    torch.save({'state_dict': load_model(str(cls_config), None).state_dict()},
               str(tmp_path / 'resnet.pth'))
    with pytest.raises(SystemExit, match='builds a ImageClassifier: MMDeploy export is wired for '
                       'MMDetection, MMPose, MMSegmentation models, not MMPretrain ones'):
        tool.main([str(cls_config), str(tmp_path / 'resnet.pth'), '--out', str(tmp_path / 'b'),
                   '--image', image])
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()
    monkeypatch.setitem(sys.modules, 'mmdeploy', None)
    with pytest.raises(SystemExit, match=r'needs the `mmdeploy` package.*\.\[deploy\]'):
        tool.main([image, image, '--out', str(tmp_path / 'x'), '--image', image])
    assert not (tmp_path / 'x').exists()
