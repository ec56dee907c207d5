"""Tracer rules for MMDetection modules built on ops the tracer cannot see."""
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


def register() -> None:
    try:
        from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
        from mmdet.models.roi_heads.roi_extractors.base_roi_extractor import \
            BaseRoIExtractor
    except ImportError:
        return
    VouchedModule.register(SingleRoIExtractor, _roi_extractor)
    # Fisher terms of RoI features are folded onto the image each RoI was cut from
    RowSource.register(BaseRoIExtractor, _roi_rows)
