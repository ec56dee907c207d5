"""benchmarks/zoo.py on mmyolo: a family per config folder and sub-folder, and their tasks."""
import importlib.util
import os.path as osp
import sys

import pytest

if importlib.util.find_spec('mmyolo') is None:
    pytest.skip('mmyolo is not installed (pip install -e .[yolo])', allow_module_level=True)
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import zoo  # noqa: E402


def test_yolo_families_include_sub_folders():
    fams = dict(zoo.families(['mmyolo']))
    assert fams['mmyolo::yolov8'] == 'mmyolo::yolov8/yolov8_n_syncbn_fast_8xb16-500e_coco.py'
    assert fams['mmyolo::yolov5/ins_seg'].startswith('mmyolo::yolov5/ins_seg/yolov5_ins_n')
    for fam in ('mmyolo::yolov6', 'mmyolo::yolov7', 'mmyolo::yolox', 'mmyolo::ppyoloe',
                'mmyolo::rtmdet', 'mmyolo::yolox/pose', 'mmyolo::rtmdet/rotated'):
        assert fam in fams
    assert '_base_' not in ' '.join(fams)
    # folders without a model of their own are listed, skipped with the reason
    assert 'MMRazor' in zoo.SKIP['mmyolo::razor/subnets']
    assert all(f in fams for f in zoo.SKIP if f.startswith('mmyolo::'))
    assert zoo.result_path('/r', 'mmyolo::yolov5/ins_seg') == '/r/mmyolo__yolov5.ins_seg.json'


@pytest.mark.parametrize('config, task, why', [
    ('mmyolo::yolov8/yolov8_n_syncbn_fast_8xb16-500e_coco.py', 'detection', None),
    ('mmyolo::yolov5/ins_seg/yolov5_ins_n-v61_syncbn_fast_8xb16-300e_coco_instance.py',
     'instance segmentation', None),
    ('mmyolo::yolox/pose/yolox-pose_tiny_8xb32-300e-rtmdet-hyp_coco.py', 'bottom-up pose',
     None),
    ('mmyolo::rtmdet/rotated/rtmdet-r_s_fast_1xb8-36e_dota.py', None, 'MMRotate'),
])
def test_classify_yolo(config, task, why):
    got_task, got_why = zoo.classify(zoo._load(config))
    assert got_task == task
    assert (got_why is None) if why is None else (why in got_why)
