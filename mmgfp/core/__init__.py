"""Plain-PyTorch core of mmgfp: tracing, grouping, masks, Fisher importance, costs, surgery.

Nothing here imports MMEngine, MMDetection or MMPretrain.
"""
from .cost import count, count_params, unit_costs
from .fisher import FisherRecorder
from .grouping import ChannelGroup, GroupSet, LayerChannels, build_groups
from .latency import LatencyTable, LatencyTableError
from .masks import ChannelMasker
from .pruner import FisherPruner
from .spec import SpecError, load_spec, make_spec, masks_from_spec, save_spec
from .surgery import apply_spec
from .tracing import VouchedModule, trace

__all__ = [
    'build_groups', 'trace', 'VouchedModule', 'ChannelGroup', 'GroupSet', 'LayerChannels',
    'ChannelMasker', 'FisherRecorder', 'FisherPruner', 'count', 'count_params', 'unit_costs',
    'make_spec', 'masks_from_spec', 'apply_spec', 'load_spec',
    'save_spec', 'SpecError', 'LatencyTable', 'LatencyTableError'
]
