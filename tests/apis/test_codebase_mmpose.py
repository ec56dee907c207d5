"""The MMPose codebase: demo batches encoded by the model's own codec, input sizes from the
config's codec, and the checks of mmgfp.apis on pose models."""
import os.path as osp

import pytest

pytest.importorskip('mmpose')
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

import mmgfp  # noqa: E402,F401
from mmgfp.apis.checking.check import build_model, load_config  # noqa: E402
from mmgfp.apis.inputs import default_input_size, demo_batch, loss_forward  # noqa: E402
from mmgfp.codebases import CodebaseError, codebase_of  # noqa: E402
from mmgfp.codebases.mmpose import codec_at  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DIGITS = osp.join(REPO, 'configs', 'digits', 'td-hm_r18_digits.py')
RTMPOSE_T = 'mmpose::body_2d_keypoint/rtmpose/coco/rtmpose-t_8xb256-420e_coco-256x192.py'


@pytest.fixture(scope='module')
def heatmap_model():
    return build_model(Config.fromfile(DIGITS), init=False)


def test_input_size_comes_from_the_codec():
    assert default_input_size(Config.fromfile(DIGITS)) == (64, 64)
    assert default_input_size(load_config(RTMPOSE_T)) == (256, 192)  # codec (W, H) = (192, 256)


def test_heatmap_batch_is_encoded_by_the_models_codec(heatmap_model):
    assert codebase_of(heatmap_model).scope == 'mmpose'
    data = demo_batch(heatmap_model, 3, (64, 64), seed=0)
    assert len(data['inputs']) == 3 and data['inputs'][0].shape == (3, 64, 64)
    sample = data['data_samples'][0]
    assert sample.gt_fields.heatmaps.shape == (5, 16, 16)  # 5 keypoints, the codec's 16x16
    kpts = sample.gt_instances.keypoints
    assert kpts.shape == (1, 5, 2) and (kpts >= 0).all() and (kpts < 64).all()
    # the heatmap peaks where the keypoints are (codec stride 4), visible ones only
    vis = sample.gt_instances.keypoints_visible[0]
    for k in range(5):
        hm = torch.as_tensor(sample.gt_fields.heatmaps[k])
        if vis[k] > 0 and hm.max() > 0:
            y, x = divmod(int(hm.argmax()), hm.shape[1])
            assert abs(x - kpts[0, k, 0] / 4) <= 1 and abs(y - kpts[0, k, 1] / 4) <= 1
    losses = loss_forward(data)(heatmap_model)
    assert torch.isfinite(losses['loss_kpt']) and losses['loss_kpt'] > 0
    # the same seed gives the same batch
    again = demo_batch(heatmap_model, 3, (64, 64), seed=0)['data_samples'][0]
    assert torch.equal(torch.as_tensor(again.gt_instances.keypoints), torch.as_tensor(kpts))


def test_other_input_sizes_scale_the_heatmaps(heatmap_model):
    codec = heatmap_model.head.decoder
    small = codec_at(codec, (32, 48))
    assert small is not codec and small.input_size == (48, 32) and small.heatmap_size == (12, 8)
    assert codec_at(codec, (64, 64)) is codec
    data = demo_batch(heatmap_model, 1, (32, 48), seed=0)
    assert data['data_samples'][0].gt_fields.heatmaps.shape == (5, 8, 12)
    assert torch.isfinite(loss_forward(data)(heatmap_model)['loss_kpt'])


def test_rtmpose_batch_has_simcc_labels():
    model = build_model(load_config(RTMPOSE_T), init=False)
    data = demo_batch(model, 1, (256, 192), seed=0)
    labels = data['data_samples'][0].gt_instance_labels
    # SimCC: one distribution per keypoint over W * 2 (x) and H * 2 (y) bins (split ratio 2)
    assert labels.keypoint_x_labels.shape == (1, 17, 384)
    assert labels.keypoint_y_labels.shape == (1, 17, 512)
    losses = loss_forward(data)(model)
    assert torch.isfinite(losses['loss_kpt'])


def test_a_head_without_codec_is_refused(heatmap_model):
    import copy
    model = copy.deepcopy(heatmap_model)
    model.head.decoder = None
    with pytest.raises(CodebaseError, match='head.decoder'):
        demo_batch(model, 1, (64, 64))


def test_onnx_export_of_a_pose_model(heatmap_model, tmp_path):
    """mmpose's forward takes ``data_samples`` without a default: the exporter passes None."""
    pytest.importorskip('onnxruntime')
    from mmgfp.apis.deploying.onnx_export import check_onnx, export_onnx
    model = heatmap_model.eval()
    path = str(tmp_path / 'pose.onnx')
    export_onnx(model, path, (64, 64), logger=lambda *a: None)
    diffs = check_onnx(model, path, (64, 64))
    assert diffs and max(diffs.values()) < 1e-4


def test_cid_tests_one_image_per_batch(heatmap_model):
    """CID's tensor forward flattens the batch's heatmaps as one image (instance coordinates
    then run past the feature map): its test batches hold the first image only."""
    from mmpose.models.heads import CIDHead
    data = demo_batch(heatmap_model, 3, (64, 64), seed=0)
    pose = codebase_of(heatmap_model)
    assert pose.test_batch(heatmap_model, data) is data  # other heads: unchanged

    class Cid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = CIDHead.__new__(CIDHead)
            torch.nn.Module.__init__(self.head)

    one = pose.test_batch(Cid(), data)
    assert len(one['inputs']) == 1 and one['inputs'][0] is data['inputs'][0]
    assert one['data_samples'] == data['data_samples'][:1]
    assert len(data['inputs']) == 3  # the caller's batch is untouched
