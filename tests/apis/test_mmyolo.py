"""MMYOLO: the bridge of its version gate, its collate format, input sizes, and the check on
YOLOv5 / YOLOv8 (CSP necks and heads shared over three levels)."""
import importlib.util
import os.path as osp
import subprocess
import sys

import pytest
import torch

if importlib.util.find_spec('mmyolo') is None:  # importing it needs mmgfp's bridge
    pytest.skip('mmyolo is not installed (pip install -e .[yolo])', allow_module_level=True)

import mmgfp  # noqa: F401,E402
from mmgfp.apis.checking.check import (build_model, check_model, load_config,  # noqa: E402
                                       rel_diff)
from mmgfp.apis.inputs import (default_input_size, demo_batch, loss_forward,  # noqa: E402
                               tensor_forward)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
YOLOV5 = 'mmyolo::yolov5/yolov5_n-v61_syncbn_fast_8xb16-300e_coco.py'
YOLOV8 = 'mmyolo::yolov8/yolov8_n_syncbn_fast_8xb16-500e_coco.py'
YOLOV6 = 'mmyolo::yolov6/yolov6_n_syncbn_fast_8xb32-400e_coco.py'

BRIDGE = '''
import sys
import mmcv, mmgfp
real = mmcv.__version__
assert 'mmyolo' not in sys.modules, 'import mmgfp imported mmyolo'
from mmgfp.codebases.mmyolo import _gate_closed
if _gate_closed():
    try:
        import mmyolo
    except AssertionError as e:
        assert 'MMCV' in str(e)
        print('GATE CLOSED')
    else:
        raise SystemExit('mmyolo imported without the bridge')
import mmgfp.yolo  # the import target of configs
import mmyolo.models
assert mmcv.__version__ == real, mmcv.__version__
from mmyolo.registry import MODELS
assert MODELS.get('YOLODetector') is not None
'''


def test_bridge_only_where_asked():
    """`import mmgfp` leaves mmyolo alone; `mmgfp.yolo` imports it past its gate, logs the
    bridge and gives mmcv its version back."""
    proc = subprocess.run([sys.executable, '-c', BRIDGE], capture_output=True, text=True,
                          cwd=REPO, env=dict(__import__('os').environ, PYTHONPATH=REPO),
                          timeout=600)  # an import; a hang fails here, not at CI's limit
    assert proc.returncode == 0, proc.stderr[-2000:]
    if 'GATE CLOSED' in proc.stdout:
        assert "bridged mmyolo's version gate" in proc.stdout + proc.stderr


def _tiny(path):
    cfg = load_config(path)
    model = {'model.train_cfg.assigner.num_classes': 4} if 'yolov8' in path else {}
    if 'yolov6' in path:
        model = {'model.train_cfg.initial_assigner.num_classes': 4,
                 'model.train_cfg.assigner.num_classes': 4}
    cfg.merge_from_dict({'model.backbone.widen_factor': 0.125,
                         'model.neck.widen_factor': 0.125,
                         'model.bbox_head.head_module.widen_factor': 0.125,
                         'model.bbox_head.head_module.num_classes': 4, **model})
    return cfg


def test_compact_config_imports_the_bridge():
    """A compact config of MMYOLO's own config (no custom_imports) imports mmgfp.yolo, so
    mmdet's init_detector can build it in a fresh process."""
    from mmgfp.apis.deploying.deploy import compact_config
    new = compact_config(load_config(YOLOV8), 'channels.json', 'compact.pth')
    assert new.custom_imports['imports'] == ['mmgfp', 'mmgfp.yolo']
    assert new.model.gfp_architecture == 'mmyolo.YOLODetector'


def test_collate_format_and_sizes():
    cfg = _tiny(YOLOV8)
    assert default_input_size(cfg) == (320, 320)  # 640 in the pipeline, halved for checks
    model = build_model(cfg)
    batch = demo_batch(model, 2, (64, 96), seed=0)
    samples = batch['data_samples']
    assert isinstance(samples, dict) and batch['inputs'].shape == (2, 3, 64, 96)
    rows = samples['bboxes_labels']
    assert rows.shape[1] == 6 and set(rows[:, 0].tolist()) == {0, 1}
    assert (rows[:, 1] < 4).all() and (rows[:, 4] <= 95).all() and (rows[:, 5] <= 63).all()
    before = rows.clone()
    model.train()
    losses = loss_forward(batch)(model)
    assert torch.isfinite(sum(v.sum() for v in losses.values()))
    # the head normalises the boxes of its targets in place: the caller's batch is untouched
    assert torch.equal(samples['bboxes_labels'], before)
    model.eval()
    with torch.no_grad():  # a training batch for mode='tensor' goes in as a test batch
        cls_scores = tensor_forward(batch)(model)[0]
    assert [tuple(c.shape[-2:]) for c in cls_scores] == [(8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize('path', [YOLOV5, YOLOV8], ids=['yolov5', 'yolov8'])
def test_check_yolo(path):
    report = check_model(_tiny(path), ratio=0.5, input_size=(64, 64))
    assert report['equivalent'], report['verdict']
    assert report['num_prunable_groups'] >= 10
    assert report['flops_after'] < 0.8 * report['flops_before']


def test_compact_yolov6_reparameterises():
    """YOLOv6's RepVGG blocks: the compact model, re-parameterised for deployment
    (``switch_to_deploy``, one conv per block), computes what the masked training-mode
    model did."""
    from mmgfp.apis.checking.check import compact_pair
    # 128x128: the ATSS assigner of its first epochs takes 9 priors per level (2x2 at 64x64)
    pair = compact_pair(_tiny(YOLOV6), ratio=0.5, seed=0, input_size=(128, 128))
    rebuilt = pair['rebuilt']
    blocks = [m for m in rebuilt.modules() if type(m).__name__ == 'RepVGGBlock']
    assert any(hasattr(m, 'rbr_identity') for m in blocks)
    for m in blocks:
        m.switch_to_deploy()
    assert all(hasattr(m, 'rbr_reparam') for m in blocks)
    with torch.no_grad():
        out = tensor_forward(pair['data'])(rebuilt)
    assert rel_diff(out, pair['reference'].outputs) < 1e-4


@pytest.mark.parametrize('path, keys', [
    ('mmyolo::yolov5/ins_seg/yolov5_ins_n-v61_syncbn_fast_8xb16-300e_coco_instance.py',
     ['masks']),
    ('mmyolo::yolox/pose/yolox-pose_tiny_8xb32-300e-rtmdet-hyp_coco.py',
     ['keypoints', 'keypoints_visible'])], ids=['yolov5-ins', 'yolox-pose'])
def test_demo_batch_has_the_targets_of_the_head(path, keys):
    """YOLOv5-ins reads instance masks and YOLOX-Pose keypoints from the collated batch."""
    model = build_model(load_config(path))
    batch = demo_batch(model, 2, (64, 64), seed=0)
    samples = batch['data_samples']
    rows = samples['bboxes_labels']
    assert [k for k in samples if k != 'bboxes_labels'] == keys
    if 'masks' in samples:  # overlap maps at 1/4 size: pixel = index of the box in its image + 1
        assert samples['masks'].shape == (2, 16, 16)
        per_image = [int((rows[:, 0] == i).sum()) for i in range(2)]
        assert [int(m.max()) for m in samples['masks']] == per_image
    else:
        kpts = samples['keypoints']
        assert kpts.shape == (len(rows), model.bbox_head.num_keypoints, 2)
        assert (kpts[..., 0] >= rows[:, None, 2]).all()
        assert (kpts[..., 1] <= rows[:, None, 5]).all()
    model.train()
    losses = loss_forward(batch)(model)
    assert torch.isfinite(sum(v.sum() for v in losses.values()))
