"""MMDetection: demo batches, tracer rules for modules built on ops the tracer cannot see, and
MMDeploy's ObjectDetection task (deploy config, and the comparison of detections)."""
import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .base import Codebase, CodebaseError, register_codebase
from mmgfp.core.fisher import RowSource
from mmgfp.core.layout import Layout
from mmgfp.core.tracing import VouchedModule


def _roi_extractor(tracer, module, inputs, output) -> None:
    """SingleRoIExtractor: RoI features keep the channels of the FPN maps they are cut from.

    Its forward uses mmcv's RoIAlign (a C++ op) and adds ``feats.sum() * 0`` to keep unused
    parameters in the graph; neither moves channels.
    """
    feats = inputs[0] if inputs else ()
    lays = [tracer.layout(f) for f in feats[:module.num_inputs]]
    if not lays or any(lay is None or lay.ch_dim != 1 or lay.inner != 1 for lay in lays):
        for lay in lays:
            tracer.mark(lay, 'RoI extractor over feature maps the tracer could not follow')
        return
    for lay in lays[1:]:
        tracer.union(lays[0], lay, 'RoI extractor')
    tracer.set_layout(output, Layout(1, lays[0].segs))


def _sync_out_channels(module, inputs) -> None:
    # The extractor allocates its output with ``self.out_channels`` (a constructor value);
    # after pruning the FPN maps it is cut from are narrower, so follow their width.
    feats = inputs[0] if inputs else ()
    if feats and feats[0].dim() == 4:
        module.out_channels = int(feats[0].shape[1])


def fix_compact(model) -> None:
    """Adjust mmdet modules whose sizes are constructor values, not layer shapes."""
    try:
        from mmdet.models.roi_heads.roi_extractors.base_roi_extractor import \
            BaseRoIExtractor
    except ImportError:
        return
    for m in model.modules():
        if isinstance(m, BaseRoIExtractor) and not getattr(m, '_gfp_synced', False):
            m.register_forward_pre_hook(_sync_out_channels)
            m._gfp_synced = True
        _sync_sabl(m)


def _sync_sabl(m) -> None:
    # SABL's box head views its side-aware features as (-1, reg_in_channels), a constructor
    # value: follow the width of the (sliced) layer that reads them.
    fcs = getattr(m, 'reg_offset_fcs', None)
    first = fcs[0] if fcs else getattr(m, 'fc_reg_offset', None)
    if hasattr(m, 'reg_in_channels') and hasattr(first, 'in_features'):
        m.reg_in_channels = int(first.in_features)


def _roi_rows(module, inputs):
    """The image of every RoI: ``rois[:, 0]`` (RoI heads call ``extractor(feats, rois)``)."""
    rois = inputs[1] if len(inputs) > 1 else None
    return rois[:, 0] if rois is not None and rois.dim() == 2 and rois.shape[1] == 5 else None


def _register_rules() -> None:
    try:
        from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
        from mmdet.models.roi_heads.roi_extractors.base_roi_extractor import \
            BaseRoIExtractor
    except ImportError:
        return
    VouchedModule.register(SingleRoIExtractor, _roi_extractor)
    # Fisher terms of RoI features are folded onto the image each RoI was cut from
    RowSource.register(BaseRoIExtractor, _roi_rows)


def _with_mask(model: nn.Module) -> bool:
    # a mask head, or a preprocessor that pads masks (Mask2Former reads them from the data)
    return bool(getattr(model, 'with_mask', False) or
                getattr(getattr(model, 'data_preprocessor', None), 'pad_mask', False))


@register_codebase
class MMDetection(Codebase):
    """Detectors: random boxes (and masks where the model has a mask head); 128x128 demo
    images (any size that is a multiple of the largest stride works)."""
    scope = 'mmdet'
    title = 'MMDetection'
    input_size = (128, 128)

    def num_classes(self, model: nn.Module) -> Optional[int]:
        for path in ('bbox_head', 'roi_head.bbox_head'):
            obj = model
            for part in path.split('.'):
                obj = getattr(obj, part, None)
            if obj is not None and hasattr(obj, 'num_classes'):
                return int(obj.num_classes)
        return None

    def demo_batch(self, model: nn.Module, batch_size: int, input_size: Sequence[int],
                   seed: int, num_classes: Optional[int]) -> dict:
        import numpy as np
        from mmdet.testing import demo_mm_inputs

        from mmgfp.codebases.inputs import random_images
        num_classes = num_classes or self.num_classes(model) or 10
        h, w = input_size
        inputs = random_images(model, batch_size, input_size, seed)
        torch.manual_seed(seed)
        np.random.seed(seed)
        # demo_mm_inputs draws labels from [1, num_classes): give it room for one class
        packed = demo_mm_inputs(batch_size, [[3, h, w]] * batch_size, num_items=[3] *
                                batch_size, num_classes=max(num_classes, 2),
                                with_mask=_with_mask(model))
        for sample in packed['data_samples']:
            sample.gt_instances.labels = sample.gt_instances.labels % num_classes
        packed['inputs'] = inputs
        return packed

    def gt_boxes(self, data_samples) -> List:
        if not data_samples or not all(hasattr(d, 'gt_instances') for d in data_samples):
            raise CodebaseError("fg_mse reads each data sample's gt_instances.bboxes, and this "
                                'batch has none (a training batch of a detector has)')
        return [getattr(d.gt_instances.bboxes, 'tensor', d.gt_instances.bboxes)
                for d in data_samples]

    def pseudo_labels(self, teacher: nn.Module, inputs, data_samples,
                      score_thr: float) -> List:
        """The teacher's detections (its ``test_cfg``: NMS, top boxes; in full precision under
        AMP) scoring at least ``score_thr``, in the batch's input pixels (``rescale=False``),
        as ``gt_instances`` of copies of the samples; their ``ignored_instances`` are
        emptied."""
        from mmengine.structures import InstanceData
        if not data_samples:
            raise CodebaseError('pseudo labels need the data samples of the unlabelled batch '
                                '(their image metas), and the batch has none')
        samples = [s.clone() for s in data_samples]
        device = (inputs if torch.is_tensor(inputs) else inputs[0]).device.type
        # in full precision under AMP as well: mmcv's NMS on the CPU takes float32 boxes only
        # (bfloat16 fails there), and rounded scores would decide which boxes pass score_thr
        with _full_precision(device):
            teacher.predict(inputs, samples, rescale=False)  # sets each copy's pred_instances
        for sample in samples:
            pred = sample.pred_instances
            keep = pred.scores >= score_thr
            boxes = getattr(pred.bboxes, 'tensor', pred.bboxes)
            sample.gt_instances = InstanceData(bboxes=boxes[keep].detach().float(),
                                               labels=pred.labels[keep].detach())
            sample.ignored_instances = InstanceData(bboxes=boxes.new_zeros(0, 4),
                                                    labels=pred.labels.new_zeros(0))
            del sample.pred_instances
        return samples

    def check_pseudo_labels(self, model: nn.Module) -> None:
        if _with_mask(model):
            raise ValueError(f'GFPDistillHook(pseudo_labels=...) labels images with boxes, '
                             f'but {type(model).__name__} also trains masks: leave '
                             '`pseudo_labels` out for instance segmentation')

    def register_rules(self) -> None:
        _register_rules()

    def fix_compact(self, model: nn.Module) -> None:
        fix_compact(model)

    def mmdeploy_config(self, cfg, dynamic: bool = True,
                        input_shape: Optional[Sequence[int]] = None,
                        opset: Optional[int] = None):
        return detection_deploy_config(cfg, dynamic, input_shape, opset)

    def mmdeploy_check(self, model: nn.Module) -> None:
        from mmdet.models.detectors import BaseDetector
        if not isinstance(model, BaseDetector):
            raise CodebaseError(f'MMDeploy task ObjectDetection exports MMDetection detectors, '
                                f'not a {type(model).__name__}')

    def mmdeploy_reference(self, config: str, checkpoint: str, image: str):
        return pytorch_detections(config, checkpoint, image)

    def mmdeploy_compare(self, cfg, ref, got) -> Dict:
        return check_detections(cfg, ref, got)


# MMDeploy (task ObjectDetection). MMDeploy's own deploy configs are not in its PyPI wheel:
# detection_deploy_config writes the equivalent of its detection_onnxruntime_{dynamic,static}.py
# with the NMS limits taken from the model's test_cfg. What the comparison leaves out, and why
# (MMDeploy's exported post-processing differs from MMDetection's only at the low-score end):
# - MMDeploy thresholds the score NMS ranks (FCOS: class score times centerness), MMDetection
#   the class score before the centerness factor, so MMDetection returns extra detections whose
#   final score lies below the threshold;
# - its top-k limits before NMS count boxes (nms_pre per level, pre_top_k overall),
#   MMDetection's count (box, class) pairs: when a limit binds, candidates differ near the cut;
# - it keeps boxes that clipping to the image made empty, which MMDetection drops
#   (test_cfg.min_bbox_size); an empty box overlaps nothing, but takes a place in max_per_img.
# So compare_detections drops boxes not larger than min_bbox_size from both lists and requires
# the same boxes, labels and scores for every detection scoring at least the threshold (higher
# where max_per_img was reached, see comparable_score).

# MMDeploy's own defaults (its configs/mmdet/_base_/base_static.py), used where the model's
# test_cfg does not say otherwise
POST_PROCESSING = dict(score_threshold=0.05, confidence_threshold=0.005, iou_threshold=0.5,
                       max_output_boxes_per_class=200, pre_top_k=5000, keep_top_k=100,
                       background_label_id=-1)


def _test_cfg(model_cfg) -> dict:
    """The test_cfg that decides final detections (``rcnn`` for two-stage detectors)."""
    test_cfg = model_cfg.model.get('test_cfg') or {}
    return test_cfg.get('rcnn', test_cfg)


def detection_deploy_config(model_cfg, dynamic: bool = True,
                            input_shape: Optional[Sequence[int]] = None,
                            opset: Optional[int] = None):
    """MMDeploy's deploy config of a detector: end2end (NMS in the graph), ONNX Runtime.

    Args:
        model_cfg (Config): The detector's config; its ``test_cfg`` sets the NMS limits.
        dynamic (bool): Dynamic batch, height and width. Defaults to True.
        input_shape (Sequence[int], optional): ``(width, height)`` of a static export
            (MMDeploy's order). Required when ``dynamic`` is False. Defaults to None.
        opset (int, optional): ONNX opset. Defaults to None: 16 for detectors with a RoI head
            (RoIAlign's aligned mode needs opset 16's half-pixel mode), else 11 (MMDeploy's).

    Returns:
        Config: as MMDeploy's ``detection_onnxruntime_{dynamic,static}.py`` would give.
    """
    from .base import onnxruntime_deploy_config, static_shape
    shape = static_shape(dynamic, input_shape)
    post = dict(POST_PROCESSING)
    test_cfg = _test_cfg(model_cfg)
    if test_cfg.get('max_per_img'):
        # one class may hold every detection, as in MMDetection's batched NMS
        post['keep_top_k'] = post['max_output_boxes_per_class'] = int(test_cfg['max_per_img'])
    axes = None if shape else {'input': {0: 'batch', 2: 'height', 3: 'width'},
                               'dets': {0: 'batch', 1: 'num_dets'},
                               'labels': {0: 'batch', 1: 'num_dets'}}
    opset = opset or (16 if model_cfg.model.get('roi_head') else 11)
    return onnxruntime_deploy_config(
        dict(type='mmdet', task='ObjectDetection', model_type='end2end', post_processing=post),
        ['dets', 'labels'], axes, shape, opset)


def as_arrays(pred) -> Dict[str, np.ndarray]:
    """``bboxes`` (N, 4), ``scores`` (N,) and ``labels`` (N,) of a ``DetDataSample``."""
    inst = pred.pred_instances
    return {'bboxes': inst.bboxes.detach().cpu().numpy().astype(np.float64).reshape(-1, 4),
            'scores': inst.scores.detach().cpu().numpy().astype(np.float64).reshape(-1),
            'labels': inst.labels.detach().cpu().numpy().astype(np.int64).reshape(-1)}


def pytorch_detections(model_config: str, checkpoint: str, image: str):
    """MMDetection's own inference (``init_detector`` + ``inference_detector``) on ``image``.

    Returns:
        DetDataSample: ``pred_instances`` with boxes in image pixels.
    """
    from mmdet.apis import inference_detector, init_detector
    from mmengine.runner import load_checkpoint
    # init_detector(config, checkpoint) fails on a checkpoint whose meta has no dataset_meta
    # (written by a run without a dataset); the classes do not matter here
    model = init_detector(model_config, None, device='cpu')
    load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    return inference_detector(model, image)


def _cut(dets: Dict[str, np.ndarray], min_score: float,
         min_size: Optional[float]) -> Dict[str, np.ndarray]:
    keep = dets['scores'] >= min_score
    if min_size is not None:
        wh = dets['bboxes'][:, 2:] - dets['bboxes'][:, :2]
        keep &= (wh > min_size).all(axis=1)
    out = {k: v[keep] for k, v in dets.items()}
    out['index'] = np.flatnonzero(keep)  # positions in the list given
    return out


def _pairs(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray], box_tol: float,
           score_tol: float) -> Tuple[list, list]:
    """Greedy one-to-one pairs (highest ``a`` score first): same label, score within
    ``score_tol``, the closest box within ``box_tol``; and the unpaired positions of ``b``."""
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
    return pairs, free


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
        ``got`` of detections above ``min_score + score_tol`` without a partner),
        ``max_box_diff``, ``max_score_diff`` and ``ok``.
    """
    a = _cut(ref, min_score - score_tol, min_bbox_size)
    b = _cut(got, min_score - score_tol, min_bbox_size)
    pairs, free = _pairs(a, b, box_tol, score_tol)
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


def min_bbox_size(model_cfg) -> Optional[float]:
    """``test_cfg.min_bbox_size`` (MMDetection drops smaller boxes), None where unset."""
    size = _test_cfg(model_cfg).get('min_bbox_size')
    return None if size is None or size < 0 else float(size)


def comparable_score(model_cfg, *dets: Dict[str, np.ndarray]) -> float:
    """The lowest score at which two detection lists must agree (see the notes above
    :data:`POST_PROCESSING`): the score threshold of ``test_cfg``, raised to the lowest kept
    score of a list that reached ``max_per_img``."""
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


def check_detections(model_cfg, ref_sample, got_sample) -> Dict:
    """:func:`compare_detections` above :func:`comparable_score`, with the lines the tool
    prints; not ok where a detection lacks its partner or none passes the threshold."""
    ref, got = as_arrays(ref_sample), as_arrays(got_sample)
    cut = comparable_score(model_cfg, ref, got)
    res = compare_detections(ref, got, cut, min_bbox_size(model_cfg))
    lines = [f'PyTorch: {len(ref["scores"])} detections, ONNX Runtime: {len(got["scores"])}; '
             f'compared at score >= {cut:.4f}: {res["matched"]} matched (max box difference '
             f'{res["max_box_diff"]:.2e} px, max score difference {res["max_score_diff"]:.2e})']
    lines += ['PyTorch, top:'] + summary(ref) + ['ONNX Runtime, top:'] + summary(got)
    if not res['ok']:
        lines.append(f'PyTorch detections {res["unmatched_ref"]} and ONNX Runtime detections '
                     f'{res["unmatched_got"]} have no partner')
    elif res['matched'] == 0:
        res['ok'] = False
        lines.append('no detection above the threshold on this image, nothing to compare: use '
                     'an image on which the model detects something')
    return dict(res, lines=lines)


def _full_precision(device: str):
    """AMP's autocast switched off on ``device`` (a no-op context where this torch has no
    autocast for that device type, so nothing can be in low precision there either)."""
    try:
        return torch.autocast(device, enabled=False)
    except (RuntimeError, ValueError):
        return contextlib.nullcontext()
