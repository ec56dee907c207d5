"""Where a latency table may be trusted, and how its remainder is calibrated.

Both are plain data about a :class:`mmgfp.core.latency.LatencyTable`:

- :func:`origin_notes` compares the machine and runtime a table was measured on (its key's
  ``device``, ``backend``, ``backend_version``, ``provider``) with where a model is now timed
  or predicted, and says what differs: a compact chosen for one CPU model or runtime can lose
  part of its gain on another, so a prediction from a foreign table is a guess.
  :func:`load_warning` says when a CPU table was timed while other processes shared its cores;
  :func:`timing_warnings` gathers both for a measurement.
- :func:`fit_calibration` turns measured ratios (a half-width and a quarter-width copy of the
  model against the model, timed interleaved) into the two numbers that shape the prediction
  of any width: the share of the remainder that shrinks with the layers' output elements
  (``scaled_remainder``), and a scale of the layer entries' savings (``layer_scale``: blocks
  timed standalone save more or less than the same layers in the model, as on depth-wise
  networks whose cheap layers are memory-bound, or on a loaded machine whose whole-model runs
  are preempted where short blocks are not).
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch.nn as nn

from .grouping import layer_info

ORIGIN_FIELDS = ('device', 'backend', 'backend_version', 'provider')
SCALE_RANGE = (0.25, 4.0)
LOAD_SLACK = 0.25  # CPUs others may take beyond the free ones (load_warning)
PROFILE_HINT = 'profile the deployed model with tools/profile_latency.py'


class LatencyTableError(ValueError):
    """A latency table that is malformed or does not describe the model it is used for."""


def origin(key: Mapping) -> Dict:
    """The machine and runtime of a table key; keys written before the runtime was recorded
    (no ``backend``) are PyTorch eager tables."""
    backend = key.get('backend', 'torch')
    version = key.get('backend_version', key.get('torch') if backend == 'torch' else None)
    return {'device': key.get('device'), 'backend': backend, 'backend_version': version,
            'provider': key.get('provider')}


def origin_notes(key: Mapping, here: Mapping) -> List[str]:
    """One line per origin field of ``here`` that differs from the table's ``key``."""
    mine = origin(key)
    notes = []
    for field in ORIGIN_FIELDS:
        if here.get(field) is not None and mine[field] != here[field]:
            notes.append(f'{field}: table {mine[field]!r}, here {here[field]!r}')
    return notes


def origin_warning(key: Mapping, here: Mapping) -> str:
    """A warning sentence when the table comes from another machine or runtime, else ''."""
    notes = origin_notes(key, here)
    if not notes:
        return ''
    return ('warning: the latency table was measured on another machine or runtime ('
            + '; '.join(notes) + '): its prediction describes that one, and a compact chosen '
            'with it can lose part of its gain here; profile here (tools/profile_latency.py, '
            'or --export-plan and the runner on the deploy device) to trust it')


def load_warning(key: Mapping, profiled: Optional[Mapping],
                 what: str = 'the latency table was') -> str:
    """A warning sentence when a CPU table was timed while other processes kept its cores
    busy (its ``profiled``, written by the profiler), else ''. ``what`` names what was
    timed (``profiled`` of a measurement: :class:`mmgfp.apis.latency.runner.CpuShare`).

    Contended means the others took more than the CPUs the table's threads left free, by over
    ``LOAD_SLACK`` of a CPU: a one-thread table on 2 unpinned cores warns above 1.25 CPUs of
    others, one pinned to a single core above 0.25. GPU tables are not judged, nor those
    timed on the process's CPU clock (``clock: 'cpu'``, ONNX Runtime with one thread), which
    does not count the others' time slices.
    """
    if (not profiled or str(key.get('device', '')).startswith('cuda')
            or key.get('clock') == 'cpu'):
        return ''
    try:
        others, cpus = float(profiled['other_cpus']), int(profiled['cpus'])
        threads = int(profiled.get('threads') or key.get('threads') or 1)
    except (KeyError, TypeError, ValueError):
        return ''
    if others <= max(0, cpus - threads) + LOAD_SLACK:
        return ''
    return (f'warning: {what} timed while other processes kept {others:.2f} of the {cpus} '
            f'CPU(s) it could run on busy ({threads} thread(s)): the runs were preempted, so '
            'absolute times, and on depth-wise networks the ratios, can be several points '
            'off; time again on an idle machine or a core of its own (taskset -c N)')


def timing_warnings(table, here: Mapping, profiled: Optional[Mapping] = None) -> List[str]:
    """The warnings of a timing at ``here`` (a key's origin fields) against ``table`` (a
    :class:`~mmgfp.core.latency.LatencyTable` or None): the table comes from another machine
    or runtime, it was profiled under load, and this timing itself ran under load
    (``profiled`` of the timing)."""
    out = [origin_warning(table.key, here), load_warning(table.key, table.profiled)] if \
        table is not None else []
    out.append(load_warning(here, profiled, 'these figures were'))
    return [w for w in out if w]


def _equation(table, widths: Mapping[str, Sequence[float]], ratio: float):
    """``(want, d_layers, d_rem)``: a copy at ``widths`` that measured ``ratio`` of the model
    asks ``want = scale * d_layers + share * d_rem`` (us)."""
    us, out = table.sums_at(widths)
    d_frac = (out - table.out_full) / table.out_full if table.out_full else 0.0
    return ((ratio - 1.0) * table.total_us, us - table.layers_us, table.remainder_us * d_frac)


def fit_calibration(table, thin: Mapping[str, Sequence[float]], ratio: float,
                    quarter: Optional[Mapping[str, Sequence[float]]] = None,
                    ratio_quarter: Optional[float] = None) -> Tuple[float, float]:
    """``(scaled_remainder, layer_scale)`` with which ``table`` predicts the measured ratios
    (time of a thinner copy over the model's) of the copies whose layers have widths ``thin``
    (and ``quarter``; name -> (in, out)).

    With two copies both numbers are solved together (layer times fall about with the square
    of the width, output elements linearly, so the two copies tell them apart); the share is
    kept in [0, 1] and the scale then fitted to both copies by least squares, in
    ``SCALE_RANGE``. With one copy the share is solved with the layers as measured (scale 1)
    and what it cannot explain goes to the scale: below 1 when the copy is slower than even a
    fixed remainder allows, above 1 when it is faster than a fully scaling remainder allows or
    the layers explain the whole time and leave no remainder to scale.
    """
    rows = [_equation(table, thin, ratio)]
    if quarter is not None and ratio_quarter is not None:
        rows.append(_equation(table, quarter, ratio_quarter))
    share = None
    if len(rows) == 2:
        (w1, a1, b1), (w2, a2, b2) = rows
        det = a1 * b2 - a2 * b1
        if abs(det) > 1e-6 * (abs(a1 * b2) + abs(a2 * b1)) and det:
            share = min(max((a1 * w2 - a2 * w1) / det, 0.0), 1.0)
    if share is None:
        want, d_layers, d_rem = rows[0]
        share = min(max((want - d_layers) / d_rem, 0.0), 1.0) if d_rem < 0 else 0.0
    num = sum(a * (w - share * b) for w, a, b in rows)
    den = sum(a * a for _, a, _ in rows)
    scale = num / den if den else 1.0
    return share, min(max(scale, SCALE_RANGE[0]), SCALE_RANGE[1])


def resolve_shape(table, share: Optional[float], scale: Optional[float]) -> Tuple[float, float]:
    """``(scaled_remainder, layer_scale)`` of ``table``: as given, else fitted from its
    ``calibration``, else (0, 1); checked."""
    if table.calibration and (share is None or scale is None):
        cal = table.calibration
        fit = fit_calibration(table, cal['thin'], cal['ratio'], cal.get('quarter'),
                              cal.get('ratio_quarter'))
        share = fit[0] if share is None else share
        scale = fit[1] if scale is None else scale
    share = 0.0 if share is None else share
    scale = 1.0 if scale is None else scale
    if not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise LatencyTableError(f'latency table `scaled_remainder` must lie in [0, 1], but '
                                f'got {share!r}')
    if not isinstance(scale, (int, float)) or not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        raise LatencyTableError(f'latency table `layer_scale` must lie in {SCALE_RANGE}, but '
                                f'got {scale!r}')
    return float(share), float(scale)


def module_widths(model: nn.Module, names) -> Dict[str, Tuple[int, int]]:
    """Layer name -> (in, out) channels of ``model``'s conv/linear modules ``names``.

    Raises:
        LatencyTableError: A name is missing from ``model`` or is no conv or linear layer.
    """
    mods = dict(model.named_modules())
    out = {}
    for name in names:
        info = layer_info(mods[name]) if name in mods else None
        if info is None:
            raise LatencyTableError(
                f'the latency table times module {name!r}, but the model has '
                f'{"no such module" if name not in mods else type(mods[name]).__name__}: '
                f'the table is for another model or config; {PROFILE_HINT}')
        out[name] = (info.in_channels, info.out_channels)
    return out


def _check_calibration(cal) -> Optional[Dict]:
    if cal is None:
        return None

    def widths_ok(w):
        return isinstance(w, Mapping) and all(
            isinstance(v, (list, tuple)) and len(v) == 2 for v in w.values())

    def ratio_ok(r):
        return isinstance(r, (int, float)) and r > 0

    ok = (isinstance(cal, Mapping) and ratio_ok(cal.get('ratio')) and widths_ok(cal.get('thin'))
          and ('quarter' not in cal or (widths_ok(cal['quarter'])
                                        and ratio_ok(cal.get('ratio_quarter')))))
    if not ok:
        raise LatencyTableError(f'latency table `calibration` must be {{"ratio": a positive '
                                f'number, "thin": {{layer: [in, out]}}}} (and optionally '
                                f'"ratio_quarter", "quarter" alike), but got {cal!r}')
    out = {'ratio': float(cal['ratio']),
           'thin': {n: [float(w[0]), float(w[1])] for n, w in cal['thin'].items()}}
    if 'quarter' in cal:
        out['ratio_quarter'] = float(cal['ratio_quarter'])
        out['quarter'] = {n: [float(w[0]), float(w[1])] for n, w in cal['quarter'].items()}
    return out


def _check_axis(name: str, axis: str, pts) -> List[float]:
    if not isinstance(pts, list) or not pts or any(
            not isinstance(p, (int, float)) or p <= 0 for p in pts):
        raise LatencyTableError(f'latency table layer {name!r}: {axis!r} must be a non-empty '
                                f'list of positive channel counts, but got {pts!r}')
    if any(b <= a for a, b in zip(pts, pts[1:])):
        raise LatencyTableError(f'latency table layer {name!r}: {axis!r} must be strictly '
                                f'increasing, but got {pts!r}')
    return [float(p) for p in pts]
