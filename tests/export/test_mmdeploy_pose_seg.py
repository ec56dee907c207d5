"""Deploy pruned pose estimators and segmentors with MMDeploy to ONNX Runtime, compare with PyTorch.

A small RTMPose (mmpose's RTMPose-t config at 128x96 input, SimCC head), the digits heatmap
pose model and the digits FCN: mask a random half of every prunable group, deploy to a compact
config + checkpoint, export that with ``tools/deploy_mmdeploy.py --check`` and compare MMDeploy's
ONNX Runtime predictions on a digits canvas with the codebase's own PyTorch inference
(``inference_topdown``, ``inference_model``). Variance-keeping random weights, so that keypoint
scores and logits spread and the comparison means something.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

pytestmark = pytest.mark.slow
pytest.importorskip('mmdeploy', reason='mmdeploy is not installed: pip install -e ".[deploy]"')

import mmgfp  # noqa: E402,F401
from mmgfp.apis.deploying import mmdeploy_export as md  # noqa: E402

RTMPOSE = '''
_base_ = 'mmpose::body_2d_keypoint/rtmpose/coco/rtmpose-t_8xb256-420e_coco-256x192.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
codec = dict(type='SimCCLabel', input_size=(96, 128), sigma=(4.9, 5.66), simcc_split_ratio=2.0,
             normalize=False, use_dark=False)
model = dict(backbone=dict(init_cfg=None),
             head=dict(input_size=codec['input_size'], in_featuremap_size=(3, 4), decoder=codec))
val_pipeline = [dict(type='LoadImage'), dict(type='GetBBoxCenterScale'),
                dict(type='TopdownAffine', input_size=codec['input_size']),
                dict(type='PackPoseInputs')]
val_dataloader = dict(dataset=dict(pipeline=val_pipeline))
test_dataloader = val_dataloader
'''
# name: (config text, demo input size (H, W), codebase package, seed of the random weights:
# one whose predictions spread, e.g. keypoints in several places, so the comparison means
# something; with seed 1 the 3-stage digits pose net put 4 of 5 keypoints in one place)
MODELS = {
    'rtmpose': (RTMPOSE, (128, 96), 'mmpose', 1),
    'td_hm': ("_base_ = '{repo}/configs/digits/td-hm_r18_digits.py'\n", (64, 64), 'mmpose', 2),
    'fcn': ("_base_ = '{repo}/configs/digits/fcn_r18-d8_digits.py'\n", (64, 64), 'mmseg', 1),
}


def _conv_shapes(model: nn.Module) -> set:
    return {tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d)}


def _compact(name: str, tmp) -> dict:
    import os.path as osp

    from test_onnx import _spread_weights

    from export_utils import random_pruned
    from mmgfp.apis.checking.check import randomize_norms
    from mmgfp.apis.deploying.deploy import deploy
    text, size, _, seed = MODELS[name]
    config = str(tmp / f'{name}.py')
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    with open(config, 'w') as f:
        f.write(text.replace('{repo}', repo))

    def prepare(model):
        _spread_weights(model, seed=seed)
        randomize_norms(model, seed=seed)

    model, _, ckpt = random_pruned(config, size, tmp, prepare)
    out = deploy(config, ckpt, str(tmp / 'compact'), logger=lambda *a: None)
    out['original_conv'] = _conv_shapes(model)
    return out


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    from mmgfp.datasets.digits_seg import prepare_digits_seg
    root = tmp_path_factory.mktemp('digits_seg')
    prepare_digits_seg(str(root), num_train=1, num_val=1)
    return str(root / 'img_dir' / 'val' / '00000.png')


_DONE = {}


def _deployed(name, tmp_path_factory, image):
    """Prune, deploy, export with the tool (--check); keep what the tests compare."""
    from export_utils import deployed_with_tool
    pytest.importorskip(MODELS[name][2])
    return deployed_with_tool(name, tmp_path_factory, image, _compact, _DONE)


def _graph(out) -> dict:
    """Output names and op types of the exported graph; checks that the compact layers went
    into it, not the original (masked) ones (layers whose output no head reads, as the digits
    pose ResNet's last stage, are not in the graph)."""
    import onnx

    from mmgfp.apis.deploying.onnx_export import load_model
    graph = onnx.load(out['onnx']).graph
    inits = {i.name: i for i in graph.initializer}
    conv = {tuple(inits[n.input[1]].dims) for n in graph.node
            if n.op_type == 'Conv' and n.input[1] in inits}
    assert out['rc'] == 0 and out['pruned'] == 'yes'
    assert conv <= _conv_shapes(load_model(out['config'], out['checkpoint']))
    assert not conv <= out['original_conv']
    return {'outputs': [o.name for o in graph.output], 'ops': {n.op_type for n in graph.node}}


def _predictions(out, image):
    from mmengine.config import Config
    ref = md.pytorch_prediction(out['config'], out['checkpoint'], image)
    got = md.onnxruntime_prediction(out['config'], Config.fromfile(out['deploy_cfg']),
                                    out['onnx'], image)
    return ref, got


def _mmdeploy_inference(out, image):
    """MMDeploy's own API on the written deploy config and ONNX file."""
    from mmdeploy.apis import inference_model
    return inference_model(out['config'], out['deploy_cfg'], [out['onnx']], image, 'cpu')[0]


@pytest.mark.parametrize('name,outputs', [('rtmpose', ['simcc_x', 'simcc_y']),
                                          ('td_hm', ['output'])])
def test_pose_matches_pytorch(name, outputs, tmp_path_factory, image):
    from mmengine.config import Config
    out = _deployed(name, tmp_path_factory, image)
    assert _graph(out)['outputs'] == outputs
    ref, got = _predictions(out, image)
    res = md.compare(Config.fromfile(out['config']), ref, got)
    assert res['ok'] and res['max_keypoint_diff'] < 1e-2 and res['max_score_diff'] < 1e-4, res
    kpts = np.asarray(ref.pred_instances.keypoints)
    scores = np.asarray(ref.pred_instances.keypoint_scores)
    # spread: keypoints in several places, scores not tied (the comparison means something)
    assert len(np.unique(kpts.round(2), axis=1)[0]) >= 3 and len(np.unique(scores)) >= 3
    own = _mmdeploy_inference(out, image).pred_instances
    assert np.abs(np.asarray(own.keypoints) - kpts).max() < 1e-2


def test_segmentation_matches_pytorch(tmp_path_factory, image):
    from mmengine.config import Config
    out = _deployed('fcn', tmp_path_factory, image)
    facts = _graph(out)
    assert facts['outputs'] == ['output'] and 'ArgMax' in facts['ops']
    ref, got = _predictions(out, image)
    res = md.compare(Config.fromfile(out['config']), ref, got)
    assert res['ok'] and res['differ'] == 0, res
    labels = ref.pred_sem_seg.data
    assert len(labels.unique()) >= 3  # several classes: the comparison means something
    own = _mmdeploy_inference(out, image).pred_sem_seg.data
    assert torch.equal(own.cpu(), labels.cpu())


def test_segmentation_logits_match_pytorch(tmp_path_factory, tmp_path, image):
    """Without the argmax (MMDeploy's ``with_argmax=False``) the graph gives the logits: equal
    to MMSegmentation's within float32 rounding."""
    import onnxruntime as ort
    from mmdeploy.apis.utils import build_task_processor
    from mmengine.config import Config
    out = _deployed('fcn', tmp_path_factory, image)
    cfg = Config.fromfile(out['config'])
    deploy_cfg = md.deploy_config(cfg)
    deploy_cfg.codebase_config.with_argmax = False
    onnx_file = md.export(out['config'], out['checkpoint'], str(tmp_path), image,
                          deploy_cfg)['onnx']
    processor = build_task_processor(cfg, copy.deepcopy(deploy_cfg), 'cpu')
    _, inputs = processor.create_input(image, None, processor.build_pytorch_model(
        out['checkpoint']).data_preprocessor)
    session = ort.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])
    logits = session.run(None, {'input': inputs.numpy()})[0][0]
    ref = md.pytorch_prediction(out['config'], out['checkpoint'], image).seg_logits.data.numpy()
    assert logits.shape == ref.shape
    assert np.abs(logits - ref).max() / np.abs(ref).max() < 1e-5 and np.abs(ref).max() > 1


def test_unsupported_pose_configs_are_refused(tmp_path_factory, tmp_path, image):
    from mmengine.config import Config

    pytest.importorskip('mmpose')
    from mmgfp.codebases import CodebaseError, get_codebase
    pose = dict(default_scope='mmpose', model=dict(type='TopdownPoseEstimator'))
    with pytest.raises(md.MMDeployError, match='decodes a pose model with the `codec`.*has none'):
        md.deploy_config(Config(pose))
    with pytest.raises(md.MMDeployError, match="codec 'RegressionLabel'.*'SimCCLabel'"):
        md.deploy_config(Config(dict(pose, codec=dict(type='RegressionLabel',
                                                      input_size=(192, 256)))))
    with pytest.raises(CodebaseError, match='top-down pose estimators.*not a Conv2d'):
        get_codebase('mmpose').mmdeploy_check(nn.Conv2d(1, 1, 1))
    with pytest.raises(CodebaseError, match='wired for MMDetection, MMPose, MMSegmentation '
                       'models, not MMYOLO ones: export the model with tools/export_onnx.py'):
        get_codebase('mmyolo').mmdeploy_config(Config(dict(default_scope='mmyolo')))
    import tools.deploy_mmdeploy as tool
    out = _deployed('rtmpose', tmp_path_factory, image)
    with pytest.raises(SystemExit, match=r'built for 96x128 inputs .*not \[192, 256\]'):
        tool.main([out['config'], out['checkpoint'], '--out', str(tmp_path / 'x'), '--image',
                   image, '--static', '192', '256'])
    assert not (tmp_path / 'x').exists()


def _seg_sample(logits, labels, ori_shape=(2, 2)):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=dict(ori_shape=ori_shape, img_shape=(2, 2)))
    sample.pred_sem_seg = PixelData(data=torch.tensor(labels).reshape(1, 2, 2))
    if logits is not None:
        sample.seg_logits = PixelData(data=torch.tensor(logits).reshape(2, 2, 2))
    return sample


def test_segmentation_comparison_allows_only_ties():
    from mmengine.config import Config

    pytest.importorskip('mmseg')
    from mmgfp.codebases.mmseg import compare_segmentation
    cfg = Config(dict(model=dict(decode_head=dict(num_classes=2))))
    # two classes; pixel 1 is a tie (logits 2.0 and 2.00001), the others are clear
    ref = _seg_sample([[5., 2.0, 0., 0.], [1., 2.00001, 3., 4.]], [0, 1, 1, 1])
    tie = compare_segmentation(cfg, ref, _seg_sample(None, [0, 0, 1, 1]))
    assert tie['ok'] and tie['differ'] == 1 and '1 of them ties' in tie['lines'][0]
    bad = compare_segmentation(cfg, ref, _seg_sample(None, [0, 1, 0, 1]))
    assert not bad['ok'] and bad['lines'][-1] == '1 pixels have another label beyond the tolerance'
    resized = compare_segmentation(cfg, ref, _seg_sample(None, [0, 1, 1, 1], ori_shape=(4, 4)))
    assert not resized['ok'] and 'resized the image' in resized['lines'][0]


def test_pose_comparison_reports_keypoints():
    pytest.importorskip('mmpose')
    from mmengine.config import Config
    from mmengine.structures import InstanceData
    from mmpose.structures import PoseDataSample

    from mmgfp.codebases.mmpose import compare_pose

    def sample(kpts, scores):
        s = PoseDataSample()
        s.pred_instances = InstanceData(keypoints=np.array(kpts, np.float32)[None],
                                        keypoint_scores=np.array(scores, np.float32)[None])
        return s

    cfg = Config(dict(model=dict(test_cfg=dict(flip_test=True))))
    ref = sample([[10, 20], [30, 40], [5, 5]], [900., 0.5, 0.2])
    res = compare_pose(cfg, ref, sample([[10, 20.001], [30, 40], [5, 5]], [900.05, 0.50002,
                                                                           0.2]))
    assert res['ok'] and 'without the flip test' in res['lines'][1]
    res = compare_pose(cfg, ref, sample([[10, 20], [30.5, 40], [5, 5]], [900., 0.5, 0.2003]))
    assert not res['ok'] and res['lines'][-1] == 'keypoints [1, 2] differ beyond the tolerance'
