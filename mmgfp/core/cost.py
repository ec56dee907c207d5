"""FLOPs, activations and parameters of a (masked) model, and the cost of one unit of a group.

Counts are per sample and cover the traced conv, transposed-conv and linear layers:
FLOPs are multiply-accumulates, activations are the elements of those layers' output maps (every
call, so a head shared over five FPN levels counts five maps). Parameters are the whole model's,
less what pruning removes from conv/linear/norm layers and per-channel parameters.
"""
from collections import defaultdict
from typing import Callable, Dict, Optional

import torch.nn as nn

from .grouping import GroupSet, layer_io as _io, layer_width as _width
from .latency import LatencyTable, layers_by_group

DELTAS = ('acts', 'flops', 'latency')

KeptFn = Callable[[str], int]  # group key -> channels kept


def count(gs: GroupSet, kept: KeptFn) -> Dict[str, float]:
    """FLOPs (MACs) and activation elements per sample with ``kept`` channels per group."""
    flops = acts = 0.0
    for call in gs.calls:
        if call.module not in gs.layers:
            continue
        _, cout, cin_g = _io(gs, call.module, kept)
        flops += call.out_elems * cout * cin_g * call.kernel
        acts += call.out_elems * cout
    return {'flops': flops, 'acts': acts}


def count_params(model: nn.Module, gs: GroupSet, kept: KeptFn) -> int:
    """Parameters of the model once every group keeps only ``kept`` channels."""
    total = sum(p.numel() for p in model.parameters())
    modules = dict(model.named_modules())
    for name, info in gs.layers.items():
        cin, cout, cin_g = _io(gs, name, kept)
        mod = modules[name]
        full = mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
        if info.kind == 'conv_transpose':
            new = cin * (cout // info.groups) * info.kernel
        else:
            new = cout * cin_g * info.kernel
        total -= full - new - (cout if mod.bias is not None else 0)
    for name, lc in gs.passthrough.items():
        if name in gs.layers:
            continue
        mod = modules[name]
        per_channel = sum(p.numel() for p in mod.parameters(recurse=False)) // lc.size
        total -= per_channel * (lc.size - _width(lc, kept))
    for name, (lc, _) in gs.params.items():
        mod_name, _, pname = name.rpartition('.')
        p = getattr(modules[mod_name], pname)
        total -= p.numel() // lc.size * (lc.size - _width(lc, kept)) if isinstance(
            p, nn.Parameter) else 0
    return int(total)


def unit_costs(gs: GroupSet, kept: KeptFn, delta: str, table: Optional[LatencyTable] = None,
               steps: Optional[Dict[str, int]] = None) -> Dict[str, float]:
    """What removing one unit of each group saves, in activations, FLOPs or time.

    Args:
        gs (GroupSet): The groups.
        kept (callable): Group key -> channels currently kept.
        delta (str): ``'acts'``, ``'flops'`` (per sample) or ``'latency'`` (microseconds on
            the table's device).
        table (LatencyTable, optional): Needed for ``'latency'``. Defaults to None.
        steps (dict, optional): ``'latency'`` only: group key -> units the group's next
            removal takes (1 where not given). Time is not linear in the width, so the cost
            is the time that whole step saves, divided by its units; it is <= 0 where the step
            saves nothing (a flat stretch of a staircase). Defaults to None.
    """
    if delta == 'latency':
        return latency_unit_costs(gs, kept, table, steps or {})
    if delta not in ('acts', 'flops'):
        raise ValueError(f"`delta` must be one of {DELTAS}, but got {delta!r}")
    cost: Dict[str, float] = defaultdict(float)
    for call in gs.calls:
        name = call.module
        if name not in gs.layers:
            continue
        info = gs.layers[name]
        _, cout, cin_g = _io(gs, name, kept)
        out_groups = []
        if name in gs.passthrough:
            out_groups = [k for k, _ in gs.passthrough[name].segs]
        elif name in gs.producers:
            out_groups = [gs.producers[name]]
        for key in out_groups:  # this unit's output maps (and their MACs) go
            block = gs.groups[key].block
            if delta == 'acts':
                cost[key] += call.out_elems * block
            else:
                cost[key] += call.out_elems * block * cin_g * call.kernel
        if delta == 'flops' and name in gs.consumers and name not in gs.passthrough:
            lc = gs.consumers[name]
            per_out = cout // info.groups if info.kind == 'conv_transpose' else cout
            for key, _ in lc.segs:
                block = gs.groups[key].block
                cost[key] += call.out_elems * per_out * call.kernel * block * lc.inner
    return {g.key: cost.get(g.key, 0.0) for g in gs.prunable}


def latency_unit_costs(gs: GroupSet, kept: KeptFn, table: Optional[LatencyTable],
                       steps: Dict[str, int]) -> Dict[str, float]:
    """Time saved per unit by each group's next removal of ``steps[key]`` units (us)."""
    if table is None:
        raise ValueError("delta='latency' needs a latency table (`table`); "
                         'make one with tools/profile_latency.py')
    by_group = layers_by_group(gs)
    out = {}
    for g in gs.prunable:
        units = steps.get(g.key, 1)
        out[g.key] = table.saved(gs, kept, g.key, units * g.block, by_group[g.key]) / units
    return out
