"""Where a latency table may be trusted, and how its remainder is calibrated.

Both are plain data about a :class:`mmgfp.core.latency.LatencyTable`:

- :func:`origin_notes` compares the machine and runtime a table was measured on (its key's
  ``device``, ``backend``, ``backend_version``, ``provider``) with where a model is now timed
  or predicted, and says what differs: a compact chosen for one CPU model or runtime can lose
  part of its gain on another, so a prediction from a foreign table is a guess.
- :func:`fit_calibration` turns one measured ratio (a half-width copy of the model against the
  model, timed interleaved) into the two numbers that shape the prediction of any width: the
  share of the remainder that shrinks with the layers' output elements (``scaled_remainder``),
  and, where that share alone cannot explain the ratio, a scale of the layer entries' savings
  (``layer_scale``: standalone blocks save more or less than the same layers in the model, as
  on depth-wise networks whose cheap layers are memory-bound).
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch.nn as nn

from .grouping import layer_info

ORIGIN_FIELDS = ('device', 'backend', 'backend_version', 'provider')
SCALE_RANGE = (0.5, 2.0)
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


def fit_calibration(table, thin: Mapping[str, Sequence[float]], ratio: float
                    ) -> Tuple[float, float]:
    """``(scaled_remainder, layer_scale)`` with which ``table`` predicts ``ratio`` (measured
    time of a thinner copy over the model's) for the copy whose layers have widths ``thin``
    (name -> (in, out)).

    The scaled share is solved first with the layer entries as measured (scale 1) and kept in
    [0, 1]; what it cannot explain goes to the layer scale (in ``SCALE_RANGE``): below 1 when
    the copy is slower than even a fixed remainder allows (the layers save less in the model
    than standalone), above 1 when it is faster than a fully scaling remainder allows, or when
    the layers explain the whole measured time and leave no remainder to scale.
    """
    us, out = table.sums_at(thin)
    d_layers = us - table.layers_us
    d_frac = (out - table.out_full) / table.out_full if table.out_full else 0.0
    want = (ratio - 1.0) * table.total_us  # the change of the total the copy measures
    rem = table.remainder_us
    share = 0.0
    if rem > 0 and d_frac < 0:
        share = min(max((want - d_layers) / (rem * d_frac), 0.0), 1.0)
    scale = 1.0
    if d_layers < 0:
        scale = (want - share * rem * d_frac) / d_layers
        scale = min(max(scale, SCALE_RANGE[0]), SCALE_RANGE[1])
    return share, scale


def resolve_shape(table, share: Optional[float], scale: Optional[float]) -> Tuple[float, float]:
    """``(scaled_remainder, layer_scale)`` of ``table``: as given, else fitted from its
    ``calibration``, else (0, 1); checked."""
    if table.calibration and (share is None or scale is None):
        fit = fit_calibration(table, table.calibration['thin'], table.calibration['ratio'])
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
    ok = (isinstance(cal, Mapping) and isinstance(cal.get('ratio'), (int, float))
          and cal['ratio'] > 0 and isinstance(cal.get('thin'), Mapping) and all(
              isinstance(w, (list, tuple)) and len(w) == 2 for w in cal['thin'].values()))
    if not ok:
        raise LatencyTableError(f'latency table `calibration` must be {{"ratio": a positive '
                                f'number, "thin": {{layer: [in, out]}}}}, but got {cal!r}')
    return {'ratio': float(cal['ratio']),
            'thin': {n: [float(w[0]), float(w[1])] for n, w in cal['thin'].items()}}
