"""MMPose: demo batches whose targets the model's own codec encodes, the input size of a
config's codec, and MMDeploy's PoseDetection task for top-down estimators.

A pose model's loss reads targets its codec makes from keypoints: heatmaps for heatmap heads,
SimCC labels for RTMPose's RTMCCHead, normalised coordinates for regression heads. The demo
batch draws random keypoints (with visibility) inside the image, encodes them with the codec the
head decodes with (``head.decoder``) and packs them with mmpose's ``PackPoseInputs``, as the
training pipeline's ``GenerateTarget`` and ``PackPoseInputs`` do.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch.nn as nn

from .base import Codebase, CodebaseError, register_codebase

POSE_INPUT_SIZE = (256, 192)  # (H, W) of COCO top-down models, when a config names no codec


def _codec_input_size(codec) -> Optional[Tuple[int, int]]:
    """``(H, W)`` of a codec (config dict or object; mmpose writes ``input_size`` as
    ``(W, H)``), the first of a list of codecs."""
    if isinstance(codec, (list, tuple)):
        codec = codec[0] if codec else None
    size = codec.get('input_size') if isinstance(codec, dict) else getattr(
        codec, 'input_size', None)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[1]), int(size[0])
    return None


# heads that read instances (boxes, labels, keypoints) and decode without a codec: the
# training pipelines of RTMO and YOLOX-Pose make their labels with this annotation processor
_INSTANCE_HEADS = ('RTMOHead', 'YOLOXPoseHead')


def _codec(model: nn.Module, input_size: Sequence[int]):
    """The codec the model's head decodes with (``head.decoder``), or the annotation processor
    of the heads in ``_INSTANCE_HEADS``."""
    head = getattr(model, 'head', None)
    codec = getattr(head, 'decoder', None)
    if codec is None and type(head).__name__ in _INSTANCE_HEADS:
        from mmpose.registry import KEYPOINT_CODECS
        h, w = input_size
        return KEYPOINT_CODECS.build(dict(type='YOLOXPoseAnnotationProcessor', expand_bbox=True,
                                          input_size=(w, h)))
    if codec is None or not hasattr(codec, 'encode'):
        raise CodebaseError(
            f'{type(model).__name__} has no head with a codec (head.decoder): mmgfp makes pose '
            'demo batches by encoding random keypoints with it; build batches yourself and use '
            'the core API (mmgfp.core.build_groups with your forward function)')
    return codec


def codec_at(codec, input_size: Sequence[int]):
    """``codec`` for ``(H, W)`` inputs: itself at its own size, else a new codec of its class
    with the same constructor arguments (read back from its attributes) and ``input_size``,
    ``heatmap_size`` scaled by the same factor (heatmap heads are fully convolutional, so a
    smaller demo image only needs smaller target heatmaps)."""
    import inspect
    h, w = input_size
    own = _codec_input_size(codec)
    if own is None or own == (h, w):
        return codec
    args = {}
    for name, p in inspect.signature(type(codec).__init__).parameters.items():
        if name == 'self' or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(codec, name):
            args[name] = getattr(codec, name)
        elif p.default is p.empty:
            raise CodebaseError(
                f'cannot make {type(codec).__name__} targets for {h}x{w} inputs (its argument '
                f'{name!r} is not kept on the codec): use the input size of its config, '
                f'{own[0]}x{own[1]} (--input-size {own[0]} {own[1]})')
    args['input_size'] = (w, h)
    if args.get('heatmap_size') is not None:
        hw, hh = args['heatmap_size']
        args['heatmap_size'] = (max(1, round(hw * w / own[1])), max(1, round(hh * h / own[0])))
    return type(codec)(**args)


def num_keypoints(model: nn.Module) -> int:
    """The keypoints the head predicts (its ``out_channels``), else 17 (COCO)."""
    head = getattr(model, 'head', None)
    for attr in ('out_channels', 'num_keypoints', 'num_joints'):  # num_joints: regression
        if isinstance(getattr(head, attr, None), int):
            return int(getattr(head, attr))
    return 17


def encoded_sample(codec, img: np.ndarray, keypoints: np.ndarray,
                   visible: np.ndarray) -> dict:
    """One packed sample: ``img`` (H, W, C) with one instance's ``keypoints`` (1, K, 2) in
    input pixels, encoded by ``codec`` and packed by mmpose's ``PackPoseInputs``."""
    from mmpose.datasets.transforms import PackPoseInputs
    h, w = img.shape[:2]
    results = dict(
        img=img, img_shape=(h, w), ori_shape=(h, w), input_size=(w, h), id=0, img_id=0,
        keypoints=keypoints, keypoints_visible=visible, category_id=np.ones(1, np.int64),
        bbox=np.array([[0, 0, w, h]], np.float32), bbox_score=np.ones(1, np.float32),
        bbox_center=np.array([[w / 2, h / 2]], np.float32),
        bbox_scale=np.array([[w, h]], np.float32), input_center=np.array([w / 2, h / 2]),
        input_scale=np.array([w, h], np.float32), flip_indices=list(range(visible.shape[1])),
        area=np.array([w * h], np.float32))
    if type(codec).__name__ == 'DecoupledHeatmap':  # CID reads box corners (N, 4, 2)
        from mmpose.structures.bbox import bbox_xyxy2corner
        results['bbox'] = bbox_xyxy2corner(results['bbox'])
    aux = {key: results.get(key) for key in codec.auxiliary_encode_keys}
    results.update(codec.encode(keypoints=keypoints, keypoints_visible=visible, **aux))
    heatmaps = results.get('heatmaps')
    if isinstance(heatmaps, np.ndarray) and heatmaps.ndim == 3:
        # bottom-up heads weigh their heatmap loss by where the image holds no unannotated
        # crowd (BottomupGetHeatmapMask): none here
        results['heatmap_mask'] = np.ones(heatmaps.shape[-2:], bool)
    for table in ('field_mapping_table', 'instance_mapping_table', 'label_mapping_table'):
        if getattr(codec, table, None):
            results[table] = getattr(codec, table)
    return PackPoseInputs().transform(results)


@register_codebase
class MMPose(Codebase):
    """Pose estimators: one person per image, random keypoints inside it (a fifth of them
    invisible), at the input size of the model's codec (256x192 for COCO top-down models)."""
    scope = 'mmpose'
    title = 'MMPose'
    input_size = POSE_INPUT_SIZE

    def default_input_size(self, cfg) -> Tuple[int, int]:
        size = _codec_input_size(cfg.get('codec'))
        if size is None:  # the codec the head decodes with
            size = _codec_input_size((cfg.get('model') or {}).get('head', {}).get('decoder'))
        return size or self.input_size

    def num_classes(self, model: nn.Module) -> Optional[int]:
        return None  # pose heads predict keypoints, not classes

    def demo_batch(self, model: nn.Module, batch_size: int, input_size: Sequence[int],
                   seed: int, num_classes: Optional[int]) -> dict:
        from mmgfp.codebases.inputs import random_images
        codec = codec_at(_codec(model, input_size), input_size)
        k = num_keypoints(model)
        h, w = input_size
        rng = np.random.RandomState(seed)
        samples, inputs = [], []
        for img in random_images(model, batch_size, input_size, seed):
            kpts = (rng.uniform(0.1, 0.9, (1, k, 2)) * [w, h]).astype(np.float32)
            visible = (rng.uniform(size=(1, k)) > 0.2).astype(np.float32)
            packed = encoded_sample(codec, img.permute(1, 2, 0).numpy(), kpts, visible)
            inputs.append(packed['inputs'])
            samples.append(packed['data_samples'])
        return {'inputs': inputs, 'data_samples': samples}

    def mmdeploy_config(self, cfg, dynamic: bool = True,
                        input_shape: Optional[Sequence[int]] = None,
                        opset: Optional[int] = None):
        """Task PoseDetection: SimCC vectors (``simcc_x``, ``simcc_y``) or heatmaps
        (``output``) at the codec's input size; ``dynamic`` makes the batch dynamic."""
        return pose_deploy_config(cfg, dynamic, input_shape, opset)

    def mmdeploy_check(self, model: nn.Module) -> None:
        from mmpose.models.pose_estimators import TopdownPoseEstimator
        if not isinstance(model, TopdownPoseEstimator):
            raise CodebaseError('mmgfp wires MMDeploy\'s PoseDetection task for top-down pose '
                                f'estimators (TopdownPoseEstimator), not a {type(model).__name__}')

    def mmdeploy_reference(self, config: str, checkpoint: str, image: str):
        return pytorch_pose(config, checkpoint, image)

    def mmdeploy_compare(self, cfg, ref, got) -> Dict:
        return compare_pose(cfg, ref, got)

    def test_batch(self, model: nn.Module, data_batch):
        """The first image only, for CID: its tensor forward decodes instances from the heatmaps
        of the whole batch flattened as one image (so its coordinates run past the feature map;
        mmpose's CID configs test one image per batch). Other batches unchanged."""
        inputs = data_batch.get('inputs') if isinstance(data_batch, dict) else None
        if type(getattr(model, 'head', None)).__name__ != 'CIDHead' or inputs is None or \
                len(inputs) < 2:
            return data_batch
        from mmengine.logging import print_log
        print_log(f'mmgfp: CID decodes one image per tensor forward: ran the first of '
                  f'{len(inputs)} images', logger='current')
        batch = dict(data_batch, inputs=inputs[:1])
        if data_batch.get('data_samples') is not None:
            batch['data_samples'] = data_batch['data_samples'][:1]
        return batch


# MMDeploy (task PoseDetection), as its configs/mmpose/pose-detection_{simcc_,}onnxruntime_*.py:
# the graph ends at the head's outputs (SimCC vectors or heatmaps; export_postprocess=False)
# and MMDeploy's End2EndModel decodes them with the config's codec. The input height and width
# are the codec's (RTMPose's head flattens a feature map of fixed size), the batch is dynamic.
POSE_OUTPUTS = {'SimCCLabel': ['simcc_x', 'simcc_y'], 'MSRAHeatmap': ['output'],
                'UDPHeatmap': ['output'], 'MegviiHeatmap': ['output']}
KEYPOINT_TOL = 1e-2  # image pixels; a SimCC bin or heatmap cell that flips moves far more
SCORE_TOL = 1e-4  # relative to max(1, |score|): float32 sums in another order differ ~1e-6


def pose_deploy_config(cfg, dynamic: bool = True, input_shape: Optional[Sequence[int]] = None,
                       opset: Optional[int] = None):
    """MMDeploy's deploy config of a top-down pose estimator (see :meth:`MMPose.mmdeploy_config`).

    Raises:
        CodebaseError: The config has no top-level ``codec`` (MMDeploy's model decodes with
            it) or one MMDeploy does not decode as wired here.
        ValueError: ``input_shape`` is not the codec's input size.
    """
    from .base import onnxruntime_deploy_config
    codec = cfg.get('codec')
    codec = codec[-1] if isinstance(codec, (list, tuple)) and codec else codec
    kind = codec.get('type') if isinstance(codec, dict) else None
    if kind not in POSE_OUTPUTS:
        raise CodebaseError(
            f'MMDeploy decodes a pose model with the `codec` of its config; this config has '
            f'{"codec " + repr(kind) if kind else "none"}, and mmgfp wires the codecs '
            f'{sorted(POSE_OUTPUTS)} (SimCC vectors or heatmaps)')
    size = [int(v) for v in codec['input_size']]  # (W, H), MMDeploy's order too
    if input_shape is not None and [int(v) for v in input_shape] != size:
        raise ValueError(f'the pose head is built for {size[0]}x{size[1]} inputs (width x '
                         f'height, the codec\'s input_size), not {list(input_shape)}: leave the '
                         'static shape out or give exactly that')
    names = POSE_OUTPUTS[kind]
    axes = {n: {0: 'batch'} for n in ['input'] + names} if dynamic else None
    return onnxruntime_deploy_config(
        dict(type='mmpose', task='PoseDetection', export_postprocess=False), names, axes, size,
        opset or 11)


def pytorch_pose(config: str, checkpoint: str, image: str):
    """MMPose's ``init_model`` + ``inference_topdown`` on ``image`` (one box: the whole
    image, as MMDeploy's ``create_input``), without flip test (the graph has none)."""
    from mmengine.runner import load_checkpoint
    from mmpose.apis import inference_topdown, init_model
    model = init_model(config, None, device='cpu')
    load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    model.test_cfg['flip_test'] = False
    return inference_topdown(model, image)[0]


def compare_pose(cfg, ref, got) -> Dict:
    """Keypoints within :data:`KEYPOINT_TOL` px and scores within :data:`SCORE_TOL`."""
    kr, kg = (np.asarray(s.pred_instances.keypoints, np.float64) for s in (ref, got))
    sr, sg = (np.asarray(s.pred_instances.keypoint_scores, np.float64) for s in (ref, got))
    if kr.shape != kg.shape or sr.shape != sg.shape:
        return {'ok': False, 'lines': [f'PyTorch gives keypoints {kr.shape}, ONNX Runtime '
                                       f'{kg.shape}']}
    far = np.abs(kr - kg).max(-1) > KEYPOINT_TOL
    off = np.abs(sr - sg) / np.maximum(1.0, np.abs(sr)) > SCORE_TOL
    res = {'ok': not far.any() and not off.any(), 'max_keypoint_diff': float(np.abs(
        kr - kg).max(initial=0.)), 'max_score_diff': float((np.abs(sr - sg) / np.maximum(
            1.0, np.abs(sr))).max(initial=0.))}
    lines = [f'{sr.size} keypoints of {len(sr)} instance(s): largest keypoint difference '
             f'{res["max_keypoint_diff"]:.2e} px (tolerance {KEYPOINT_TOL}), largest score '
             f'difference {res["max_score_diff"]:.2e} (relative, tolerance {SCORE_TOL})']
    if (cfg.model.get('test_cfg') or {}).get('flip_test'):
        lines.append('PyTorch ran without the flip test of the config (the graph has none)')
    if not res['ok']:
        lines.append(f'keypoints {np.flatnonzero(far.reshape(-1) | off.reshape(-1)).tolist()} '
                     'differ beyond the tolerance')
    return dict(res, lines=lines)
