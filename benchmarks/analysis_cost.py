"""Time and peak memory of the dependency analysis: mmgfp's grouping vs Torch-Pruning's graph.

Run from the repository root (Torch-Pruning 1.6.1 must be installed in the venv)::

    .venv/bin/python benchmarks/analysis_cost.py              # both models, about 5-8 minutes
    .venv/bin/python benchmarks/analysis_cost.py --models retinanet_r50 --no-tracemalloc \\
        --json analysis.json

What is measured, on randomly initialised RetinaNet-R50 and Mask R-CNN-R50 (demo batch of
random images, default 2 x 128x128):

* ``mmgfp (loss path)``: ``build_groups(model, loss_forward(batch))`` in train mode: what
  FisherPruningHook does on the first training iteration (preprocessor, loss forward with the
  targets, all under mmgfp's tracer);
* ``mmgfp (tensor path)``: ``build_groups(model, tensor_forward(batch))`` in eval mode (the
  raw network outputs, as for evaluation-only use);
* ``torch-pruning``: ``tp.DependencyGraph().build_dependency(wrapper, example_inputs=x)`` where
  ``x`` is the preprocessed image tensor and ``wrapper.forward(x)`` returns
  ``detector._forward(x, data_samples)`` (the tensor path; Torch-Pruning needs a plain tensor
  forward). Failures are recorded in the table, not raised.

Every measurement runs in a fresh subprocess (``--worker``): the model is built and the batch
made, then the resident set size is read and the kernel's peak-RSS mark reset
(``/proc/self/clear_refs``); the analysis then runs ``--repeats`` times. Reported: the median
and the first wall time, the peak RSS above that baseline, and, in a second subprocess, the peak
of Python-level allocations (``tracemalloc``; excludes tensor storage, and slows the run, so it
is not timed).
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn as nn

import _common as C

MODELS = ['retinanet_r50', 'mask_rcnn_r50']
METHODS = ['mmgfp-loss', 'mmgfp-tensor', 'torch-pruning']
LABELS = {'mmgfp-loss': 'mmgfp build_groups (loss path)',
          'mmgfp-tensor': 'mmgfp build_groups (tensor path)',
          'torch-pruning': 'Torch-Pruning DependencyGraph'}


# --------------------------------------------------------------------------------- worker
def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes (VmRSS, VmHWM)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _analysis(method, model, batch):
    from mmgfp.apis.inputs import loss_forward, tensor_forward
    from mmgfp.core import build_groups
    if method == 'mmgfp-loss':
        model.train()
        return (lambda: build_groups(model, loss_forward(batch))), _describe_groups
    if method == 'mmgfp-tensor':
        model.eval()
        return (lambda: build_groups(model, tensor_forward(batch))), _describe_groups
    import torch_pruning as tp
    model.eval()
    data = model.data_preprocessor(batch, False)
    wrapper = C.TensorPath(model, data['data_samples'])
    x = data['inputs']

    def run():
        return tp.DependencyGraph().build_dependency(wrapper, example_inputs=x, verbose=False)

    def describe(dg):
        groups = list(dg.get_all_groups(root_module_types=[nn.modules.conv._ConvNd,
                                                           nn.Linear]))
        seen = sum(1 for m in dg.module2node if isinstance(m, LAYER_TYPES))
        return f'{len(groups)} groups (conv/linear roots)', seen

    return run, describe


def _describe_groups(gs):
    return gs.summary(), len(gs.layers)


LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    C.quiet_logs()
    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.inputs import demo_batch
    out = {'model': args.model, 'method': args.method}
    torch.manual_seed(0)
    model = build_model(C.load_config(args.model))
    batch = demo_batch(model, args.batch, (args.size, args.size), seed=0)
    if args.method == 'torch-pruning':
        import torch_pruning  # noqa: F401  (import cost is not part of the analysis)
    run, describe = _analysis(args.method, model, batch)
    gc.collect()
    out['baseline_rss_mb'] = _status('VmRSS') / 2**20
    out['peak_reset'] = _reset_peak()
    base_hwm = _status('VmHWM')
    if args.tracemalloc:
        import tracemalloc
        tracemalloc.start()
    times = []
    try:
        for i in range(1 if args.tracemalloc else args.repeats):
            t0 = time.perf_counter()
            res = run()
            times.append(time.perf_counter() - t0)
            if i == 0:
                out['found'], seen = describe(res)
                total = sum(1 for m in model.modules() if isinstance(m, LAYER_TYPES))
                out['layers_seen'] = f'{seen}/{total}'
            del res
            gc.collect()
    except Exception as e:  # noqa: BLE001  (reported in the table)
        msg = str(e).strip().splitlines()
        out['error'] = f'{type(e).__name__}: {msg[0] if msg else ""}'[:300]
    if args.tracemalloc:
        import tracemalloc
        out['py_peak_mb'] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    else:
        out['times_s'] = times
        peak = _status('VmHWM')
        if out['peak_reset']:
            out['peak_rss_delta_mb'] = (peak - out['baseline_rss_mb'] * 2**20) / 2**20
        else:  # peak since start: an upper bound only if the build peaked lower
            out['peak_rss_delta_mb'] = (peak - base_hwm) / 2**20
    return out


# --------------------------------------------------------------------------------- parent
def spawn(model, method, args, tracemalloc) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', '--model', model,
           '--method', method, '--size', str(args.size), '--batch', str(args.batch),
           '--repeats', str(args.repeats), '--threads', str(args.threads)]
    if tracemalloc:
        cmd.append('--tracemalloc')
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {'model': model, 'method': method, 'error': f'timed out after {args.timeout} s'}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('RESULT '):
            res = json.loads(line[len('RESULT '):])
            res['process_s'] = wall
            return res
    tail = (proc.stderr.strip().splitlines() or ['?'])[-1]
    return {'model': model, 'method': method,
            'error': f'worker exited with {proc.returncode}: {tail}'[:300]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=MODELS, choices=MODELS)
    p.add_argument('--methods', nargs='+', default=METHODS, choices=METHODS)
    p.add_argument('--size', type=int, default=128, help='input side of the demo batch')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--repeats', type=int, default=3, help='analyses per process (median)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--no-tracemalloc', dest='tracemalloc', action='store_false',
                   help='skip the extra Python-allocation runs')
    p.add_argument('--timeout', type=int, default=900, help='seconds per subprocess')
    p.add_argument('--max-foreign', type=float, default=0.2,
                   help='redo a measurement during which other processes used more than '
                        'this many cores')
    p.add_argument('--max-wait', type=float, default=1800,
                   help='seconds to spend waiting out contention in total')
    p.add_argument('--wait-idle', type=float, default=0, metavar='SECONDS',
                   help='first wait up to this long for other processes to go quiet')
    p.add_argument('--json', help='write the results here')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--model', help=argparse.SUPPRESS)
    p.add_argument('--method', help=argparse.SUPPRESS)
    p.add_argument('--tracemalloc', dest='tm_worker', action='store_true',
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.tracemalloc = args.tm_worker
        print('RESULT ' + json.dumps(worker(args)), flush=True)
        return {}

    if not getattr(args, 'worker', False):
        print('[wait] ' + C.wait_idle(args.wait_idle), flush=True)
    monitor = C.CpuMonitor()
    rows = []
    guard = C.Guard(args.max_foreign, args.max_wait)
    t_start = time.perf_counter()
    for model in args.models:
        for method in args.methods:
            print(f'[analysis_cost] {model} / {method} ...', flush=True)
            row = guard.run(lambda: spawn(model, method, args, False))
            if args.tracemalloc and 'error' not in row:
                tm = spawn(model, method, args, True)  # not timed: no need to guard
                row['py_peak_mb'] = tm.get('py_peak_mb', float('nan'))
            t = row.get('times_s') or []
            row.update(label=LABELS[method], input=f'{args.batch}x{args.size}x{args.size}',
                       median_s=C.median(t) if t else float('nan'),
                       first_s=t[0] if t else float('nan'))
            rows.append(row)
            print(f'[analysis_cost]   {row.get("found", "")} {row.get("error", "")} '
                  f'median {row["median_s"]:.2f} s, peak RSS +'
                  f'{row.get("peak_rss_delta_mb", float("nan")):.0f} MB', flush=True)
    total = time.perf_counter() - t_start

    print(f'\nCost of the dependency analysis, one fresh process per row, median of '
          f'{args.repeats} runs; peak RSS above the RSS after model build; Python peak from '
          'tracemalloc (tensor storage excluded)')
    print(C.env_line())
    for r in rows:
        r.setdefault('found', '')
        r.setdefault('py_peak_mb', float('nan'))
        r.setdefault('peak_rss_delta_mb', float('nan'))
        r.setdefault('baseline_rss_mb', float('nan'))
        r.setdefault('layers_seen', '')
        r['result'] = r.get('error') or r['found']
    print(C.table(rows, ['model', 'label', 'input', 'median_s', 'first_s',
                         'peak_rss_delta_mb', 'py_peak_mb', 'baseline_rss_mb', 'layers_seen',
                         'result'],
                  ['model', 'analysis', 'input', 'time (s, median)', 'first run (s)',
                   'peak RSS +MB', 'Python peak MB', 'RSS after build (MB)',
                   'conv/linear layers seen', 'result / error']))
    print('timed processes: ' + guard.summary())
    print(f'total time {total:.0f} s; ' + monitor.report())
    C.write_json(args.json, {'benchmark': 'analysis_cost', 'args': vars(args), 'rows': rows,
                             'total_s': total, 'guard': guard.state(),
                             'foreign_cores': monitor.foreign_cores()})
    return rows


if __name__ == '__main__':
    sys.exit(0 if main() is not None else 1)
