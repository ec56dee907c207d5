"""Measured compacts (``points``) in a latency table: the correction at the operating point.

The chain of ``test_core_latency`` (total 100 us, bilinear times)::

    x (3) -> a: conv 3->8 [a.0] -> b: conv 8->12 [b.0] -> c: conv 12->5 -> out
    t_a = 1.0 * out,  t_b = 0.1 * in * out,  t_c = 0.5 * in     (us)

The compact at a = 4, b = 6 saves 4 (a) + 0.1 * (96 - 24) (b) + 0.5 * 6 (c) = 14.2 us by the
table; it is stored as measured at 0.80 of the model (a saving of 20 us: the table underrates
it by the factor 20 / 14.2).
"""
import pytest

from test_core_latency import chain, chain_table, widths
from test_core_latency_groups import calibrated
from mmgfp.core import LatencyTable, LatencyTableError, unit_costs
from mmgfp.core.latency_points import point_factor

POINT = {'widths': {'a.0': [3, 4], 'b.0': [4, 6], 'c': [6, 5]}, 'ratio': 0.8}
S, P = 0.142, 20 / 14.2


def flat(knots):
    return [x for k in knots for x in k]


def with_points(d, *points):
    return LatencyTable.from_dict({**d, 'points': list(points)})


def test_a_stored_compact_is_predicted_as_measured():
    _, gs, pruner = chain()
    table = with_points(chain_table(), POINT)
    assert flat(table.point_knots) == pytest.approx([0, 1, S, P, 1, 1])
    assert table.predict_widths(POINT['widths']) == pytest.approx(80.0)
    assert table.predict_widths(POINT['widths'], raw=True) == pytest.approx(85.8)
    assert table.predict(gs, widths(gs, a=4, b=6)) == pytest.approx(80.0)
    # near full width the correction fades to 1: a.0 at 7 saves 1 + 1.2 = 2.2 us raw
    s = 0.022
    assert table.predict(gs, widths(gs, a=7)) == pytest.approx(100 * (1 - s * (
        1 + (P - 1) * s / S)))
    assert table.predict(gs, widths(gs)) == pytest.approx(100.0)
    # and beyond the point back to 1 at saving everything (a at 1, b at 1: raw 100 - 7 -
    # 9.5 - 5.5 = 78)
    s = 0.22
    f = P + (1 - P) * (s - S) / (1 - S)
    assert table.predict(gs, widths(gs, a=1, b=1)) == pytest.approx(100 * (1 - s * f))
    # a pruning step's cost is not corrected: the correction never reorders the choice
    assert unit_costs(gs, widths(gs), 'latency', table) == pytest.approx(
        unit_costs(gs, widths(gs), 'latency', pruner.table))
    again = LatencyTable.from_dict(table.to_dict())
    assert again.to_dict() == table.to_dict() and again.point_knots == table.point_knots


def test_a_point_on_top_of_group_factors_is_predicted_as_measured():
    _, gs, _ = chain()
    table = with_points(calibrated(gs), POINT)
    assert table.group_factors  # both corrections at once
    assert table.predict_widths(POINT['widths']) == pytest.approx(80.0)
    assert table.predict(gs, widths(gs, a=4, b=6)) == pytest.approx(80.0)


def test_two_points_and_noise():
    thin = {'widths': {'a.0': [3, 2], 'b.0': [2, 6], 'c': [6, 5]}, 'ratio': 0.7}
    table = with_points(chain_table(), thin, POINT)  # any order; sorted by saving
    # thin: a saves 6, b 0.1 * (96 - 12) = 8.4, c 3: 17.4 us raw, 30 measured
    assert flat(table.point_knots) == pytest.approx([0, 1, S, P, 0.174, 30 / 17.4, 1, 1])
    assert point_factor(table.point_knots, 0.158) == pytest.approx((P + 30 / 17.4) / 2)
    noisy = with_points(chain_table(), {**POINT, 'se': 0.05})
    assert 1 < noisy.point_knots[1][1] < P


def test_a_table_without_points_predicts_as_before():
    _, gs, pruner = chain()
    table = pruner.table
    assert table.points is None and table.point_knots == []
    assert 'points' not in table.to_dict()
    assert table.predict(gs, widths(gs, a=6, b=9)) == 100 - 7.7  # exactly, by hand
    assert with_points(chain_table()).points is None  # an empty list is no point


@pytest.mark.parametrize('points,match', [
    ({'widths': {}}, r'`points` must be \[\{"widths"'),
    ([{'ratio': 0.8}], r'point 0 must be one of'),
    ([{**POINT, 'ratio': 0}], r'point 0 must be one of'),
    ([{**POINT, 'se': -1}], r'point 0 must be one of'),
    ([POINT, {**POINT, 'ratio': True}], r'point 1 must be one of'),
    ([{'widths': {'d': [1, 1]}, 'ratio': 0.8}],
     r"layer 'd', which the table does not time: the compact is of another model"),
    ([{'widths': {'b.0': [8, 13]}, 'ratio': 0.8}],
     r"layer 'b.0' must be \[in, out\] between 1 and its full width \[8, 12\]"),
    ([{'widths': {'b.0': [8]}, 'ratio': 0.8}], r"layer 'b.0' must be \[in, out\]"),
])
def test_malformed_points_are_refused(points, match):
    with pytest.raises(LatencyTableError, match=match):
        with_points(chain_table(), *points) if isinstance(points, list) else \
            LatencyTable.from_dict({**chain_table(), 'points': points})
