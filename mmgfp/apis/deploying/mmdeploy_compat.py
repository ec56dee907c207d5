"""Let MMDeploy 1.3.1 export to ONNX on current PyTorch (>= 2.9).

MMDeploy 1.3.1 (the last release) drives PyTorch's TorchScript-based ONNX exporter: it passes
``dynamic_axes`` and registers symbolic functions for its rewritten ops. Two things changed in
PyTorch since then, and each breaks an export:

1. ``torch.onnx.export`` defaults to ``dynamo=True`` (torch >= 2.9). MMDeploy's call then goes
   through ``torch.export`` and fails with "Detected mismatch between the structure of `inputs`
   and `dynamic_shapes`" (its ``dynamic_axes`` do not describe the ``torch.export`` inputs), and
   the symbolic functions it registers would be ignored anyway. The patch makes ``dynamo=False``
   the default again; a caller that passes ``dynamo=`` explicitly keeps its choice.
2. ``torch.onnx.symbolic_opset9._cast_Long`` is gone. MMDeploy's RoIAlign symbolic for ONNX
   Runtime (two-stage detectors: Faster R-CNN) imports it to cast the RoI batch indices to int64,
   and the export fails with "cannot import name '_cast_Long'". The patch adds our own
   implementation: one ONNX ``Cast`` node to int64, which is what the removed helper emitted.

Two more patches make MMDeploy's detections those of MMDetection rather than fixing PyTorch
(rewriters registered for the ONNX Runtime backend, which MMDeploy prefers to its default ones):

3. MMDeploy's rewrite of ``RTMDetHead.predict_by_feat`` decodes boxes without clipping them to
   the image; MMDetection clips before NMS, so boxes crossing the border came out of ONNX
   Runtime unclipped and NMS could keep other boxes. The patch sends RTMDet to MMDeploy's
   generic dense-head rewrite (decode, clip to the image, NMS), as MMDetection's
   ``BaseDenseHead`` does for RTMDet in PyTorch.
4. MMDeploy's rewrite of ``RPNHead.predict_by_feat`` suppresses the proposals of all FPN levels
   in one NMS and drops those scoring under 0.05; MMDetection runs NMS level by level
   (``batched_nms`` with the level as the class), drops empty boxes (``min_bbox_size``) and
   keeps low scores, so a two-stage detector saw other proposals. :func:`rpn_predict_by_feat`
   makes MMDetection's proposals in the graph.

Nothing is patched on ``import mmgfp``: use :func:`mmdeploy_compat` around MMDeploy calls (what
``tools/deploy_mmdeploy.py`` does), or :func:`apply_mmdeploy_compat` once in a script that calls
MMDeploy's own tools::

    from mmgfp.apis.deploying.mmdeploy_compat import mmdeploy_compat
    with mmdeploy_compat():
        torch2onnx(img, work_dir, 'end2end.onnx', deploy_cfg, model_cfg, checkpoint, 'cpu')

On a PyTorch that still has both (``dynamo=False`` by default, ``_cast_Long`` present) nothing
is changed.
"""
import contextlib
import functools
import inspect
from typing import Callable, Iterator, List, Tuple

import torch

RTMDET = 'mmdet.models.dense_heads.rtmdet_head.RTMDetHead.predict_by_feat'
RPN = 'mmdet.models.dense_heads.rpn_head.RPNHead.predict_by_feat'
# (name, undo) of every patch currently applied, oldest first
_APPLIED: List[Tuple[str, Callable[[], None]]] = []


def cast_long(g, input, non_blocking=False):
    """Symbolic ``Cast`` of ``input`` to int64 (replaces torch's removed ``_cast_Long``).

    Args:
        g: The TorchScript ONNX graph context.
        input: The value to cast.
        non_blocking (bool): Ignored, as it was by the removed helper (there is no device copy
            in an ONNX graph). Defaults to False.

    Returns:
        The output value of the ``Cast`` node.
    """
    return g.op('Cast', input, to_i=int(torch._C._onnx.TensorProtoDataType.INT64))


def rtmdet_predict_by_feat(self, cls_scores, bbox_preds, batch_img_metas=None, cfg=None,
                           rescale=False, with_nms=True):
    """RTMDet's boxes through MMDeploy's generic dense-head rewrite (which clips them).

    Inside MMDeploy's rewriter context ``BaseDenseHead.predict_by_feat`` *is* that rewrite.
    """
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
    return BaseDenseHead.predict_by_feat(self, cls_scores, bbox_preds,
                                         batch_img_metas=batch_img_metas, cfg=cfg,
                                         rescale=rescale, with_nms=with_nms)


def _rpn_level_scores(self, cls_scores, bbox_preds, nms_pre):
    """Per level: top ``nms_pre`` anchors by objectness (padded, as MMDeploy does for TopK)."""
    from mmdeploy.codebase.mmdet.deploy import gather_topk, pad_with_value_if_necessary
    batch = cls_scores[0].shape[0]
    priors = self.prior_generator.grid_priors([s.shape[-2:] for s in cls_scores],
                                              device=cls_scores[0].device)
    out = []
    for score, delta, prior in zip(cls_scores, bbox_preds, priors):
        score = score.permute(0, 2, 3, 1)
        score = score.reshape(batch, -1, 1).sigmoid() if self.use_sigmoid_cls else \
            score.reshape(batch, -1, 2).softmax(-1)[..., :1]
        delta = delta.permute(0, 2, 3, 1).reshape(batch, -1, 4)
        prior = prior.unsqueeze(0)
        if nms_pre > 0:
            score = pad_with_value_if_necessary(score, 1, nms_pre, 0.)
            delta = pad_with_value_if_necessary(delta, 1, nms_pre)
            prior = pad_with_value_if_necessary(prior, 1, nms_pre)
            _, inds = score.squeeze(2).topk(nms_pre)
            delta, score = gather_topk(delta, score, inds=inds, batch_size=batch,
                                       is_batched=True)
            prior = gather_topk(prior, inds=inds, batch_size=batch, is_batched=False)
        out.append((score, delta, prior.expand(batch, -1, -1)))
    return out


def rpn_predict_by_feat(self, cls_scores, bbox_preds, score_factors=None, batch_img_metas=None,
                        cfg=None, rescale=False, with_nms=True):
    """RPN proposals as MMDetection makes them: NMS level by level, empty boxes dropped.

    MMDeploy's own rewrite suppresses the proposals of all levels in one NMS and drops those
    scoring under its ``score_threshold``. Here each level's scores go into a column of their
    own, so MMDeploy's multi-class NMS (ONNX ``NonMaxSuppression``) treats levels as classes,
    which is MMDetection's ``batched_nms(boxes, scores, level_ids)``.
    """
    from mmdeploy.mmcv.ops import multiclass_nms
    cfg = self.test_cfg if cfg is None else cfg
    levels = _rpn_level_scores(self, cls_scores, bbox_preds, cfg.get('nms_pre', -1))
    deltas = torch.cat([d for _, d, _ in levels], 1)
    priors = torch.cat([p for _, _, p in levels], 1)
    boxes = self.bbox_coder.decode(priors, deltas, max_shape=batch_img_metas[0]['img_shape'])
    # (batch, boxes, levels): a box's score in its level's column, zero elsewhere
    scores = torch.cat([torch.cat([s if i == j else torch.zeros_like(s) for j in
                                   range(len(levels))], 2) for i, (s, _, _) in
                        enumerate(levels)], 1)
    min_size = cfg.get('min_bbox_size', -1)
    if min_size >= 0:  # as MMDetection: drop boxes not larger (zero scores never pass NMS)
        wh = boxes[..., 2:] - boxes[..., :2]
        scores = scores * (wh > min_size).all(-1, keepdim=True)
    if not with_nms:
        return boxes, scores
    return multiclass_nms(boxes, scores, cfg.max_per_img, nms_type=cfg.nms.get('type'),
                          iou_threshold=cfg.nms.iou_threshold, score_threshold=0.0,
                          pre_top_k=-1, keep_top_k=cfg.max_per_img)


def _legacy_export(export: Callable) -> Callable:
    """``torch.onnx.export`` with ``dynamo=False`` unless the caller passes ``dynamo``."""

    @functools.wraps(export)
    def wrapper(*args, **kwargs):
        kwargs.setdefault('dynamo', False)
        return export(*args, **kwargs)

    wrapper.mmgfp_legacy_default = True
    return wrapper


def _patch_export():
    if getattr(torch.onnx.export, 'mmgfp_legacy_default', False):
        return None
    param = inspect.signature(torch.onnx.export).parameters.get('dynamo')
    if param is None or param.default is not True:
        return None
    original = torch.onnx.export
    torch.onnx.export = _legacy_export(original)
    return lambda: setattr(torch.onnx, 'export', original)


def _patch_cast_long():
    import torch.onnx.symbolic_opset9 as opset9
    if hasattr(opset9, '_cast_Long'):
        return None
    opset9._cast_Long = cast_long
    return lambda: delattr(opset9, '_cast_Long')


def _rewriter_patch(func_name: str, rewriter: Callable) -> Callable:
    """A patch registering ``rewriter`` as MMDeploy's ONNX Runtime rewriter of ``func_name``
    (MMDeploy prefers a backend-specific rewriter to its default one)."""

    def patch():
        try:
            from mmdeploy.core import FUNCTION_REWRITER
        except ImportError:  # nothing to fix without MMDeploy
            return None
        records = FUNCTION_REWRITER._registry._rewrite_records.get(func_name, [])
        if any(r['_object'] is rewriter for r in records):
            return None
        FUNCTION_REWRITER.register_rewriter(func_name, backend='onnxruntime')(rewriter)
        return lambda: FUNCTION_REWRITER._registry.remove_record(rewriter)

    return patch


PATCHES = (('torch.onnx.export', _patch_export),
           ('torch.onnx.symbolic_opset9._cast_Long', _patch_cast_long),
           (RTMDET + ' (MMDeploy, onnxruntime)', _rewriter_patch(RTMDET, rtmdet_predict_by_feat)),
           (RPN + ' (MMDeploy, onnxruntime)', _rewriter_patch(RPN, rpn_predict_by_feat)))


def apply_mmdeploy_compat() -> List[str]:
    """Patch PyTorch and MMDeploy until :func:`restore_mmdeploy_compat` (idempotent).

    Returns:
        list[str]: What was patched now, e.g. ``['torch.onnx.export',
        'torch.onnx.symbolic_opset9._cast_Long', ...]``; empty when nothing was needed.
    """
    done = []
    for name, patch in PATCHES:
        undo = patch()
        if undo is not None:
            _APPLIED.append((name, undo))
            done.append(name)
    return done


def _undo_to(depth: int) -> None:
    while len(_APPLIED) > depth:
        _APPLIED.pop()[1]()


def restore_mmdeploy_compat() -> None:
    """Undo every patch :func:`apply_mmdeploy_compat` made, newest first."""
    _undo_to(0)


@contextlib.contextmanager
def mmdeploy_compat() -> Iterator[List[str]]:
    """Context manager: PyTorch and MMDeploy patched inside, as before outside.

    Yields:
        list[str]: What was patched (see :func:`apply_mmdeploy_compat`).
    """
    depth = len(_APPLIED)
    try:
        yield apply_mmdeploy_compat()
    finally:
        _undo_to(depth)
