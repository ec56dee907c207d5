"""Measure what each prunable group alone saves inside the model, for a table's group factors.

:func:`measure_groups` times, for every prunable group, the whole model with that group alone
at half its width (:func:`half_one_group`) against the unpruned model, interleaved, in the
table's runtime (eager or ONNX Runtime, the clock the table was profiled with); each round's
ratio of the two times is kept, and the median ratio and its standard error go into the
table's ``group_calibration`` (:mod:`mmgfp.core.latency_groups`), fitted into one factor per
group when the table loads. ResNet-50 has 37 prunable groups: with ONNX Runtime, one thread and
``rounds=11`` that is 37 exports and 37 x 24 whole-model runs (about 6 minutes here).

For a device without OpenMMLab, :func:`export_groups` writes the same copies into a latency
plan (``--export-plan --calibrate-groups``) with the group map of the plan's layers; the
runner times them with the same paired rounds and writes the same ``group_calibration``
(:func:`mmgfp.apis.latency.runner.time_groups`).
"""
import math
import os.path as osp
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from mmgfp.core import GroupSet, LatencyTable
from mmgfp.core.latency import timed_layers
from mmgfp.core.latency_groups import group_map
from mmgfp.apis.latency.plan import export_models, narrowed
from mmgfp.apis.latency.runner import Backend, group_progress, paired_ratio
from mmgfp.apis.latency.timing import prepare


def aligned_units(units: int, fraction: float = 0.5) -> int:
    """``fraction`` of ``units``, rounded up to a multiple of 8 where there are at least 16
    (the widths a table with alignment samples), at least 1."""
    part = max(1, math.ceil(units * fraction))
    return min(units, -(-part // 8) * 8) if units >= 16 else part


def half_one_group(model: nn.Module, groups: GroupSet, key: str) -> Tuple[nn.Module, int]:
    """``(compact copy, units kept)``: ``model`` with group ``key`` alone at half its units
    (:func:`aligned_units`)."""
    half = aligned_units(groups.groups[key].units)
    return narrowed(model, groups, {key: half}), half


def _caller(model: nn.Module, forward_fn: Callable[[nn.Module], Any], run: Backend,
            folder: str, tag: str) -> Callable[[], Any]:
    """``fn()`` running ``model`` in ``run``'s runtime (onnxruntime: exported to ``folder``)."""
    if run.name == 'torch':
        prepare(model, run.device, run.dtype, run.channels_last)
        return lambda: forward_fn(model)
    files = export_models({tag: model}, forward_fn, osp.join(folder, tag), torchscript=False)
    return run.file_callable(osp.join(folder, files[f'{tag}_onnx']),
                             torch.randn(files['input_shape']))


def measure_groups(model: nn.Module, forward_fn: Callable[[nn.Module], Any], groups: GroupSet,
                   run: Backend, rounds: int = 11, warmup: int = 2,
                   keys: Optional[List[str]] = None, log=print) -> Dict[str, Dict]:
    """Group key -> ``{"channels", "kept", "ratio", "se"}``: each prunable group (or those in
    ``keys``) alone at half width, timed against ``model`` (:func:`paired_ratio`)."""
    todo = [g for g in groups.prunable if keys is None or g.key in keys]
    out, t0 = {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        full = _caller(model.eval(), forward_fn, run, tmp, 'full')
        for i, g in enumerate(todo):
            thin, half = half_one_group(model, groups, g.key)
            ratio, se = paired_ratio(full, _caller(thin, forward_fn, run, tmp, 'thin'), run,
                                     rounds, warmup)
            out[g.key] = {'channels': g.channels, 'kept': half * g.block, 'ratio': ratio,
                          'se': se}
            log(group_progress(i, len(todo), g.key, half * g.block, g.channels, ratio, se,
                               time.perf_counter() - t0))
    return out


def export_groups(model: nn.Module, forward_fn: Callable[[nn.Module], Any], groups: GroupSet,
                  stem: str, rounds: int = 11, warmup: int = 2, weights: bool = False,
                  log=None) -> Dict:
    """The ``groups`` of a plan: what :func:`measure_groups` times, written for the runner
    (:func:`mmgfp.apis.latency.runner.time_groups`).

    Each prunable group's :func:`half_one_group` copy is written as ``{stem}.groupNNN.pt``
    and ``.onnx`` (:func:`export_models`, without weights unless ``weights``). Returns
    ``{"rounds", "warmup", "layers": the group map of the plan's layers, "models": [{"key",
    "channels", "kept", "pt", "onnx"[, "weightless": TorchScript parameter shapes]}]}``.
    """
    out = {'rounds': rounds, 'warmup': warmup,
           'layers': group_map(groups, timed_layers(groups)), 'models': []}
    t0 = time.perf_counter()
    for i, g in enumerate(groups.prunable):
        thin, half = half_one_group(model, groups, g.key)
        tag = f'group{i:03d}'
        files = export_models({tag: thin}, forward_fn, stem, weights=weights)
        entry = {'key': g.key, 'channels': g.channels, 'kept': half * g.block,
                 'pt': files[tag], 'onnx': files[f'{tag}_onnx']}
        if not weights:
            entry['weightless'] = files['shapes'][tag]
        out['models'].append(entry)
        if log:
            log(f'\r[profile_latency] exported {i + 1}/{len(groups.prunable)} groups at half '
                f'width ({time.perf_counter() - t0:.0f} s) ', end='')
    if log:
        log('')
    return out


def with_groups(table: LatencyTable, groups: GroupSet, measured: Dict[str, Dict]) -> \
        LatencyTable:
    """A copy of ``table`` holding ``measured`` (:func:`measure_groups`) and the group map of
    its layers, its group factors fitted."""
    names = [n for n in timed_layers(groups) if n in table.layers]
    cal = {'groups': measured, 'layers': group_map(groups, names)}
    return LatencyTable.from_dict({**table.to_dict(), 'group_calibration': cal})


def calibrate_groups(table: LatencyTable, model: nn.Module,
                     forward_fn: Callable[[nn.Module], Any], groups: GroupSet, run: Backend,
                     rounds: int = 11, warmup: int = 2, log=print) -> LatencyTable:
    """``table`` with every prunable group measured alone in the model (see the module
    docstring) and the factors fitted; logs the factors' spread and the time taken."""
    t0 = time.perf_counter()
    log(f'[profile_latency] calibrating {len(groups.prunable)} groups one by one '
        f'({rounds} rounds each)')
    out = with_groups(table, groups, measure_groups(model, forward_fn, groups, run, rounds,
                                                    warmup, log=log))
    f = sorted(out.group_factors.values()) or [1.0]
    log(f'[profile_latency] group factors {f[0]:.2f} to {f[-1]:.2f} (median '
        f'{statistics.median(f):.2f}) in {time.perf_counter() - t0:.0f} s')
    return out
