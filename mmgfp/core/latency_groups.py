"""Which groups shape each timed layer, and the per-group calibration of a latency table.

:func:`timed_layers`, :func:`group_layers` and :func:`layer_sides` say which conv/linear
layers a table must hold and which groups make their widths.

A table's entries time each layer as a block; inside the model a group's channels can save
more (a residual stage group also feeds the adds and pools between blocks) or less (inner
widths whose blocks overlap in the model) than the blocks say. One global ``layer_scale``
cannot correct errors of opposite sign, so a table may hold ``group_calibration``::

    {"groups": {key: {"channels": 256, "kept": 128, "ratio": 0.91, "se": 0.004}},
     "layers": {layer: {"in": [[key, mult], ...], "out": [[key, mult], ...]}}}

``groups``: the model with group ``key`` alone at ``kept`` of its ``channels`` measured
``ratio`` of the unpruned model's time (``se``, optional: the standard error of that ratio).
``layers``: which prunable groups make each timed layer's input and output widths (a side's
width is its full width less ``mult`` channels per channel a group loses), so the table can
fit and apply the factors without the model's :class:`GroupSet`.

:func:`fit_group_factors` turns each measurement into a factor ``f = measured saving /
predicted saving`` (with the table's remainder share and layer scale), shrunk towards 1 as
the measurement's noise grows against the predicted saving, 1 where the table predicts too
small a saving to divide by, clipped to ``SCALE_RANGE``; it covers the widths the group was
measured over (below them the factor fades to 1, :func:`ranged_factor`). Going from widths
``(in, out)`` to ``(in', out')``, a layer's change of time splits into an input-side part
(the mean of ``t(in', out) - t(in, out)`` and ``t(in', out') - t(in, out')``) and an
output-side part (likewise), each scaled by the factor of the groups on that side
(:func:`side_factor`), so that one group alone at the measured width is predicted as measured.
"""
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from .grouping import GroupSet
from .latency_calib import SCALE_RANGE, LatencyTableError

Pairs = List[Tuple[str, int]]
MIN_SAVING = 1e-3  # predicted savings below this share of the model are not divided by
PRIOR_SPREAD = 0.5  # how far from 1 a factor is expected to lie before measuring


def layer_groups(gs: GroupSet, name: str) -> List[str]:
    """Keys of the groups whose channels a conv/linear layer reads, writes or carries."""
    if name in gs.passthrough:
        return [k for k, _ in gs.passthrough[name].segs]
    keys = [k for k, _ in gs.consumers[name].segs] if name in gs.consumers else []
    if name in gs.producers:
        keys.append(gs.producers[name])
    return keys


def timed_layers(gs: GroupSet) -> List[str]:
    """The conv/linear layers whose width pruning can change: those a table must hold."""
    prunable = {g.key for g in gs.prunable}
    return [n for n in gs.layers if prunable.intersection(layer_groups(gs, n))]


def group_layers(gs: GroupSet, key: str) -> List[str]:
    """The conv/linear layers whose width changes with group ``key``."""
    return [n for n in gs.layers if key in layer_groups(gs, n)]


def layers_by_group(gs: GroupSet) -> Dict[str, List[str]]:
    """Group key -> :func:`group_layers`, for every group at once."""
    out: Dict[str, List[str]] = {k: [] for k in gs.groups}
    for name in gs.layers:
        for k in dict.fromkeys(layer_groups(gs, name)):
            out[k].append(name)
    return out


def layer_sides(gs: GroupSet, name: str,
                prunable: Optional[Set[str]] = None) -> Tuple[Pairs, Pairs]:
    """``(in, out)``: the prunable groups (``prunable``: their keys, when the caller has
    them) that make layer ``name``'s input and output widths, each with the channels the side
    loses per channel of that group."""
    prunable = {g.key for g in gs.prunable} if prunable is None else prunable
    if name in gs.passthrough:
        lc = gs.passthrough[name]
        both = [(k, lc.inner) for k, _ in lc.segs if k in prunable]
        return both, list(both)
    ins: Pairs = []
    if name in gs.consumers:
        lc = gs.consumers[name]
        ins = [(k, lc.inner) for k, _ in lc.segs if k in prunable]
    out = gs.producers.get(name)
    return ins, ([(out, 1)] if out in prunable else [])


def group_map(gs: GroupSet, names: Sequence[str]) -> Dict[str, Dict[str, List]]:
    """The ``layers`` part of a group calibration for the timed layers ``names``."""
    out = {}
    for name in names:
        ins, outs = layer_sides(gs, name)
        out[name] = {'in': [[k, m] for k, m in ins], 'out': [[k, m] for k, m in outs]}
    return out


def side_factor(factors: Mapping[str, float], pairs: Sequence[Tuple[str, int]],
                weight: Mapping[str, float]) -> float:
    """Factor of one side of a layer: its groups' factors (1 where none), weighted by
    ``mult * weight[key]`` (the channels each group changes by)."""
    num = den = 0.0
    for k, mult in pairs:
        w = mult * weight.get(k, 0.0)
        num += w * factors.get(k, 1.0)
        den += w
    return num / den if den else 1.0


def ranged_factor(f: float, group: Mapping, span: Tuple[float, float]) -> float:
    """A group's factor ``f`` over the part of its width change ``span`` = (width, reference)
    that lies where it was measured (``group['kept']`` to ``group['channels']``), 1 over the
    rest, averaged by channels: below the measured width the table and its global
    calibration stand alone."""
    lo, hi = min(span), max(span)
    if hi <= lo:
        return f
    inside = max(0.0, min(hi, group['channels']) - max(lo, group['kept']))
    return 1.0 + (f - 1.0) * inside / (hi - lo)


def side_factors(table, ins: Pairs, outs: Pairs,
                 spans: Mapping[str, Tuple[float, float]]) -> Tuple[float, float]:
    """(in, out) factors of a layer whose groups change widths as ``spans`` (key -> (width,
    reference)): each group's :func:`ranged_factor`, weighted by the channels it changes."""
    cal = table.group_calibration['groups']
    eff = {k: ranged_factor(table.group_factors[k], cal[k], s) for k, s in spans.items()
           if k in table.group_factors}
    moved = {k: abs(a - b) for k, (a, b) in spans.items()}
    return side_factor(eff, ins, moved), side_factor(eff, outs, moved)


def map_spans(table, name: str, io: Sequence[float]) -> Tuple[Pairs, Pairs, Dict]:
    """``(in, out, spans)`` of layer ``name`` at widths ``io`` from the stored group map
    (no GroupSet): the channels a side lost are shared among its groups in proportion to
    their widths (exact where a side has one group)."""
    cal = table.group_calibration
    sides = cal['layers'].get(name, {'in': [], 'out': []})
    full = {k: g['channels'] for k, g in cal['groups'].items()}
    spans = {}
    for side, width, ref in zip(('in', 'out'), io, table.layers[name].full_io):
        den = sum(m * full.get(k, 0.0) for k, m in sides[side])
        for k, _ in sides[side]:
            if den and k in full:
                spans[k] = (full[k] - (ref - width) * full[k] / den, full[k])
    return ([(k, m) for k, m in sides['in']], [(k, m) for k, m in sides['out']], spans)


def shrunk_factor(measured: float, predicted: float, se: float = 0.0) -> float:
    """``measured / predicted`` (savings as shares of the model), pulled towards 1 by the
    measurement's standard error ``se`` (a normal prior of spread ``PRIOR_SPREAD``),
    clipped to ``SCALE_RANGE``; 1 below ``MIN_SAVING``."""
    if predicted < MIN_SAVING:
        return 1.0
    noise = (se / PRIOR_SPREAD) ** 2
    f = (noise + measured * predicted) / (noise + predicted * predicted)
    return min(max(f, SCALE_RANGE[0]), SCALE_RANGE[1])


def one_group_saving(table, layers: Mapping[str, Mapping], key: str, lost: float) -> float:
    """Predicted saving (share of the model, factors 1) of group ``key`` losing ``lost``
    channels alone, from the calibration's layer map."""
    dt = dout = 0.0
    for name, sides in layers.items():
        d_in = sum(m * lost for k, m in sides['in'] if k == key)
        d_out = sum(m * lost for k, m in sides['out'] if k == key)
        if not d_in and not d_out:
            continue
        lay = table._layer(name)
        fin, fout = lay.full_io
        dt += table.time(name, fin - d_in, fout - d_out) - table.time(name, fin, fout)
        dout += lay.out_elems * -d_out
    change = table.layer_scale * dt + table.remainder_change(dout)
    return -change / table.total_us


def fit_group_factors(table, cal: Optional[Mapping]) -> Dict[str, float]:
    """Group key -> factor of its savings (see the module docstring); {} without ``cal``."""
    if not cal:
        return {}
    out = {}
    for key, g in cal['groups'].items():
        pred = one_group_saving(table, cal['layers'], key, g['channels'] - g['kept'])
        out[key] = shrunk_factor(1.0 - g['ratio'], pred, g.get('se', 0.0))
    return out


def _number(x, low: float = 0.0) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x >= low


def _pairs_ok(pairs) -> bool:
    return isinstance(pairs, list) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str)
        and _number(p[1], 1) for p in pairs)


def check_group_calibration(cal, layer_names) -> Optional[Dict]:
    """``cal`` as plain, checked data (None stays None).

    Raises:
        LatencyTableError: A malformed entry, named with what it should be.
    """
    if cal is None:
        return None
    form = ('{"groups": {key: {"channels": C, "kept": c, "ratio": r[, "se": s]}}, "layers": '
            '{layer: {"in": [[key, mult], ...], "out": [[key, mult], ...]}}}')
    if not isinstance(cal, Mapping) or not isinstance(cal.get('groups'), Mapping) or \
            not isinstance(cal.get('layers'), Mapping):
        raise LatencyTableError(f'latency table `group_calibration` must be {form}, but got '
                                f'{cal!r}; profile again with --calibrate-groups')
    groups = {}
    for key, g in cal['groups'].items():
        ok = isinstance(g, Mapping) and _number(g.get('channels'), 1) and _number(
            g.get('kept'), 0) and g['kept'] < g['channels'] and _number(
                g.get('ratio')) and g['ratio'] > 0 and _number(g.get('se', 0.0))
        if not ok:
            raise LatencyTableError(
                f'latency table `group_calibration` group {key!r} must be {{"channels": C, '
                f'"kept": c < C, "ratio": r > 0[, "se": s >= 0]}}, but got {g!r}')
        groups[key] = {k: float(g[k]) for k in ('channels', 'kept', 'ratio', 'se') if k in g}
    layers = {}
    for name, sides in cal['layers'].items():
        if name not in layer_names:
            raise LatencyTableError(f'latency table `group_calibration` maps layer {name!r}, '
                                    f'which the table does not time')
        if not isinstance(sides, Mapping) or not all(
                _pairs_ok(sides.get(s)) for s in ('in', 'out')):
            raise LatencyTableError(
                f'latency table `group_calibration` layer {name!r} must be {{"in": [[key, '
                f'mult], ...], "out": [[key, mult], ...]}}, but got {sides!r}')
        layers[name] = {s: [[k, int(m)] for k, m in sides[s]] for s in ('in', 'out')}
    return {'groups': groups, 'layers': layers}


def layer_change(table, name: str, io: Sequence[float], ref: Sequence[float], f_in: float,
                 f_out: float) -> Tuple[float, float]:
    """``(us, output elements)`` layer ``name`` changes by at widths ``io`` = (in, out)
    instead of ``ref``: the input side's part scaled by ``f_in``, the output side's by
    ``f_out`` (the time by the table's ``layer_scale`` too). Each side's part is the mean of
    its change before and after the other side's (no order is preferred)."""
    (cin, cout), (rin, rout) = io, ref
    new, old = table.time(name, cin, cout), table.time(name, rin, rout)
    if f_in == f_out:
        dt = f_out * (new - old)
    else:
        only_in, only_out = table.time(name, cin, rout), table.time(name, rin, cout)
        dt = (f_in * ((only_in - old) + (new - only_out)) +
              f_out * ((only_out - old) + (new - only_in))) / 2
    return table.layer_scale * dt, f_out * table._layer(name).out_elems * (cout - rout)
