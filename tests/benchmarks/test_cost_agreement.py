"""benchmarks/cost_agreement.py: per-group unit costs under acts, FLOPs and a latency table."""
import json
import os.path as osp
import sys

import pytest
import torch
import torch.nn as nn

import mmgfp.core.pruner as pruner_module

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import cost_agreement as CA  # noqa: E402

CONFIG = osp.join(ROOT, 'configs', 'digits', 'retinanet_r18_fpn_digits.py')
TABLES = osp.join(ROOT, 'benchmarks', 'results', 'latency_tables')


def test_ranks_and_spearman():
    assert CA.ranks([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]
    assert CA.ranks([1.0, 2.0, 2.0, 5.0]) == [1.0, 2.5, 2.5, 4.0]  # ties share their mean rank
    assert CA.spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert CA.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_next_step_follows_the_pruner():
    class _G:
        def __init__(self, block):
            self.block = block

    class _Groups:
        groups = {'a': _G(1), 'b': _G(2)}

    class _Table:
        def group_align(self, gs, key):
            return 32

    kept = {'a': 64, 'b': 48}.get
    assert CA.next_step(_Groups, _Table(), 'a', kept) == (32, 32, 32)  # one step above the floor
    assert CA.next_step(_Groups, _Table(), 'a', {'a': 32}.get) is None  # at the floor
    assert CA.next_step(_Groups, _Table(), 'b', kept) == (8, 16, 16)  # 24 units: down to 16
    # the script runs the pruner's own arithmetic, not a copy of it
    assert CA.plan_removal is pruner_module.plan_removal
    assert CA.look_ahead is pruner_module.look_ahead


class _Chain(nn.Module):
    """x (3) -> a: conv 3->8 -> ReLU -> b: conv 8->12 -> ReLU -> c: conv 12->5 -> out"""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 12, 3), nn.Conv2d(12, 5, 1)

    def forward(self, x):
        return self.c(self.b(self.a(x).relu()).relu())


def test_costs_are_what_the_pruner_ranks_by():
    """On a table where b's time is flat from 8 to 12 output channels, the script's latency
    cost of b is the time saved per unit of the removal the pruner takes (12 -> 7, looked
    ahead past the flat stretch), and its plans are the pruner's (a aligned to 4)."""
    from mmgfp.core import FisherPruner, LatencyTable, build_groups

    def grid(f, ins, outs):
        return {'in': ins, 'out': outs, 'us': [[f(i, o) for o in outs] for i in ins]}

    flat_b = grid(lambda i, o: 0.1 * i * min(o, 8), [1, 4, 8], [1, 8, 12])
    table = LatencyTable({'config': 'toy'}, 100.0, {
        'a': dict(grid(lambda i, o: 1.0 * o, [3], [1, 4, 8]), align=4), 'b': flat_b,
        'c': grid(lambda i, o: 2.0, [1, 6, 12], [5])})
    model, x = _Chain(), torch.randn(1, 3, 12, 12)
    gs = build_groups(model, lambda m: m(x))
    pruner = FisherPruner(model, gs, delta='latency', divisor='auto', latency_table=table)
    assert sorted(g.key for g in gs.prunable) == ['a', 'b']
    for g in gs.prunable:
        assert CA.next_step(gs, table, g.key, pruner.kept) == tuple(pruner._plan(g.key)[1:])
    costs = CA.state_costs(gs, table, pruner.kept)
    # a's step is 4 units (8 -> 4): 4 us in a, and b's input narrows by 4 (b's out is 8)
    assert costs['a']['latency'] == pytest.approx((1.0 * 4 + 0.1 * 4 * 8) / 4)
    assert costs['b']['latency'] == pytest.approx(0.1 * 8 / 5)  # 12 -> 7: 5 units
    # equal Fisher values: the score is 1 / (time saved per unit) of the removal chosen
    rec = pruner.recorder
    rec.fisher['a'].fill_(1e6)
    rec.fisher['b'].fill_(1.0)
    rec.hits.update(a=1, b=1)
    chosen = pruner.select()
    assert chosen.key == 'b' and len(chosen.units) == 5
    assert 1 / chosen.score == pytest.approx(costs['b']['latency'])


def test_summary_names_the_outliers():
    costs = {f'g{i}': {'acts': 1.0 + i, 'flops': 10.0 * (1 + i), 'latency': 1.0 + i}
             for i in range(4)}
    costs['g3']['latency'] = 40.0  # 10x the time per FLOP of the others
    costs['g2']['latency'] = -1.0  # a flat stretch: the next step saves nothing
    s = CA.summarize(costs, top=2)
    assert s['groups'] == 4 and s['saves_nothing'] == ['g2']
    assert [r['group'] for r in s['disagree']] == ['g2', 'g3']
    assert s['spearman']['flops~acts'] == pytest.approx(1.0)
    assert s['latency_per_flop_cv'] > 1.0


def test_stored_tables_of_the_digits_detector(tmp_path, capsys):
    out = tmp_path / 'agreement.json'
    CA.main([CONFIG, '--input-size', '128', '128', '--table',
             osp.join(TABLES, 'digits_retinanet_r18_ort_cpu_b1_t1_128x128.json'),
             '--json', str(out)])
    stored = json.loads(out.read_text())
    assert set(stored['states']) == {'full', 'x0.5'}
    full = stored['states']['full']
    assert full['groups'] == len(full['costs']) == 18
    for costs in full['costs'].values():
        assert costs['acts'] > 0 and costs['flops'] > 0 and costs['latency'] > 0
    # activations and FLOPs per unit rank the groups alike (same maps, kernel sizes differ);
    # ONNX Runtime's table does not: its deep 4x4 layers cost several times more per FLOP
    assert full['spearman']['flops~acts'] > 0.9
    assert full['spearman']['latency~flops'] < 0.9
    assert full['disagree'][0]['group'].startswith('backbone.layer4')
    # at half width six groups are one 32-channel step from their floor: the pruner stops
    # there, and so does the comparison
    half = stored['states']['x0.5']
    assert len(half['at_floor']) == 6 and half['groups'] == 12 == len(half['costs'])
    assert not set(half['at_floor']) & set(half['costs'])
    said = capsys.readouterr().out
    assert '[full] 18 groups' in said and '[x0.5] 12 groups' in said and '6 at their floor' in said
