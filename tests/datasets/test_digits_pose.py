"""The digits keypoint set: keypoints read from the strokes, COCO keypoint format, mmpose's
dataset and metric read it."""
import json
import os.path as osp

import numpy as np
import pytest

from mmgfp.datasets.digits_pose import KEYPOINTS, prepare_digits_pose, stroke_keypoints


def test_stroke_keypoints_of_a_drawn_bar():
    alpha = np.zeros((10, 8), np.float32)
    alpha[2:8, 3] = 1  # a vertical bar in column 3, rows 2..7
    alpha[5, 3:6] = 1  # and a stub to the right in row 5
    kpts = stroke_keypoints(alpha)
    assert kpts[0].tolist() == [3.5, 2.5]  # top
    assert kpts[1].tolist() == [3.5, 7.5]  # bottom
    assert kpts[3].tolist() == [5.5, 5.5]  # right: the stub's end
    assert kpts[2][0] == 3.5  # left: the bar's column
    assert stroke_keypoints(np.zeros((4, 4))) is None


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('pose'))
    assert prepare_digits_pose(root, num_train=6, num_val=3, seed=0)
    assert not prepare_digits_pose(root, num_train=6, num_val=3, seed=0)  # complete: kept
    return root


def test_coco_keypoint_format(root):
    ann = json.load(open(osp.join(root, 'annotations', 'train.json')))
    assert ann['categories'][0]['keypoints'] == list(KEYPOINTS)
    ids = [a['id'] for a in ann['annotations']]
    assert len(ids) > 6 and len(set(ids)) == len(ids)  # several digits per canvas, unique ids
    vis = []
    for a in ann['annotations']:
        k = np.array(a['keypoints']).reshape(-1, 3)
        x, y, w, h = a['bbox']
        assert k.shape == (5, 3) and a['num_keypoints'] == 5
        # keypoints lie in their digit's box, the centre always visible
        assert (k[:, 0] >= x).all() and (k[:, 0] <= x + w).all()
        assert (k[:, 1] >= y).all() and (k[:, 1] <= y + h).all() and k[4, 2] == 2
        vis += k[:, 2].tolist()
    assert set(vis) <= {1, 2} and 2 in vis


def test_same_seed_same_files(root, tmp_path):
    other = str(tmp_path / 'again')
    prepare_digits_pose(other, num_train=6, num_val=3, seed=0)
    for name in ('train.json', 'val.json'):
        assert open(osp.join(root, 'annotations', name)).read() == open(
            osp.join(other, 'annotations', name)).read()


def test_mmpose_dataset_and_metric_read_it(root):
    pytest.importorskip('mmpose')
    from mmengine.registry import init_default_scope
    from mmpose.evaluation import CocoMetric

    from mmgfp.datasets import DigitsPoseDataset
    init_default_scope('mmpose')
    ds = DigitsPoseDataset(data_root=root, ann_file='annotations/val.json',
                           data_prefix=dict(img='val/'), test_mode=True, pipeline=[])
    assert ds.metainfo['num_keypoints'] == 5 and ds.metainfo['flip_indices'] == [0, 1, 3, 2, 4]
    ann = json.load(open(osp.join(root, 'annotations', 'val.json')))
    assert len(ds) == len(ann['annotations'])
    # the ground truth scores an AP of 1 with mmpose's COCO keypoint metric
    metric = CocoMetric(ann_file=osp.join(root, 'annotations', 'val.json'))
    metric.dataset_meta = ds.metainfo
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        metric.process([], [dict(
            id=info['id'], img_id=info['img_id'], category_id=1, ori_shape=(96, 96),
            pred_instances=dict(keypoints=info['keypoints'],
                                keypoint_scores=np.ones((1, 5), np.float32)),
            gt_instances=dict(bbox_scores=np.ones(1, np.float32),
                              bbox_scales=np.array([[30.0, 30.0]])))])
    assert metric.evaluate(len(ds))['coco/AP'] == pytest.approx(1.0)
