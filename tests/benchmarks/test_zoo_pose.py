"""benchmarks/zoo.py on mmpose: families are task/algorithm, what runs and what is skipped."""
import os.path as osp
import sys

import pytest

pytest.importorskip('mmpose')
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import zoo  # noqa: E402


def test_pose_families_and_configs():
    fams = dict(zoo.families(['mmpose']))
    assert len(fams) >= 20
    assert fams['mmpose::body_2d_keypoint/rtmpose'] == (
        'mmpose::body_2d_keypoint/rtmpose/coco/rtmpose-t_8xb256-420e_coco-256x192.py')
    assert fams['mmpose::body_2d_keypoint/topdown_heatmap'].endswith(
        '/coco/td-hm_hrnet-w32_8xb64-210e_coco-256x192.py')
    # one flat result file per family
    path = zoo.result_path('/r', 'mmpose::body_2d_keypoint/rtmpose')
    assert path == '/r/mmpose__body_2d_keypoint.rtmpose.json'


@pytest.mark.parametrize('config, task, why', [
    ('mmpose::body_2d_keypoint/rtmpose/coco/rtmpose-t_8xb256-420e_coco-256x192.py',
     'top-down pose', None),
    ('mmpose::body_2d_keypoint/dekr/coco/dekr_hrnet-w32_8xb10-140e_coco-512x512.py',
     'bottom-up pose', None),
    ('mmpose::body_3d_keypoint/image_pose_lift/h36m/image-pose-lift_tcn_8xb64-200e_h36m.py',
     None, '3D pose lifting'),
])
def test_classify_pose(config, task, why):
    got_task, got_why = zoo.classify(zoo._load(config))
    assert got_task == task
    assert (got_why is None) if why is None else (why in got_why)
