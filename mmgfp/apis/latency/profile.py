"""Measure latency on a device: per-layer tables for ``delta='latency'``, whole-model timing.

:func:`profile_latency` times every conv/linear layer that pruning can narrow, as a standalone
block of the same kind (kernel, stride, padding, dilation, groups, bias) followed by the norm
and activation that follow it in the model, at the layer's real input sizes (captured with
forward hooks on one forward pass at the deploy batch and input size; every call of a shared
head is timed and summed), over a grid of channel counts. Each axis starts from ``points``
evenly spaced widths and is refined where linear interpolation misses the measured time by more
than ``tol`` (a step). The output axis is first probed for alignment (does ``w - a`` take
longer than the line between the aligned ``w`` and ``w - 2a``?) and then sampled at aligned
widths only, where ``divisor='auto'`` keeps the pruned model; times are made non-decreasing
in the width (:func:`monotone`), so timing noise never tells the pruner that removing
channels costs time. Spikes at unaligned widths are thus
not in the table: prune with ``divisor='auto'`` (or a multiple of the alignment) to stay off
them. The model and its half- and quarter-width copies are then timed interleaved: the model's
time is the table's total, and the copies' ratios calibrate the remainder (what the layers do
not explain) and the layers' in-model savings (:func:`mmgfp.core.latency_calib.fit_calibration`).

``backend='onnxruntime'`` times every block, the model and the copy in ONNX Runtime (each
exported with ``torch.onnx.export``), with the session settings the deployment uses; each block
in context, without the layout conversions at its graph's edges, and with one CPU thread in
process CPU time (:meth:`mmgfp.apis.latency.runner.Backend.time_block`). The
sampling runs in :mod:`mmgfp.apis.latency.runner`, the file that also turns a plan written
here (:func:`plan_config`) into a table on a device without OpenMMLab. The result is a
:class:`mmgfp.core.LatencyTable` keyed by device, runtime, dtype, memory format, batch, threads
and input size, cached as JSON.
"""
import logging
import os.path as osp
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmgfp.core import GroupSet, LatencyTable, LatencyTableError
from mmgfp.core.latency import config_name, module_widths, timed_layers
from mmgfp.core.latency_calib import load_warning
from mmgfp.apis.latency.group_calib import calibrate_groups as group_calibration
from mmgfp.apis.latency.plan import (LayerCalls, capture_calls, describe_block,  # noqa: F401
                                     export_models, half_width_copy, plan_layers, write_plan)
from mmgfp.apis.latency.runner import (ALIGN_PROBES, Backend, CpuShare,  # noqa: F401
                                       axis_points, calibration, compare_calls, monotone,
                                       probe_align, profile_layers, refine)
from mmgfp.apis.latency.runner import build_block as _build_block
from mmgfp.apis.latency.timing import (check_settings, compare_latency, device_name,
                                       make_key, measure_latency, prepare, threads_set)

__all__ = ['profile_latency', 'profile_config', 'plan_config', 'measure_latency',
           'compare_latency', 'prepare', 'device_name', 'make_key', 'explained']


def build_block(calls: LayerCalls, cin: int, cout: int, depthwise: bool) -> nn.Module:
    """The layer of ``calls`` (with its norm and activation) at ``cin``/``cout`` channels."""
    return _build_block(describe_block(calls), cin, cout, depthwise)


def _cached(out: Optional[str], key: Dict, gs: GroupSet, force: bool, log) -> Optional[
        LatencyTable]:
    if not out or force or not osp.isfile(out):
        return None
    try:
        table = LatencyTable.load(out)
        table.check_key(key)
        table.check_groups(gs)
    except LatencyTableError as e:  # said even without progress: the file is replaced
        print(f'[profile_latency] {out} does not fit ({e}); profiling again and replacing it',
              file=sys.stderr, flush=True)
        return None
    log(f'[profile_latency] reusing {out} (same device and settings; --force to re-measure)')
    return table


def profile_latency(model: nn.Module, forward_fn: Callable[[nn.Module], Any], groups: GroupSet,
                    device: str = 'cpu', dtype: str = 'fp32', channels_last: bool = False,
                    batch: int = 1, threads: Optional[int] = None,
                    input_size: Sequence[int] = (0, 0), config: str = '',
                    points: int = 5, rounds: int = 5, warmup: int = 1, tol: float = 0.1,
                    max_points: int = 9, align: bool = True, out: Optional[str] = None,
                    force: bool = False, progress: bool = True, backend: str = 'torch',
                    providers: Optional[List[str]] = None, opt_level: str = 'all',
                    calibrate_groups: bool = False,
                    group_rounds: Optional[int] = None) -> LatencyTable:
    """Measure a :class:`LatencyTable` of ``model`` on ``device``.

    Args:
        model (nn.Module): The model (moved to ``device``/``dtype`` in place, eval mode).
        forward_fn (callable): ``forward_fn(model)`` runs the deploy forward pass (tensor path)
            at the deploy batch and input size.
        groups (GroupSet): The model's groups (as the pruning hook finds them).
        device (str): ``'cpu'`` or ``'cuda[:N]'``. Defaults to 'cpu'.
        dtype (str): ``'fp32'`` or ``'fp16'``. Defaults to 'fp32'.
        channels_last (bool): Time in channels_last memory format. Defaults to False.
        batch (int): Batch size ``forward_fn`` feeds (for the key). Defaults to 1.
        threads (int, optional): CPU threads while timing. Defaults to torch's setting.
        input_size (Sequence[int]): Input (H, W) of ``forward_fn`` (for the key).
        config (str): Config path or name (for the key). Defaults to ''.
        points (int): Initial widths per prunable axis. Defaults to 5.
        rounds (int): Timed runs per point (median). Defaults to 5.
        warmup (int): Untimed runs per point first. Defaults to 1.
        tol (float): Relative miss of linear interpolation that adds a midpoint, and the
            slow-down that counts as an alignment spike. Defaults to 0.1.
        max_points (int): Widths per axis at most. Defaults to 9.
        align (bool): Probe each layer's output alignment. Defaults to True.
        out (str, optional): Cache file: reused when its key and layers fit, written after
            profiling. Defaults to None.
        force (bool): Profile even if ``out`` fits. Defaults to False.
        progress (bool): Print progress to stderr. Defaults to True.
        backend (str): ``'torch'`` (eager) or ``'onnxruntime'``. Defaults to 'torch'.
        providers (list[str], optional): onnxruntime providers, first preferred. Defaults to
            None (the CPU provider).
        opt_level (str): onnxruntime graph optimisation: 'disable', 'basic', 'extended' or
            'all'. Defaults to 'all'.
        calibrate_groups (bool): Then time each prunable group alone at half width in the
            model and store a factor per group
            (:func:`mmgfp.apis.latency.group_calib.calibrate_groups`); a cached ``out``
            without them gets them added. Defaults to False.
        group_rounds (int, optional): Paired rounds per group. Defaults to None
            (``max(2 * rounds, 11)``).
    """
    check_settings(device, dtype)
    log = (lambda *a, **k: print(*a, file=sys.stderr, flush=True, **k)) if progress else (
        lambda *a, **k: None)
    with threads_set(threads):
        run = Backend(backend, device, dtype, channels_last, torch.get_num_threads(),
                      providers, opt_level)
        key = {**make_key(device, dtype, channels_last, batch, torch.get_num_threads(),
                          input_size, type(model).__name__, config), **run.key()}
        table = _cached(out, key, groups, force, log)
        if table is None:
            prepare(model, device, dtype, channels_last)
            calls = capture_calls(model, forward_fn, timed_layers(groups))
            settings = dict(points=points, rounds=rounds, warmup=warmup, tol=tol,
                            max_points=max_points, align=align)
            with CpuShare(run.threads) as share:
                layers = profile_layers(plan_layers(groups, calls), run, settings, log=log)
                total_us, cal = calibrate(model, forward_fn, groups, run, rounds, warmup, log)
            table = LatencyTable(key, total_us, layers, calibration=cal,
                                 profiled=share.result)
            log(f'[profile_latency] {share.text()}' if share.result else
                '[profile_latency] the load of the CPUs could not be read (no /proc/stat)')
            busy = load_warning(key, share.result)
            if busy:  # said even without progress: the table is suspect
                logging.getLogger('mmgfp').warning(f'profile_latency: {busy}')
        elif not calibrate_groups or table.group_calibration:
            return table
        else:
            log(f'[profile_latency] {out} has no group calibration: adding it')
        if calibrate_groups:
            prepare(model, device, dtype, channels_last)
            table = group_calibration(table, model, forward_fn, groups, run,
                                      group_rounds or max(2 * rounds, 11), warmup + 1, log)
    if out:
        table.save(out)
    return table


def calibrate(model: nn.Module, forward_fn: Callable[[nn.Module], Any], groups: GroupSet,
              run: Backend, rounds: int, warmup: int, log=print) -> Tuple[float, Optional[Dict]]:
    """``(total_us, calibration)``: the model and its half- and quarter-width compact copies
    timed interleaved in ``run``'s runtime; the copies' ratios and widths calibrate the table
    (:func:`mmgfp.core.latency_calib.fit_calibration`). Without a copy (said in the log) the
    model is timed alone and the table has no calibration."""
    rounds = max(2 * rounds, 10)
    try:
        copies = {'thin': half_width_copy(model, groups),
                  'quarter': half_width_copy(model, groups, 0.25)}
        us = time_models({'full': model, **copies}, forward_fn, run, rounds, warmup + 1)
    except Exception as e:  # noqa: BLE001  (an approximation, never a failed profile)
        log(f'[profile_latency] no half-width copy to calibrate the remainder ({type(e).__name__}'
            f': {e}); it is kept fixed')
        return time_models({'full': model}, forward_fn, run, rounds, warmup + 1)['full'], None
    names = timed_layers(groups)
    cal = calibration(us, {k: {n: list(w) for n, w in module_widths(m, names).items()}
                           for k, m in copies.items()})
    log(f'[profile_latency] whole model {us["full"] / 1e3:.2f} ms; half- and quarter-width '
        f'copies {cal["ratio"]:.3f} and {cal["ratio_quarter"]:.3f} of it')
    return us['full'], cal


def time_models(models: Dict[str, nn.Module], forward_fn: Callable[[nn.Module], Any],
                run: Backend, rounds: int, warmup: int) -> Dict[str, float]:
    """Median time (us) of each model, interleaved, in ``run``'s runtime (eager: through
    ``forward_fn``; onnxruntime: each model's call exported)."""
    if run.name == 'torch':
        for m in models.values():
            prepare(m, run.device, run.dtype, run.channels_last)
        ms = compare_latency(models, forward_fn, run.device, rounds, warmup)
        return {k: v * 1e3 for k, v in ms.items()}
    with tempfile.TemporaryDirectory() as tmp:
        files = export_models(models, forward_fn, osp.join(tmp, 'm'), torchscript=False)
        x = torch.randn(files['input_shape'])
        calls = {k: run.file_callable(osp.join(tmp, files[f'{k}_onnx']), x) for k in models}
        return compare_calls(calls, 'cpu', rounds, warmup, run.clock)


def explained(table: LatencyTable) -> float:
    """Fraction of the measured total that the table's layers account for at full width."""
    return table.layers_us / table.total_us


def hook_skip(cfg) -> List[str]:
    """The ``skip`` patterns of the config's FisherPruningHook (the groups it never prunes)."""
    for h in cfg.get('custom_hooks', None) or []:
        if h.get('type') in ('FisherPruningHook', 'mmgfp.FisherPruningHook'):
            skip = h.get('skip', ())
            return [skip] if isinstance(skip, str) else list(skip)
    return []


def config_model(cfg, batch: int = 1, input_size: Sequence[int] = (320, 320),
                 checkpoint: Optional[str] = None, seed: int = 0) -> Tuple:
    """``(model, groups, forward_fn)`` of an mmdet/mmpretrain config: groups found as the
    pruning hook finds them (loss path, training mode, the hook's ``skip``) on a small demo
    batch; ``forward_fn`` runs the tensor path at ``batch`` x ``input_size``."""
    from mmengine.runner import load_checkpoint

    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.inputs import demo_batch, model_groups, prepare_like_training, tensor_forward
    torch.manual_seed(seed)
    model = build_model(cfg, init=checkpoint is None)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    prepare_like_training(model)
    model.train()
    small = (min(input_size[0], 128), min(input_size[1], 128))
    groups = model_groups(model, demo_batch(model, 2, small, seed=seed), skip=hook_skip(cfg))
    return model, groups, tensor_forward(demo_batch(model, batch, input_size, seed=seed))


def profile_config(cfg, config: str, device: str = 'cpu', dtype: str = 'fp32',
                   channels_last: bool = False, batch: int = 1,
                   input_size: Sequence[int] = (320, 320), checkpoint: Optional[str] = None,
                   seed: int = 0, **kwargs) -> Tuple[LatencyTable, GroupSet]:
    """Build the model of an mmdet/mmpretrain config (:func:`config_model`) and
    :func:`profile_latency` it. ``kwargs`` go to :func:`profile_latency`."""
    check_settings(device, dtype)
    model, groups, fwd = config_model(cfg, batch, input_size, checkpoint, seed)
    table = profile_latency(model, fwd, groups, device, dtype, channels_last,
                            batch, input_size=input_size, config=config, **kwargs)
    return table, groups


def plan_config(cfg, config: str, path: str, batch: int = 1,
                input_size: Sequence[int] = (320, 320), checkpoint: Optional[str] = None,
                seed: int = 0, points: int = 5, rounds: int = 5, warmup: int = 1,
                tol: float = 0.1, max_points: int = 9, align: bool = True,
                weights: bool = False, calibrate_groups: bool = False,
                group_rounds: Optional[int] = None, progress: bool = True) -> Dict:
    """Write the latency plan of a config's model to ``path`` (see
    :func:`mmgfp.apis.latency.plan.write_plan`; model files without weights unless
    ``weights``; with each prunable group alone at half width if ``calibrate_groups``) for
    :mod:`mmgfp.apis.latency.runner`."""
    model, groups, fwd = config_model(cfg, batch, input_size, checkpoint, seed)
    key = {'batch': int(batch), 'input_size': [int(s) for s in input_size],
           'model': type(model).__name__, 'config': config_name(config)}
    settings = dict(points=points, rounds=rounds, warmup=warmup, tol=tol,
                    max_points=max_points, align=align)
    log = (lambda *a, **k: print(*a, file=sys.stderr, flush=True, **k)) if progress else None
    return write_plan(path, model.eval(), fwd, groups, key, settings, weights,
                      calibrate_groups, group_rounds, log)
