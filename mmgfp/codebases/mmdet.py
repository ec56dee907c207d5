"""MMDetection: demo batches, and tracer rules for modules built on ops the tracer cannot see."""
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .base import Codebase, register_codebase
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

    def register_rules(self) -> None:
        _register_rules()

    def fix_compact(self, model: nn.Module) -> None:
        fix_compact(model)
