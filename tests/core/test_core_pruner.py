"""FisherPruner: what goes next, limits (min_channels, divisor, blocks), targets, state."""
import copy

import pytest
import torch

from core_toys import groups_of, inputs, make, outputs
from mmgfp.core import FisherPruner, apply_spec, build_groups, count, make_spec, unit_costs
from mmgfp.core.pruner import LOOKAHEAD, look_ahead, plan_removal


def _pruner(name='chain', **kw):
    model, x = make(name), inputs()
    gs = groups_of(model, x)
    return model, x, gs, FisherPruner(model, gs, **kw)


def fake_stats(pruner, seed=0, values=None):
    """Pretend one iteration gave these Fisher values (random if not given) to every group."""
    gen = torch.Generator().manual_seed(seed)
    rec = pruner.recorder
    for k, f in rec.fisher.items():
        v = values.get(k) if values else None
        f.copy_(torch.as_tensor(v, dtype=torch.float64) if v is not None else
                torch.rand(f.numel(), generator=gen, dtype=torch.float64) + 0.01)
        rec.hits[k] = 1
    rec.iters = 1


def brute_force_choice(pruner):
    """(key, unit) with the lowest Fisher / cost among alive units, for block=1, divisor=1."""
    costs = unit_costs(pruner.groups, pruner.kept, pruner.delta)
    best = None
    for key, cost in costs.items():
        keep = pruner.masker.keep[key]
        if int(keep.sum()) <= 1:
            continue
        for u in keep.nonzero().flatten().tolist():
            s = float(pruner.recorder.fisher[key][u]) / cost
            if best is None or s < best[0]:
                best = (s, key, u)
    return best


def test_constructor_checks():
    model, x = make('chain'), inputs()
    gs = groups_of(model, x)
    for kw in ({'delta': 'params'}, {'min_channels': 0}, {'divisor': 0}):
        with pytest.raises(ValueError):
            FisherPruner(model, gs, **kw)


@pytest.mark.parametrize('delta', ['acts', 'flops'])
def test_step_removes_lowest_importance_per_cost(delta):
    _, _, gs, pruner = _pruner('residual', delta=delta)
    for it in range(6):
        fake_stats(pruner, seed=it)
        score, key, unit = brute_force_choice(pruner)
        recs = pruner.step()
        assert len(recs) == 1
        rec = recs[0]
        assert (rec.key, rec.units) == (key, [unit])
        assert rec.score == pytest.approx(score)
        assert not pruner.masker.keep[key][unit]
        assert rec.channels_left == pruner.kept(key)
        # statistics are cleared after a step
        assert all(not bool(f.any()) for f in pruner.recorder.fisher.values())
        assert all(h == 0 for h in pruner.recorder.hits.values())
    assert len(pruner.history) == 6


def test_cost_normalisation_changes_the_choice():
    _, _, gs, pruner = _pruner('chain')
    # a.0 units cost 64 activations, b.0 units 16: equal Fisher favours removing from a.0
    fake_stats(pruner, values={'a.0': [1.0] * 8, 'b.0': [1.0] * 12})
    assert pruner.select().key == 'a.0'
    fake_stats(pruner, values={'a.0': [5.0] * 8, 'b.0': [1.0] * 12})
    assert pruner.select().key == 'b.0'  # 5/64 > 1/16


def test_step_num_removes_several_and_no_stats_means_no_step():
    _, _, gs, pruner = _pruner('chain')
    fake_stats(pruner, seed=3)
    fisher = {k: v.clone() for k, v in pruner.recorder.fisher.items()}
    costs = unit_costs(gs, pruner.kept, 'acts')
    scores = sorted((float(fisher[k][u]) / costs[k], k, u)
                    for k in fisher for u in range(fisher[k].numel()))
    recs = pruner.step(3)
    assert [(r.key, r.units[0]) for r in recs] == [(k, u) for _, k, u in scores[:3]]
    assert pruner.step(5) == []  # stats were reset: nothing is known, nothing goes


def test_min_channels():
    _, _, gs, pruner = _pruner('chain', min_channels=3)
    for it in range(100):
        fake_stats(pruner, seed=it)
        if not pruner.step():
            break
        assert all(pruner.kept(k) >= 3 for k in pruner.masker.keep)
    assert {k: pruner.kept(k) for k in pruner.masker.keep} == {'a.0': 3, 'b.0': 3}
    assert len(pruner.history) == (8 - 3) + (12 - 3)


def test_a_group_never_loses_its_last_channel():
    _, _, gs, pruner = _pruner('chain')
    for it in range(100):
        fake_stats(pruner, seed=it)
        if not pruner.step():
            break
    assert {k: pruner.kept(k) for k in pruner.masker.keep} == {'a.0': 1, 'b.0': 1}
    with pytest.raises(ValueError, match='last channel'):
        pruner.masker.prune('a.0', int(pruner.masker.kept_units('a.0')[0]))


def _prune_to_the_end(pruner, check):
    for it in range(200):
        fake_stats(pruner, seed=it)
        recs = pruner.step()
        if not recs:
            return
        check(recs[0])
    raise AssertionError('pruning did not stop')


def test_divisor_with_plain_and_block_groups():
    _, _, gs, pruner = _pruner('depthwise', divisor=4)
    assert gs.groups['pw.0'].block == 4 and gs.groups['a.0'].block == 1
    seen = []

    def check(rec):
        seen.append(rec)
        for k in pruner.masker.keep:
            assert pruner.kept(k) % 4 == 0, (k, pruner.kept(k))

    _prune_to_the_end(pruner, check)
    assert {k: pruner.kept(k) for k in pruner.masker.keep} == {'a.0': 4, 'pw.0': 4}
    # a.0 lost 4 channels in one removal; pw.0 lost two blocks of 4, one at a time
    assert sorted((r.key, len(r.units)) for r in seen) == [('a.0', 4), ('pw.0', 1), ('pw.0', 1)]


def test_divisor_rounds_down_to_a_multiple_in_one_step():
    _, _, gs, pruner = _pruner('chain', divisor=8)  # b.0 has 12 channels
    fake_stats(pruner, values={'a.0': [9.0] * 8, 'b.0': [float(i) for i in range(12, 0, -1)]})
    rec = pruner.select()
    assert rec.key == 'b.0' and sorted(rec.units) == [8, 9, 10, 11]  # the 4 lowest
    assert rec.score == pytest.approx((1 + 2 + 3 + 4) / (16 * 4))
    pruner.step()
    assert pruner.kept('b.0') == 8
    fake_stats(pruner)
    assert pruner.select() is None  # 8 - 8 would be 0; a.0 (8) can't lose 8 either


def test_divisor_and_blocks_together():
    _, _, gs, pruner = _pruner('depthwise', divisor=8)
    seen = []
    _prune_to_the_end(pruner, seen.append)
    # a.0 stays at 8; pw.0 (3 blocks of 4) drops one block to reach 8
    assert {k: pruner.kept(k) for k in pruner.masker.keep} == {'a.0': 8, 'pw.0': 8}
    assert [(r.key, len(r.units)) for r in seen] == [('pw.0', 1)]


def test_min_channels_with_blocks():
    _, _, gs, pruner = _pruner('depthwise', min_channels=5)
    _prune_to_the_end(pruner, lambda rec: None)
    # pw.0: blocks of 4, at least 5 channels -> 2 blocks
    assert {k: pruner.kept(k) for k in pruner.masker.keep} == {'a.0': 5, 'pw.0': 8}


@pytest.mark.parametrize('units, block, divisor, min_channels, expected', [
    (12, 1, 1, 1, (1, 1, 1)),  # no divisor: one unit at a time
    (12, 1, 8, 1, (4, 8, 8)),  # down to a multiple of 8 in one removal
    (16, 1, 8, 1, (8, 8, 8)),  # on a multiple already: one whole step
    (3, 4, 8, 1, (1, 2, 2)),  # blocks of 4, divisor 8: steps of 2 units, 12 -> 8 channels
    (3, 6, 4, 1, (1, 2, 2)),  # lcm(4, 6) = 12 channels = 2 units per step: 18 -> 12
    (5, 1, 8, 1, None),  # the step (8) is larger than what is alive
    (8, 1, 8, 1, None),  # one step is all that is left: the floor
    (3, 2, 1, 5, None),  # min_channels 5 in blocks of 2 is 3 units: at the floor
    (4, 2, 1, 5, (1, 1, 3)),  # one unit above it
    (20, 1, 4, 10, (4, 4, 12)),  # the floor is rounded up to whole steps (10 -> 12)
    (12, 1, 4, 10, None),  # at the rounded floor
])
def test_plan_removal(units, block, divisor, min_channels, expected):
    assert plan_removal(units, block, divisor, min_channels) == expected


def test_plan_removal_is_the_pruners_plan():
    """The pruner's plan of every group is :func:`plan_removal` of its alive units, down to
    the floor (a.0: 8 -> 4 channels in one removal; pw.0: blocks of 4, 12 -> 4 channels)."""
    _, _, gs, pruner = _pruner('depthwise', divisor=4, min_channels=3)
    planned = []
    for it in range(10):
        for g in gs.prunable:
            plan = pruner._plan(g.key)
            expected = plan_removal(pruner.kept(g.key) // g.block, g.block, 4, 3)
            assert (plan if plan is None else tuple(plan[1:])) == expected
            if plan is not None:
                assert plan[0].tolist() == pruner.masker.keep[g.key].nonzero().flatten().tolist()
                planned.append((g.key, expected))
        fake_stats(pruner, seed=it)
        if not pruner.step():
            break
    assert sorted(set(planned)) == [('a.0', (4, 4, 4)), ('pw.0', (1, 1, 1))]
    assert {k: pruner.kept(k) for k in pruner.masker.keep} == {'a.0': 4, 'pw.0': 4}


class _Staircase:
    """A latency table whose only answer is ``saved``: the time saved by removing channels
    of one group, from a list indexed by the channels removed; it records what was asked."""

    def __init__(self, saved_by_channels):
        self.by = saved_by_channels
        self.asked = []

    def saved(self, groups, kept, key, channels):
        self.asked.append(channels)
        return self.by[channels]


class _Groups:
    def __init__(self, block):
        self.groups = {'g': type('G', (), {'block': block})()}


def test_look_ahead_grows_a_removal_that_saves_nothing():
    # blocks of 2, 20 units alive, steps of 1 unit: flat until 4 units (8 channels) go
    table = _Staircase([0.0] * 8 + [6.0] * 33)
    k, cost = look_ahead(table, _Groups(2), {'g': 40}.get, 'g', (1, 1, 1), 0.0)
    assert (k, cost) == (4, 6.0 / 4)
    assert table.asked == [4, 6, 8]  # channels, not units: 2, 3, then 4 units


def test_look_ahead_keeps_a_removal_that_saves_time():
    table = _Staircase([])
    assert look_ahead(table, _Groups(1), {'g': 12}.get, 'g', (1, 1, 1), 0.5) == (1, 0.5)
    assert table.asked == []  # never asked


def test_look_ahead_stops_at_the_floor_without_a_saving():
    # 12 units, steps of 2 from 2, floor 6: 4 and 6 units are in reach, 8 would go below
    table = _Staircase([-1.0] * 13)
    k, cost = look_ahead(table, _Groups(1), {'g': 12}.get, 'g', (2, 2, 6), -0.1)
    assert (k, cost) == (6, -1.0 / 6) and table.asked == [4, 6]


def test_look_ahead_stops_after_lookahead_steps():
    units = 4 * LOOKAHEAD
    table = _Staircase([0.0] * (units + 1))
    k, cost = look_ahead(table, _Groups(1), {'g': units}.get, 'g', (1, 1, 1), 0.0)
    assert k == 1 + LOOKAHEAD and cost == 0.0 and len(table.asked) == LOOKAHEAD


def test_remaining_reaches_target_and_matches_compact_model():
    model, x, gs, pruner = _pruner('residual', delta='flops')
    assert pruner.remaining() == {'flops': 1.0, 'acts': 1.0, 'params': 1.0}
    full_flops = count(gs, lambda k: gs.groups[k].channels)['flops']
    history = [pruner.remaining()]
    it = 0
    while pruner.remaining()['flops'] > 0.6:
        fake_stats(pruner, seed=it)
        assert pruner.step()
        history.append(pruner.remaining())
        it += 1
    assert history[-1]['flops'] <= 0.6 < history[-2]['flops']
    for a, b in zip(history, history[1:]):
        assert b['flops'] < a['flops'] and b['params'] < a['params'] and b['acts'] <= a['acts']
    compact = apply_spec(copy.deepcopy(model), make_spec(pruner.masker))
    gs2 = build_groups(compact, lambda m: m(x))
    assert count(gs2, lambda k: gs2.groups[k].channels)['flops'] / full_flops == \
        pytest.approx(history[-1]['flops'])
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in compact.parameters()) / n_params == \
        pytest.approx(history[-1]['params'])


def _train_iter(pruner, model, x):
    rec = pruner.recorder
    rec.begin_iter(x.shape[0])
    loss = sum((o**2).mean() for o in outputs(model(x)))
    loss.backward()
    rec.end_iter()


def test_state_dict_round_trip():
    model, x, gs, pruner = _pruner('residual')
    pruner.recorder.start()
    for _ in range(3):
        _train_iter(pruner, model, x)
        pruner.step()
    _train_iter(pruner, model, x)
    state = copy.deepcopy(pruner.state_dict())
    other = FisherPruner(model, gs)
    other.load_state_dict(state)
    for k in pruner.masker.keep:
        assert torch.equal(other.masker.keep[k], pruner.masker.keep[k])
        assert torch.equal(other.recorder.fisher[k], pruner.recorder.fisher[k])
    assert other.recorder.hits == pruner.recorder.hits
    assert other.recorder.iters == pruner.recorder.iters == 1
    assert other.history == pruner.history and len(other.history) == 3
    assert other.remaining() == pruner.remaining()
    assert other.select() == pruner.select()
    # masks of another model are refused
    _, _, _, chain = _pruner('chain')
    with pytest.raises(ValueError):
        chain.load_state_dict(state)


def test_groups_without_gradient_are_never_selected():
    model, x, gs, pruner = _pruner('shared_head')
    pruner.recorder.start()
    down = gs.producers['down']  # only read by l2, whose level the loss ignores
    for it in range(8):
        rec = pruner.recorder
        rec.begin_iter(x.shape[0])
        (model(x)[0]**2).mean().backward()
        rec.end_iter()
        assert pruner.groups_without_gradient() == [down]
        assert not bool(rec.fisher[down].any())  # zeros: would win if they were ranked
        recs = pruner.step()
        assert recs and recs[0].key != down
    assert pruner.kept(down) == 8


def test_frozen_stem_is_never_selected():
    model, x, gs, pruner = _pruner('chain')
    for p in model.a.parameters():
        p.requires_grad_(False)
    pruner.recorder.start()
    for _ in range(4):
        _train_iter(pruner, model, x)
        assert pruner.groups_without_gradient() == ['a.0']
        assert pruner.step()[0].key == 'b.0'


def test_step_stops_once_until_holds():
    """A bulk step (channels_per_step) must not overshoot the target it is given."""
    _, _, gs, pruner = _pruner('residual')
    full, short = copy.deepcopy(pruner), copy.deepcopy(pruner)
    for p in (pruner, full, short):
        fake_stats(p, seed=5)
    everything = full.step(1000)  # no stop: removes what it can
    target = full.remaining()['flops'] + 0.5 * (1 - full.remaining()['flops'])
    recs = pruner.step(1000, until=lambda: pruner.remaining()['flops'] <= target)
    assert 1 <= len(recs) < len(everything)
    assert pruner.remaining()['flops'] <= target
    # the same removals in the same order, and one fewer would not have reached the target
    assert [(r.key, r.units) for r in recs] == [(r.key, r.units) for r in everything[:len(recs)]]
    short.step(len(recs) - 1)
    assert short.remaining()['flops'] > target
