"""Predicted and measured latency of a compact model next to its original, on this device.

Used by ``tools/deploy_pruned.py --measure`` (the deployed compact model against the model the
checkpoint was trained from) and ``tools/check_model.py --latency`` (a model pruned at random).
The original and the compact model are timed interleaved in one process
(:func:`mmgfp.apis.latency.timing.compare_latency`); with a latency table
(``tools/profile_latency.py``)
the table's prediction for both is shown beside the measurement, and the settings (dtype, memory
format, batch, input size, threads, runtime) default to the table's so that the two are
comparable. ``backend='onnxruntime'`` exports both models' tensor path
(:func:`mmgfp.apis.deploying.onnx_export.export_onnx`) and times them in ONNX Runtime. When the
table was measured on another machine or runtime than the timing, the report says so.
"""
import copy
import logging
import os.path as osp
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from mmgfp.core import GroupSet, LatencyTable
from mmgfp.core.latency import load_table
from mmgfp.core.latency_calib import timing_warnings
from mmgfp.core.spec import from_ranges, validate
from mmgfp.apis.latency.runner import Backend, CpuShare, compare_calls
from mmgfp.apis.latency.timing import compare_latency, device_name, prepare

DET_SIZE, CLS_SIZE = (320, 320), (224, 224)


def kept_from_spec(gs: GroupSet, spec: Dict) -> Callable[[str], int]:
    """Group key -> channels the spec keeps (the full width for groups it does not list)."""
    groups = validate(spec).get('groups', {})
    kept = {}
    for key, g in gs.groups.items():
        entry = groups.get(key)
        kept[key] = (len(from_ranges(entry['kept'], g.channels, f'group {key}'))
                     if entry else g.channels)
    return kept.__getitem__


def settings(model: nn.Module, table: Optional[LatencyTable], device: str,
             batch: Optional[int], input_size: Optional[Sequence[int]],
             threads: Optional[int], backend: Optional[str] = None) -> Dict:
    """Measurement settings: the table's where one is given (what is asked must agree with
    it; the runtime may differ, with a warning in the report), else what is asked, else batch
    1 at 320x320 (detectors) or 224x224 (classifiers), in eager PyTorch."""
    asked = {'batch': batch, 'input_size': list(input_size) if input_size else None,
             'threads': threads}
    asked = {k: v for k, v in asked.items() if v is not None}
    if table is None:
        family = type(model).__module__.split('.')[0]
        return {'device': device, 'dtype': 'fp32', 'channels_last': False, 'batch': 1,
                'input_size': list(CLS_SIZE if family == 'mmpretrain' else DET_SIZE),
                'threads': None, 'backend': backend or 'torch', **asked}
    table.check_key(asked)
    key = table.key
    return {'device': device, 'dtype': key.get('dtype', 'fp32'),
            'channels_last': bool(key.get('channels_last', False)), 'batch': int(key['batch']),
            'input_size': list(key['input_size']), 'threads': key.get('threads'),
            'backend': backend or key.get('backend', 'torch')}


def runtime(opts: Dict) -> Backend:
    """The runtime the models are timed in."""
    ort = opts['backend'] == 'onnxruntime'
    return Backend(opts['backend'], opts['device'], 'fp32' if ort else opts['dtype'],
                   False if ort else opts['channels_last'], opts['threads'])


def here(opts: Dict) -> Dict:
    """The machine and runtime of this timing, as a table key names them."""
    return {'device': device_name(opts['device']), **runtime(opts).key()}


def time_onnxruntime(models: Dict[str, nn.Module], opts: Dict, rounds: int,
                     warmup: int, clock: Optional[str] = None) -> Dict[str, float]:
    """Median time (ms) of each model's tensor path exported to ONNX (fixed batch) and run in
    ONNX Runtime with the settings' threads, interleaved; ``clock`` 'wall' or 'cpu' (see
    :class:`~mmgfp.apis.latency.runner.Backend`; default: the runtime's)."""
    from mmgfp.apis.deploying.onnx_export import export_onnx
    run = runtime(opts)
    x = torch.randn(opts['batch'], 3, *opts['input_size'])
    with tempfile.TemporaryDirectory() as tmp:
        calls = {}
        for name, m in models.items():
            path = osp.join(tmp, f'{name}.onnx')
            export_onnx(m.eval(), path, opts['input_size'], opts['batch'], opset=17,
                        exporter='torchscript', dynamic_batch=False, logger=lambda msg: None)
            calls[name] = run.file_callable(path, x)
        us = compare_calls(calls, 'cpu', rounds, warmup, clock or run.clock)
    return {k: v / 1e3 for k, v in us.items()}


def latency_rows(models: Dict[str, nn.Module], forward_fn: Callable[[nn.Module], object],
                 groups: GroupSet, kept: Dict[str, Callable[[str], int]],
                 table: Optional[LatencyTable], opts: Dict, rounds: int = 10,
                 warmup: int = 2) -> List[Dict]:
    """Measured (and, with a table, predicted) latency of each model; the first is the
    reference of the ratios. ``kept`` maps a model's name to its channels per group."""
    if opts.get('backend', 'torch') == 'onnxruntime':
        ms = time_onnxruntime(models, opts, rounds, warmup)
    else:
        for m in models.values():
            prepare(m, opts['device'], opts['dtype'], opts['channels_last'])
        ms = compare_latency(models, forward_fn, opts['device'], rounds, warmup,
                             opts['threads'])
    base = next(iter(models))
    rows = []
    for name in models:
        row = {'model': name, 'measured_ms': ms[name], 'measured_ratio': ms[name] / ms[base]}
        if table is not None:
            pred = table.predict(groups, kept[name]) / 1e3
            row.update(predicted_ms=pred)
        rows.append(row)
    if table is not None:
        for row in rows:
            row['predicted_ratio'] = row['predicted_ms'] / rows[0]['predicted_ms']
            row['ratio_error'] = row['predicted_ratio'] / row['measured_ratio'] - 1
    return rows


def format_rows(rows: List[Dict], opts: Dict, table: Optional[LatencyTable],
                rounds: int, warnings: Sequence[str] = ()) -> str:
    """A readable report: settings, the ``warnings`` of the timing
    (:func:`mmgfp.core.latency_calib.timing_warnings`), then one line per model."""
    where = here(opts)
    lines = [f"latency on {where['device']} in {where['backend']} {where['backend_version']} ("
             f"{opts['dtype']}{', channels_last' if opts['channels_last'] else ''}"
             f", batch {opts['batch']}, {opts['input_size'][0]}x{opts['input_size'][1]}, "
             f"{opts['threads'] or 'default'} threads; median of {rounds} interleaved rounds)"]
    lines += list(warnings)
    for r in rows:
        line = f"  {r['model']:>8}: measured {r['measured_ms']:.2f} ms ({r['measured_ratio']:.3f})"
        if 'predicted_ms' in r:
            line += (f", predicted {r['predicted_ms']:.2f} ms ({r['predicted_ratio']:.3f}), "
                     f"ratio error {r['ratio_error']:+.1%}")
        lines.append(line)
    if table is None:
        lines.append('  (no --latency-table: measured only; make one with '
                     'tools/profile_latency.py to see the prediction)')
    return '\n'.join(lines)


def _groups(model: nn.Module, cfg, seed: int) -> GroupSet:
    """The model's groups as the pruning hook finds them (loss path, train mode, its skip)."""
    from mmgfp.apis.inputs import demo_batch, model_groups
    from mmgfp.apis.latency.profile import hook_skip
    model.train()
    gs = model_groups(model, demo_batch(model, 2, (128, 128), seed=seed), skip=hook_skip(cfg))
    model.eval()
    return gs


def measure_pair(cfg, original: nn.Module, compact: nn.Module, spec: Dict,
                 table=None, device: str = 'cpu', batch: Optional[int] = None,
                 input_size: Optional[Sequence[int]] = None, threads: Optional[int] = None,
                 rounds: int = 10, seed: int = 0, backend: Optional[str] = None) -> Dict:
    """Latency report of ``compact`` (``original`` pruned to ``spec``) next to ``original``.

    ``backend`` (``'torch'`` or ``'onnxruntime'``) defaults to the table's runtime, else torch.

    Returns:
        dict: ``rows`` (see :func:`latency_rows`), ``settings``, ``text`` (printable),
        ``table_key`` (None without a table) and ``warning`` (the table's origin differs from
        this timing's; '' when not).
    """
    from mmgfp.apis.inputs import demo_batch, tensor_forward
    table = load_table(table)
    opts = settings(original, table, device, batch, input_size, threads, backend)
    gs = _groups(copy.deepcopy(original), cfg, seed)
    if table is not None:
        table.check_groups(gs)
    full = {k: g.channels for k, g in gs.groups.items()}.__getitem__
    data = demo_batch(original, opts['batch'], opts['input_size'], seed=seed)
    with CpuShare(opts['threads']) as share:
        rows = latency_rows({'original': original, 'compact': compact}, tensor_forward(data),
                            gs, {'original': full, 'compact': kept_from_spec(gs, spec)}, table,
                            opts, rounds)
    said = timing_warnings(table, here(opts), share.result)
    warning = ' '.join(said)
    if warning:
        logging.getLogger('mmgfp').warning(warning)
    return {'rows': rows, 'settings': opts, 'profiled': share.result,
            'text': format_rows(rows, opts, table, rounds, said),
            'table_key': table.key if table is not None else None, 'warning': warning}


def deployed_latency(config: str, checkpoint: str, written: Dict[str, str], table=None,
                     **kwargs) -> Dict:
    """:func:`measure_pair` for what :func:`mmgfp.apis.deploying.deploy.deploy` wrote: the compact
    model its config builds (with ``compact.pth``) against the model of ``config`` with the
    checkpoint's weights. ``kwargs`` go to :func:`measure_pair`."""
    from mmengine.config import Config

    from mmgfp.core import load_spec
    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.deploying.deploy import load_strict, read_checkpoint
    cfg = Config.fromfile(config)
    original = build_model(cfg, init=False)
    ckpt = read_checkpoint(checkpoint)
    load_strict(original, ckpt.get('state_dict', ckpt), f'checkpoint {checkpoint}')
    compact = build_model(Config.fromfile(written['config']), init=False)
    state = read_checkpoint(written['checkpoint'])
    load_strict(compact, state.get('state_dict', state), written['checkpoint'])
    return measure_pair(cfg, original.eval(), compact.eval(), load_spec(written['spec']),
                        table, **kwargs)


def random_compact_latency(cfg, ratio: float = 0.5, seed: int = 0, table=None,
                           **kwargs) -> Dict:
    """:func:`measure_pair` for the model of ``cfg`` with a random ``ratio`` of every prunable
    group removed (as ``check_model`` prunes it), against the unpruned model."""
    from mmgfp.core import FisherPruner, apply_spec, make_spec
    from mmgfp.apis.checking.check import analyze, random_masks, randomize_norms
    found = analyze(cfg, batch_size=2, seed=seed)
    model = found['model']
    randomize_norms(model, seed)
    pruner = FisherPruner(model, found['groups'])
    random_masks(pruner, ratio, seed)
    spec = make_spec(pruner.masker)
    compact = apply_spec(copy.deepcopy(model), spec)
    return measure_pair(cfg, model.eval(), compact.eval(), spec, table, seed=seed, **kwargs)
