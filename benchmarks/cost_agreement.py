"""Do the pruning costs agree? Per-group unit costs under acts, FLOPs and a latency table.

GFP ranks channel groups by Fisher information divided by what one unit of the group costs
(``FisherPruner`` ``delta``). Two criteria can only choose differently where their costs
*per unit* rank the groups differently. This script prints, for every prunable group of a
config's model, what one unit of it costs (``mmgfp.core.unit_costs``: activations, FLOPs,
and the time a latency table says the group's next step saves, per unit, the step being the
table's alignment as with ``divisor='auto'``), and how well the costs agree over the groups:
Spearman's rank correlation and the spread of latency per FLOP, with the groups where latency
and FLOPs disagree most. It does this at full width and at ``--fraction`` of every width
(costs move as the neighbours narrow)::

    .venv/bin/python benchmarks/cost_agreement.py configs/digits/retinanet_r18_fpn_digits.py \\
        --input-size 128 128 \\
        --table benchmarks/results/latency_tables/digits_retinanet_r18_ort_cpu_b1_t1_128x128.json \\
        --json benchmarks/results/cost_agreement_digits_retinanet_r18_ort.json

Random weights (costs do not depend on them); nothing is timed, so it takes seconds.
"""
import argparse
import json
import math
import os.path as osp
import sys
from typing import Dict, List, Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmgfp.core.pruner import look_ahead, plan_removal  # noqa: E402

DELTAS = ('acts', 'flops', 'latency')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--input-size', type=int, nargs=2, default=[128, 128], metavar=('H', 'W'))
    p.add_argument('--table', required=True, help='a latency table of this config')
    p.add_argument('--fraction', type=float, default=0.5,
                   help='the second state: every group at this fraction of its width')
    p.add_argument('--top', type=int, default=8,
                   help='groups listed where latency and FLOPs disagree most')
    p.add_argument('--json')
    return p.parse_args(argv)


def ranks(xs: Sequence[float]) -> List[float]:
    """Ranks from 1, ties given their mean rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma)**2 for x in a)
    vb = sum((y - mb)**2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else float('nan')


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    return pearson(ranks(a), ranks(b))


def next_step(groups, table, key: str, kept, min_channels: int = 1):
    """``(units, step, floor)`` of group ``key``'s next removal as ``FisherPruner`` plans it
    with ``divisor='auto'`` (down to a multiple of the table's alignment, at least one step),
    or None where the group is at its floor and the pruner no longer considers it: the
    pruner's own :func:`~mmgfp.core.pruner.plan_removal`."""
    g = groups.groups[key]
    return plan_removal(kept(key) // g.block, g.block, table.group_align(groups, key),
                        min_channels)


def state_costs(groups, table, kept) -> Dict[str, Dict[str, float]]:
    """Group key -> {delta: cost of one unit} with the widths ``kept``, for the groups the
    pruner can still narrow. Latency: the time the group's next step saves, per unit, and
    where that step saves nothing on the table's staircase, the first longer removal (up to
    ``LOOKAHEAD`` steps) that saves time, as ``FisherPruner`` looks ahead
    (:func:`~mmgfp.core.pruner.look_ahead`)."""
    from mmgfp.core.cost import unit_costs
    plans = {g.key: next_step(groups, table, g.key, kept) for g in groups.prunable}
    plans = {k: p for k, p in plans.items() if p is not None}
    out = {k: {} for k in plans}
    for d in DELTAS:
        steps = {k: p[0] for k, p in plans.items()} if d == 'latency' else None
        for k, v in unit_costs(groups, kept, d, table, steps).items():
            if k in out:
                out[k][d] = v
    for key, plan in plans.items():
        out[key]['latency'] = look_ahead(table, groups, kept, key, plan,
                                         out[key]['latency'])[1]
    return out


def summarize(costs: Dict[str, Dict[str, float]], top: int) -> Dict:
    keys = [k for k, c in costs.items() if c['flops'] > 0]
    col = {d: [costs[k][d] for k in keys] for d in DELTAS}
    ratio = [costs[k]['latency'] / costs[k]['flops'] for k in keys]
    pos = [r for r in ratio if r > 0]
    if not pos:
        raise ValueError('no group saves time on this table at these widths: nothing to compare')
    mean = sum(pos) / len(pos)
    geo = math.exp(sum(math.log(r) for r in pos) / len(pos))
    rel = {k: (costs[k]['latency'] / costs[k]['flops']) / geo for k in keys}
    worst = sorted(keys, key=lambda k: -abs(math.log(rel[k])) if rel[k] > 0 else -1e9)[:top]
    return {
        'groups': len(keys),
        'spearman': {f'{a}~{b}': spearman(col[a], col[b])
                     for a, b in (('latency', 'flops'), ('latency', 'acts'), ('flops', 'acts'))},
        'latency_per_flop_cv': math.sqrt(sum((r - mean)**2 for r in pos) / len(pos)) / mean,
        'saves_nothing': [k for k in keys if costs[k]['latency'] <= 0],
        'disagree': [{'group': k, 'latency_per_flop': rel[k]} for k in worst],
    }


def main(argv=None):
    args = parse_args(argv)
    import torch

    from mmgfp.apis.checking.check import load_config
    from mmgfp.apis.latency.profile import config_model
    from mmgfp.core import LatencyTable
    torch.set_num_threads(1)
    table = LatencyTable.load(args.table)
    _, groups, _ = config_model(load_config(args.config), 1, tuple(args.input_size))
    table.check_groups(groups)
    prunable = {g.key for g in groups.prunable}

    def narrowed(k: str) -> int:
        g = groups.groups[k]
        if k not in prunable:
            return g.channels
        return g.block * min(g.units, max(2, math.ceil(args.fraction * g.units)))

    states = {'full': lambda k: groups.groups[k].channels, f'x{args.fraction:g}': narrowed}
    result = {'config': args.config, 'table': args.table, 'key': table.key, 'states': {}}
    for name, kept in states.items():
        costs = state_costs(groups, table, kept)
        s = summarize(costs, args.top)
        floor = sorted(g.key for g in groups.prunable if g.key not in costs)
        result['states'][name] = dict(s, costs=costs, at_floor=floor)
        sp = s['spearman']
        print(f'[{name}] {s["groups"]} groups; Spearman latency~flops {sp["latency~flops"]:.2f}, '
              f'latency~acts {sp["latency~acts"]:.2f}, flops~acts {sp["flops~acts"]:.2f}; '
              f'latency per FLOP varies by {s["latency_per_flop_cv"]:.0%} (coefficient of '
              f'variation); {len(s["saves_nothing"])} groups save no time per step'
              + (f'; {len(floor)} at their floor, left out' if floor else ''))
        for row in s['disagree']:
            rel = row['latency_per_flop']
            what = (f'x{rel:.2f} the geometric mean' if rel > 0 else
                    'its next step saves no time on the table')
            print(f'    {row["group"]:45s} latency per FLOP {what}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
