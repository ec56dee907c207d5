"""Per-group calibration of a latency table (plain data; no timing).

The chain of ``test_core_latency`` with its bilinear table (total 100 us)::

    x (3) -> a: conv 3->8 [a.0] -> b: conv 8->12 [b.0] -> c: conv 12->5 -> out
    t_a = 1.0 * out,  t_b = 0.1 * in * out,  t_c = 0.5 * in     (us)

a.0 alone at 4 of 8 saves 4 (a) + 0.1 * 4 * 12 (b) = 8.8 us by the table; measured 15 (the
table underrates it). b.0 alone at 6 of 12 saves 0.1 * 8 * 6 (b) + 0.5 * 6 (c) = 7.8 us;
measured 5 (overrated).
"""
import pytest

from test_core_latency import chain, chain_table, widths
from mmgfp.core import LatencyTable, LatencyTableError, unit_costs
from mmgfp.core.latency_groups import group_map, shrunk_factor

F_A, F_B = 15 / 8.8, 5 / 7.8


def calibrated(gs, a_ratio=0.85, b_ratio=0.95, se=None):
    d = chain_table()
    groups = {'a.0': {'channels': 8, 'kept': 4, 'ratio': a_ratio},
              'b.0': {'channels': 12, 'kept': 6, 'ratio': b_ratio}}
    if se is not None:
        for g in groups.values():
            g['se'] = se
    d['group_calibration'] = {'groups': groups, 'layers': group_map(gs, ['a.0', 'b.0', 'c'])}
    return d


def test_each_group_alone_is_predicted_as_measured():
    model, gs, _ = chain()
    table = LatencyTable.from_dict(calibrated(gs))
    assert table.group_factors == pytest.approx({'a.0': F_A, 'b.0': F_B})
    assert table.predict(gs, widths(gs, a=4)) == pytest.approx(85.0)
    assert table.predict(gs, widths(gs, b=6)) == pytest.approx(95.0)
    assert table.predict(gs, widths(gs)) == pytest.approx(100.0)
    # both at once: b's input side goes with a's factor, its output side with b's, each the
    # mean of its change before and after the other's: in 8->4 at out 12 -4.8, at out 6
    # -2.4; out 12->6 at in 8 -4.8, at in 4 -2.4. So a -4 f_a; b -3.6 f_a -3.6 f_b; c -3 f_b
    both = 100 - 7.6 * F_A - 6.6 * F_B
    assert table.predict(gs, widths(gs, a=4, b=6)) == pytest.approx(both)
    # a pruning step's saving (the hook's unit costs) goes through the same factors
    assert unit_costs(gs, widths(gs), 'latency', table) == pytest.approx(
        {'a.0': 2.2 * F_A, 'b.0': 1.3 * F_B})
    # below the measured width the factor fades to 1: a.0 at 2 of 8 (measured at 4) has 4 of
    # its 6 lost channels in the measured range; a step from 4 to 3 has none
    f = 1 + (F_A - 1) * 4 / 6
    assert table.predict(gs, widths(gs, a=2)) == pytest.approx(100 - (6 + 7.2) * f)
    assert table.saved(gs, widths(gs, a=4), 'a.0', 1) == pytest.approx(2.2)
    again = LatencyTable.from_dict(table.to_dict())
    assert again.to_dict() == table.to_dict()
    assert again.group_factors == pytest.approx(table.group_factors)


def test_predict_module_uses_the_stored_group_map():
    """A compact sliced by hand (no GroupSet): the factors come from the table's map."""
    model, gs, _ = chain()
    table = LatencyTable.from_dict(calibrated(gs))
    a, b, c = model.a[0], model.b[0], model.c
    model.a[0] = type(a)(a.in_channels, 4, a.kernel_size, padding=a.padding)
    model.b[0] = type(b)(4, 6, b.kernel_size, padding=b.padding)
    model.c = type(c)(6, c.out_channels, c.kernel_size, padding=c.padding)
    assert table.predict_module(model) == pytest.approx(table.predict(gs, widths(gs, a=4, b=6)))
    model.a[0] = type(a)(a.in_channels, 2, a.kernel_size, padding=a.padding)  # below range
    model.b[0] = type(b)(2, 6, b.kernel_size, padding=b.padding)
    assert table.predict_module(model) == pytest.approx(table.predict(gs, widths(gs, a=2, b=6)))


def test_a_table_without_group_calibration_predicts_as_before():
    _, gs, pruner = chain()
    table = pruner.table
    assert table.group_factors == {} and 'group_calibration' not in table.to_dict()
    assert table.predict(gs, widths(gs, a=6, b=9)) == 100 - 7.7  # as by hand, unchanged
    assert unit_costs(gs, widths(gs), 'latency', table) == pytest.approx(
        {'a.0': 2.2, 'b.0': 1.3})


def test_noise_pulls_the_factor_towards_one_and_tiny_savings_are_not_divided():
    _, gs, _ = chain()
    noisy = LatencyTable.from_dict(calibrated(gs, se=0.05)).group_factors
    assert 1 < noisy['a.0'] < F_A and F_B < noisy['b.0'] < 1
    assert shrunk_factor(0.05, 0.0005) == 1.0  # the table predicts almost no saving
    assert shrunk_factor(-0.2, 0.1) == 0.25 and shrunk_factor(2.0, 0.1) == 4.0  # clipped


@pytest.mark.parametrize('change,match', [
    (lambda c: c.pop('layers'), r'`group_calibration` must be .*--calibrate-groups'),
    (lambda c: c['groups']['a.0'].update(kept=8), r"group 'a.0' must be .*kept.*< C"),
    (lambda c: c['groups']['b.0'].update(ratio=-1), r"group 'b.0' must be .*ratio"),
    (lambda c: c['groups']['b.0'].update(se='x'), r"group 'b.0' must be .*se"),
    (lambda c: c['layers'].update(d={'in': [], 'out': []}), r"layer 'd', which the table"),
    (lambda c: c['layers'].update(c={'in': [['b.0', 0]], 'out': []}), r"layer 'c' must be"),
])
def test_malformed_group_calibration_is_refused(change, match):
    _, gs, _ = chain()
    d = calibrated(gs)
    change(d['group_calibration'])
    with pytest.raises(LatencyTableError, match=match):
        LatencyTable.from_dict(d)
