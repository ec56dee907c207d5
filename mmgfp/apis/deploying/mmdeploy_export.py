"""Deploy a (compact) MMDetection detector with MMDeploy to ONNX Runtime, NMS included.

MMDeploy's own deploy configs (``configs/mmdet/detection/*.py``) are not in its PyPI wheel, so
:func:`detection_deploy_config` writes the equivalent of its
``detection_onnxruntime_{dynamic,static}.py`` (end2end ONNX with ``dets``/``labels`` outputs)
in code, with the NMS limits taken from the model's ``test_cfg``. :func:`export` runs
``mmdeploy.apis.torch2onnx`` inside :func:`~mmgfp.apis.deploying.mmdeploy_compat.mmdeploy_compat`;
:func:`pytorch_detections` and :func:`onnxruntime_detections` run both on one image and
:func:`compare_detections` matches them box by box.

What is compared, and why not everything: MMDeploy's exported post-processing differs from
MMDetection's in two documented ways, both only at the low-score end of the list:

- it applies the score threshold to the score that NMS ranks (for FCOS: class score times
  centerness), MMDetection to the class score before the centerness factor, so MMDetection can
  return extra detections whose final score lies below the threshold;
- its top-k limits before NMS count boxes (``nms_pre`` per level, ``pre_top_k`` overall),
  MMDetection's count (box, class) pairs; when a limit binds, the candidates differ near the cut;
- it keeps boxes that clipping to the image made empty (e.g. ``x1 == x2 == width``), which
  MMDetection drops (``test_cfg.min_bbox_size``, 0 by default: width and height must exceed it);
  an empty box overlaps nothing, so it changes no other detection, but it takes a place in
  ``max_per_img``.

So :func:`compare_detections` drops boxes not larger than ``min_bbox_size`` from both lists and
requires the same boxes, labels and scores for every detection scoring at least ``min_score``
(the threshold; higher where ``max_per_img`` was reached, see :func:`comparable_score`).
"""
import copy
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.config import Config

from mmgfp.apis.deploying.mmdeploy_compat import mmdeploy_compat

ONNX_FILE = 'end2end.onnx'
DEPLOY_CFG_FILE = 'deploy_cfg.py'
# MMDeploy's own defaults (its configs/mmdet/_base_/base_static.py), used where the model's
# test_cfg does not say otherwise
POST_PROCESSING = dict(score_threshold=0.05, confidence_threshold=0.005, iou_threshold=0.5,
                       max_output_boxes_per_class=200, pre_top_k=5000, keep_top_k=100,
                       background_label_id=-1)


class MMDeployError(RuntimeError):
    """MMDeploy cannot be used or the export failed; the message says why and what to do."""


def require_mmdeploy():
    """Import ``mmdeploy`` or raise :class:`MMDeployError` saying how to install it."""
    try:
        import mmdeploy
    except ImportError as e:
        raise MMDeployError(f'deploying with MMDeploy needs the `mmdeploy` package ({e}): '
                            'pip install -e ".[deploy]" (or: pip install mmdeploy==1.3.1)') \
            from None
    return mmdeploy


def _test_cfg(model_cfg: Config) -> Dict:
    """The test_cfg that decides final detections (``rcnn`` for two-stage detectors)."""
    test_cfg = model_cfg.model.get('test_cfg') or {}
    return test_cfg.get('rcnn', test_cfg)


def check_model(model_config: str, checkpoint: str) -> None:
    """Fail early, and clearly, where an export would be wrong or fail deep inside MMDeploy.

    Raises:
        MMDeployError: ``checkpoint`` is a pruning checkpoint (masked, full-size layers) or
            ``model_config`` does not build an MMDetection detector.
        SpecError: The checkpoint cannot be read or does not fit the config.
    """
    from mmdet.models.detectors import BaseDetector

    from mmgfp.apis.deploying.onnx_export import ExportError, load_model
    try:
        model = load_model(model_config, checkpoint)
    except ExportError as e:
        raise MMDeployError(str(e)) from None
    if not isinstance(model, BaseDetector):
        raise MMDeployError(
            f'{model_config} builds a {type(model).__name__}, not an MMDetection detector: '
            'tools/deploy_mmdeploy.py deploys detectors (MMDeploy task ObjectDetection); export '
            'other models with tools/export_onnx.py')


def detection_deploy_config(model_cfg: Config, dynamic: bool = True,
                            input_shape: Optional[Sequence[int]] = None,
                            opset: int = 11) -> Config:
    """An MMDeploy deploy config: MMDetection detector, end2end, ONNX Runtime backend.

    Args:
        model_cfg (Config): The detector's config; its ``test_cfg`` sets the NMS limits.
        dynamic (bool): Dynamic batch, height and width. Defaults to True.
        input_shape (Sequence[int], optional): ``(width, height)`` of a static export (MMDeploy's
            order). Required when ``dynamic`` is False. Defaults to None.
        opset (int): ONNX opset. Defaults to 11 (MMDeploy's).

    Returns:
        Config: ``onnx_config``, ``codebase_config`` and ``backend_config``, as MMDeploy's
        ``detection_onnxruntime_{dynamic,static}.py`` would give.
    """
    if not dynamic and (input_shape is None or len(input_shape) != 2):
        raise ValueError('a static export needs `input_shape` as (width, height), but got '
                         f'{input_shape!r}')
    post = dict(POST_PROCESSING)
    test_cfg = _test_cfg(model_cfg)
    if test_cfg.get('max_per_img'):
        # one class may hold every detection, as in MMDetection's batched NMS
        post['keep_top_k'] = post['max_output_boxes_per_class'] = int(test_cfg['max_per_img'])
    onnx_config = dict(type='onnx', export_params=True, keep_initializers_as_inputs=False,
                       opset_version=int(opset), save_file=ONNX_FILE, input_names=['input'],
                       output_names=['dets', 'labels'],
                       input_shape=None if dynamic else [int(v) for v in input_shape],
                       optimize=True)
    if dynamic:
        onnx_config['dynamic_axes'] = {
            'input': {0: 'batch', 2: 'height', 3: 'width'},
            'dets': {0: 'batch', 1: 'num_dets'},
            'labels': {0: 'batch', 1: 'num_dets'}}
    return Config(dict(
        onnx_config=onnx_config,
        codebase_config=dict(type='mmdet', task='ObjectDetection', model_type='end2end',
                             post_processing=post),
        backend_config=dict(type='onnxruntime')))


def export(model_config: str, checkpoint: str, out_dir: str, image: str,
           deploy_cfg: Config, device: str = 'cpu') -> Dict[str, str]:
    """Export with ``mmdeploy.apis.torch2onnx``; write the deploy config beside the ONNX file.

    Args:
        model_config (str): The (compact) detector config.
        checkpoint (str): Its checkpoint (``compact.pth``).
        out_dir (str): Output folder (created).
        image (str): An image the config's test pipeline reads; traced through the model.
        deploy_cfg (Config): From :func:`detection_deploy_config`.
        device (str): Device of the PyTorch model while exporting. Defaults to 'cpu'.

    Returns:
        dict: ``onnx`` and ``deploy_cfg`` paths.
    """
    require_mmdeploy()
    from mmdeploy.apis import torch2onnx
    os.makedirs(out_dir, exist_ok=True)
    out = {'onnx': osp.join(out_dir, ONNX_FILE), 'deploy_cfg': osp.join(out_dir, DEPLOY_CFG_FILE)}
    deploy_cfg.dump(out['deploy_cfg'])
    with mmdeploy_compat():
        try:
            torch2onnx(image, out_dir, ONNX_FILE, copy.deepcopy(deploy_cfg),
                       Config.fromfile(model_config), checkpoint, device)
        except Exception as e:
            raise MMDeployError(f'mmdeploy.apis.torch2onnx failed on {model_config}: '
                                f'{type(e).__name__}: {e}') from e
    if not osp.isfile(out['onnx']):
        raise MMDeployError(f'mmdeploy.apis.torch2onnx wrote no {out["onnx"]}')
    return out


def _as_arrays(pred) -> Dict[str, np.ndarray]:
    inst = pred.pred_instances
    return {'bboxes': inst.bboxes.detach().cpu().numpy().astype(np.float64).reshape(-1, 4),
            'scores': inst.scores.detach().cpu().numpy().astype(np.float64).reshape(-1),
            'labels': inst.labels.detach().cpu().numpy().astype(np.int64).reshape(-1)}


def pytorch_detections(model_config: str, checkpoint: str, image: str) -> Dict[str, np.ndarray]:
    """MMDetection's own inference (``init_detector`` + ``inference_detector``) on ``image``.

    Returns:
        dict: ``bboxes`` (N, 4) in image pixels, ``scores`` (N,), ``labels`` (N,).
    """
    from mmdet.apis import inference_detector, init_detector
    from mmengine.runner import load_checkpoint
    # init_detector(config, checkpoint) fails on a checkpoint whose meta has no dataset_meta
    # (written by a run without a dataset); the classes do not matter here
    model = init_detector(model_config, None, device='cpu')
    load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    return _as_arrays(inference_detector(model, image))


def onnxruntime_detections(model_config: str, deploy_cfg: Config, onnx_file: str,
                           image: str) -> Dict[str, np.ndarray]:
    """MMDeploy's ONNX Runtime model (its ``End2EndModel``, NMS inside the graph) on ``image``.

    Returns:
        dict: ``bboxes`` (N, 4) in image pixels, ``scores`` (N,), ``labels`` (N,).
    """
    require_mmdeploy()
    from mmdeploy.apis.utils import build_task_processor
    import torch
    processor = build_task_processor(Config.fromfile(model_config), copy.deepcopy(deploy_cfg),
                                     'cpu')
    model = processor.build_backend_model([onnx_file])
    data, _ = processor.create_input(image, None)
    with torch.no_grad():
        return _as_arrays(model.test_step(data)[0])


def _cut(dets: Dict[str, np.ndarray], min_score: float,
         min_size: Optional[float]) -> Dict[str, np.ndarray]:
    keep = dets['scores'] >= min_score
    if min_size is not None:
        wh = dets['bboxes'][:, 2:] - dets['bboxes'][:, :2]
        keep &= (wh > min_size).all(axis=1)
    out = {k: v[keep] for k, v in dets.items()}
    out['index'] = np.flatnonzero(keep)  # positions in the list given
    return out


def compare_detections(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray],
                       min_score: float, min_bbox_size: Optional[float] = None,
                       box_tol: float = 1e-2, score_tol: float = 1e-4) -> Dict:
    """Match ``got`` to ``ref`` one to one: same label, boxes and scores within tolerance.

    Every detection scoring at least ``min_score + score_tol`` on one side must have a partner
    on the other; detections within ``score_tol`` of ``min_score`` may lack one (rounding
    decides on which side of the threshold they fall).

    Args:
        ref (dict): Reference detections (PyTorch): ``bboxes``, ``scores``, ``labels``.
        got (dict): Detections to check (ONNX Runtime), same keys.
        min_score (float): Lowest score compared (the score threshold, or the cut where a
            top-k limit binds).
        min_bbox_size (float, optional): Drop boxes whose width or height is not larger, as
            MMDetection's ``test_cfg.min_bbox_size`` does. Defaults to None (keep all).
        box_tol (float): Largest coordinate difference in pixels. Defaults to 1e-2.
        score_tol (float): Largest score difference. Defaults to 1e-4.

    Returns:
        dict: ``matched`` (count), ``unmatched_ref``/``unmatched_got`` (positions in ``ref`` /
        ``got`` of detections above ``min_score + score_tol`` without a partner), ``max_box_diff``,
        ``max_score_diff`` and ``ok``.
    """
    a = _cut(ref, min_score - score_tol, min_bbox_size)
    b = _cut(got, min_score - score_tol, min_bbox_size)
    free = list(range(len(b['scores'])))
    pairs = []
    for i in np.argsort(-a['scores'], kind='stable'):
        best, best_diff = None, None
        for j in free:
            if b['labels'][j] != a['labels'][i] or \
                    abs(b['scores'][j] - a['scores'][i]) > score_tol:
                continue
            diff = float(np.abs(b['bboxes'][j] - a['bboxes'][i]).max())
            if diff <= box_tol and (best_diff is None or diff < best_diff):
                best, best_diff = j, diff
        if best is not None:
            free.remove(best)
            pairs.append((int(i), best))
    hi = min_score + score_tol
    paired_a = {i for i, _ in pairs}
    lost_a = [int(a['index'][i]) for i in range(len(a['scores'])) if i not in paired_a and
              a['scores'][i] >= hi]
    lost_b = [int(b['index'][j]) for j in free if b['scores'][j] >= hi]
    box = max([float(np.abs(b['bboxes'][j] - a['bboxes'][i]).max()) for i, j in pairs] + [0.])
    score = max([abs(float(b['scores'][j] - a['scores'][i])) for i, j in pairs] + [0.])
    return {'matched': len(pairs), 'unmatched_ref': lost_a, 'unmatched_got': lost_b,
            'max_box_diff': box, 'max_score_diff': score,
            'ok': not lost_a and not lost_b}


def min_bbox_size(model_cfg: Config) -> Optional[float]:
    """``test_cfg.min_bbox_size`` (MMDetection drops smaller boxes), None where unset."""
    size = _test_cfg(model_cfg).get('min_bbox_size')
    return None if size is None or size < 0 else float(size)


def comparable_score(model_cfg: Config, *dets: Dict[str, np.ndarray]) -> float:
    """The lowest score at which two detection lists must agree (see the module docstring).

    The score threshold of ``test_cfg``; raised to the lowest kept score of a list that reached
    ``max_per_img`` (which detections fill the last places then depends on the limit).
    """
    test_cfg = _test_cfg(model_cfg)
    cut = float(test_cfg.get('score_thr', POST_PROCESSING['score_threshold']))
    cap = test_cfg.get('max_per_img')
    for d in dets:
        if cap and len(d['scores']) >= cap:
            cut = max(cut, float(d['scores'].min()))
    return cut


def summary(dets: Dict[str, np.ndarray], top: int = 5) -> List[str]:
    """Human-readable lines for the ``top`` highest-scoring detections."""
    order = np.argsort(-dets['scores'], kind='stable')[:top]
    return [f"  label {int(dets['labels'][i])}  score {dets['scores'][i]:.4f}  box "
            f"[{', '.join(f'{v:.1f}' for v in dets['bboxes'][i])}]" for i in order]
