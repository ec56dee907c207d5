"""Measured compacts in a latency table: a correction at the operating point.

The group factors (:mod:`mmgfp.core.latency_groups`) make a table predict each group alone;
the half- and quarter-width copies (``calibration``) fit its global shape. Neither sees what
happens when many groups are narrowed at once, as in the compact a latency target chooses:
on ResNet-50 in ONNX Runtime single groups and small sets are predicted within noise while
the compact measures 8% slower than predicted. A table may therefore hold measured compacts::

    "points": [{"widths": {layer: [in, out], ...}, "ratio": 0.54, "se": 0.004}, ...]

``widths``: the compact's layer widths (layers not listed at full width); ``ratio``: its
measured time over the unpruned model's (``se``, optional: that ratio's standard error).

When the table loads, each point gives a factor ``p = measured saving / predicted saving``
(the prediction with every other calibration applied; shrunk towards 1 by ``se`` and clipped
as a group factor is, :func:`~mmgfp.core.latency_groups.shrunk_factor`) at its predicted
saving ``s`` (a share of the model). The correction is a function of how much a model is
predicted to save: piecewise linear in ``s`` through ``(0, 1)``, the points, and ``(1, 1)``;
a prediction that saves ``s`` becomes one that saves ``s * factor(s)``. Why this shape:

- it is 1 near ``s = 0``, where single groups and small sets are already predicted within
  noise, so what the group factors fit stays as it is;
- at each point it is the measured factor, so the table predicts that compact exactly (the
  widths the pruner is about to choose again are the ones whose error is known);
- it scales every candidate's saving at one pruning state alike, so it never changes which
  channels the pruner removes next, only where it stops: the loop "prune, measure, add the
  point, prune again" moves the stop to where the compact measures the target;
- beyond the last point it fades back to 1 at ``s = 1``: nothing is measured there, and the
  half- and quarter-width copies, which lie beyond the usual operating point, keep most of
  their own fit.
"""
import bisect
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .latency_calib import LatencyTableError
from .latency_groups import shrunk_factor

FORM = ('[{"widths": {layer: [in, out], ...}, "ratio": r > 0[, "se": s >= 0]}, ...] '
        '(tools/profile_latency.py --calibrate-on writes them)')


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_points(points, layers: Mapping) -> Optional[List[Dict]]:
    """``points`` as plain, checked data (None or [] stays None).

    Args:
        points: The table's ``points`` (see the module docstring).
        layers (Mapping): The table's layers (name -> entry with ``full_io``).

    Raises:
        LatencyTableError: A malformed point, a layer the table does not time, or a width
            wider than the table was profiled at.
    """
    if not points:
        return None
    if not isinstance(points, list):
        raise LatencyTableError(f'latency table `points` must be {FORM}, but got {points!r}')
    out = []
    for i, pt in enumerate(points):
        ok = isinstance(pt, Mapping) and isinstance(pt.get('widths'), Mapping) and _num(
            pt.get('ratio')) and pt['ratio'] > 0 and _num(pt.get('se', 0.0)) and \
            pt.get('se', 0.0) >= 0
        if not ok:
            raise LatencyTableError(f'latency table point {i} must be one of {FORM}, but got '
                                    f'{pt!r}')
        widths = {}
        for name, w in pt['widths'].items():
            if name not in layers:
                raise LatencyTableError(
                    f'latency table point {i} gives widths for layer {name!r}, which the '
                    f'table does not time: the compact is of another model or config')
            full = layers[name].full_io
            if not (isinstance(w, (list, tuple)) and len(w) == 2 and all(
                    _num(x) and 0 < x <= f for x, f in zip(w, full))):
                raise LatencyTableError(
                    f'latency table point {i}: layer {name!r} must be [in, out] between 1 '
                    f'and its full width {[int(f) for f in full]}, but got {w!r}')
            widths[name] = [float(w[0]), float(w[1])]
        out.append({'widths': widths, 'ratio': float(pt['ratio']),
                    **({'se': float(pt['se'])} if 'se' in pt else {})})
    return out


def fit_points(table, points: Optional[Sequence[Mapping]]) -> List[Tuple[float, float]]:
    """The knots ``(s, factor)`` of the correction (see the module docstring), sorted, ends
    included; [] without points. ``table`` predicts without the correction while fitting."""
    if not points:
        return []
    found: Dict[float, List[float]] = {}
    for pt in points:
        s = 1.0 - table.predict_widths(pt['widths'], raw=True) / table.total_us
        if not 0.0 < s < 1.0:
            continue  # the table predicts no saving (or all): nothing to scale
        f = shrunk_factor(1.0 - pt['ratio'], s, pt.get('se', 0.0))
        found.setdefault(round(s, 9), []).append(f)
    inner = sorted((s, sum(fs) / len(fs)) for s, fs in found.items())
    return [(0.0, 1.0)] + inner + [(1.0, 1.0)] if inner else []


def point_factor(knots: Sequence[Tuple[float, float]], s: float) -> float:
    """The correction's factor at predicted saving ``s`` (1 outside (0, 1))."""
    if not knots or not 0.0 < s < 1.0:
        return 1.0
    i = bisect.bisect_right([k[0] for k in knots], s) - 1
    (s0, f0), (s1, f1) = knots[i], knots[i + 1]
    return f0 + (f1 - f0) * (s - s0) / (s1 - s0)


def corrected(table, t_us: float) -> float:
    """``t_us`` (a prediction of ``table`` without points) with its saving corrected."""
    if not table.point_knots:
        return t_us
    s = 1.0 - t_us / table.total_us
    return table.total_us * (1.0 - s * point_factor(table.point_knots, s))
