"""Add a measured compact to a latency table (the table's ``points``).

:func:`calibrate_on` times a compact model of the table's architecture against the original,
in paired rounds in the table's runtime and on its clock
(:func:`mmgfp.apis.latency.runner.paired_ratio`, as the group calibration does), and
stores the compact's layer widths and the measured ratio as a point; the table then fits a
correction at that operating point (:mod:`mmgfp.core.latency_points`). The loop it serves:
prune to a latency target, add the compact the pruner chose, prune again with the table.

For a table made by the plan runner on a device without OpenMMLab, :func:`write_point`
writes the compact (TorchScript and ONNX, without weights) and its widths as a point file of
the plan; ``runner.py PLAN --table TABLE --add-point POINT --out TABLE2`` times it there
against the plan's model in the table's runtime and appends the point in the same format
(:func:`mmgfp.apis.latency.runner.add_point`).
"""
import copy
import json
import os
import os.path as osp
import tempfile
from typing import Any, Callable, Dict, Optional

import torch.nn as nn

from mmgfp.core import GroupSet, LatencyTable
from mmgfp.core.latency import timed_layers
from mmgfp.core.latency_calib import LatencyTableError, module_widths, origin_warning
from mmgfp.apis.latency.group_calib import _caller
from mmgfp.apis.latency.plan import export_models
from mmgfp.apis.latency.runner import (POINT_FORMAT, Backend, check_plan, device_name,
                                       key_runtime, paired_ratio, plan_id)


def table_backend(table: LatencyTable) -> Backend:
    """The runtime ``table`` was profiled in, from its key."""
    return Backend(**key_runtime(table.key))


def compact_from_spec(model: nn.Module, spec) -> nn.Module:
    """A compact copy of ``model`` sliced by a channel spec (a dict or a JSON path)."""
    from mmgfp.codebases import fix_compact
    from mmgfp.core import apply_spec
    from mmgfp.core.spec import load_spec
    compact = apply_spec(copy.deepcopy(model).eval(), load_spec(spec))
    fix_compact(compact)
    return compact.eval()


def with_point(table: LatencyTable, compact: nn.Module, ratio: float,
               se: Optional[float] = None) -> LatencyTable:
    """A copy of ``table`` holding ``compact``'s widths and its measured ``ratio`` (time over
    the original's) as one more point, the correction fitted.

    Raises:
        LatencyTableError: ``compact`` lacks a layer of the table, or a layer is wider than
            the table was profiled at (a compact of another model).
    """
    widths = module_widths(compact, table.layers)
    point: Dict[str, Any] = {'widths': {n: list(w) for n, w in widths.items()},
                             'ratio': float(ratio)}
    if se is not None:
        point['se'] = float(se)
    return LatencyTable.from_dict({**table.to_dict(),
                                   'points': list(table.points or []) + [point]})


def calibrate_on(table: LatencyTable, model: nn.Module, compact: nn.Module,
                 forward_fn: Callable[[nn.Module], Any], rounds: int = 15, warmup: int = 2,
                 log=print) -> LatencyTable:
    """``table`` with ``compact`` measured against ``model`` (the original, of the table's
    architecture) added as a point (see the module docstring); logs the measured ratio and
    what the table predicted for it before and after.

    Raises:
        LatencyTableError: ``model`` is not the table's model, or ``compact`` does not fit
            the table (:func:`with_point`).
    """
    if table.key.get('model') not in (None, type(model).__name__):
        raise LatencyTableError(f"the latency table is for a {table.key['model']}, but the "
                                f'model is a {type(model).__name__}: give the table profiled '
                                'for this config')
    before = table.predict_module(compact) / table.total_us  # a misfit fails before timing
    run = table_backend(table)
    warning = origin_warning(table.key, {'device': device_name(run.device), **run.key()})
    if warning:  # a point timed elsewhere mixes two machines in one table
        log(warning)
    with tempfile.TemporaryDirectory() as tmp:
        full = _caller(model.eval(), forward_fn, run, tmp, 'full')
        thin = _caller(compact.eval(), forward_fn, run, tmp, 'compact')
        ratio, se = paired_ratio(full, thin, run, rounds, warmup)
    out = with_point(table, compact, ratio, se)
    log(f'[profile_latency] compact measured {ratio:.3f} +- {se:.3f} of the model ({rounds} '
        f'paired rounds, {run.name}, {run.clock} clock); the table predicted {before:.3f}, '
        f'now {out.predict_module(compact) / out.total_us:.3f} '
        f'({len(out.points)} point(s))')
    return out


def write_point(path: str, plan: Dict, model: nn.Module, groups: GroupSet, compact: nn.Module,
                forward_fn: Callable[[nn.Module], Any], weights: bool = False) -> Dict:
    """Write ``compact`` as a point of ``plan`` for ``runner.py --add-point``: ``path`` (JSON:
    the plan it is for, the compact's layer widths as :func:`with_point` stores them) and
    ``<path stem>.compact.pt`` / ``.onnx`` beside it (without weights unless ``weights``).

    Raises:
        LatencyTableError: ``plan`` is not of ``model`` with ``groups`` (another model or
            config), or ``compact`` is wider than it.
    """
    check_plan(plan)
    names, key = timed_layers(groups), plan['key']
    if key.get('model') != type(model).__name__ or set(plan['layers']) != set(names):
        raise LatencyTableError(
            f"the plan is for a {key.get('model')} ({key.get('config')}) timing "
            f"{len(plan['layers'])} layers, but the model is a {type(model).__name__} whose "
            f'groups make {len(names)} timed layers: give the plan exported from this config')
    widths = module_widths(compact, names)
    for name, (cin, cout) in widths.items():
        axes = plan['layers'][name]['axes']
        full = (axes['width'], ) * 2 if 'width' in axes else (axes['in'], axes['out'])
        if cin > full[0] or cout > full[1]:
            raise LatencyTableError(f'the compact\'s layer {name!r} is {[cin, cout]} wide, '
                                    f'wider than the plan\'s {list(full)}: a compact of '
                                    'another model')
    files = export_models({'compact': compact}, forward_fn, osp.splitext(path)[0],
                          weights=weights)
    if files['input_shape'] != plan['models']['input_shape']:
        for tag in ('compact', 'compact_onnx'):  # no stale model files beside a refusal
            stale = osp.join(osp.dirname(path), files[tag])
            if osp.isfile(stale):
                os.remove(stale)
        raise LatencyTableError(f"the compact was exported at input {files['input_shape']}, "
                                f"the plan's model at {plan['models']['input_shape']}: use "
                                "the plan's batch and input size")
    point = {'format': POINT_FORMAT,
             'plan': {'id': plan_id(plan), **{k: key.get(k) for k in ('model', 'config',
                                                                      'batch', 'input_size')}},
             'widths': {n: list(w) for n, w in widths.items()},
             'pt': files['compact'], 'onnx': files['compact_onnx']}
    if not weights:
        point['weightless'] = files['shapes']['compact']
    with open(path, 'w') as f:
        json.dump(point, f, indent=1)
    return point
