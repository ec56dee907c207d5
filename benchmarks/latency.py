"""CPU latency of compact (physically pruned) models against the originals: acts/FLOPs/latency.

Run from the repository root::

    .venv/bin/python benchmarks/latency.py                  # all three models
    .venv/bin/python benchmarks/latency.py --models resnet50 --json latency.json
    # one thread on a reserved core (profiling and timing there, pruning elsewhere):
    .venv/bin/python benchmarks/latency.py --models resnet50 --threads 1 --time-core 1 \
        --variants acts flops acts-d8 flops-d8 latency --json benchmarks/results/x.json

For each model (random initialisation, no pretrained weights):

1. trace the groups once (``build_groups`` on the loss path of a random demo batch at the
   *pruning* input size);
2. profile a CPU latency table of the original (``mmgfp.apis.latency.profile.profile_latency``: every
   prunable layer timed over its channel counts at its real input size) at the *latency* input
   size, for every batch size measured, with the threads used for timing; tables are stored in
   ``--tables-dir`` and reused when device, settings and layers match (``--no-table`` skips
   this, and with it the latency variants and the predictions);
3. prune every variant with :class:`mmgfp.core.FisherPruner` as the hook would: one real
   Fisher iteration (masks attached, recorder started, loss forward + backward on a fresh random
   batch) before every bulk step ``pruner.step(--channels-per-step)``, stopping at the target:
   ``acts``/``flops`` (``divisor`` 1) and ``acts-d8``/``flops-d8`` (``divisor`` 8) until
   ``--target`` of the FLOPs remain; ``latency`` (``delta='latency'``, divisor 1) and
   ``latency-auto`` (``divisor='auto'``) until the table of the first batch size predicts
   ``--latency-target`` of the original's time. The norm layers get random affine parameters
   and statistics first (``randomize_norms``): a fresh ResNet zero-initialises the last BN of
   each residual block, which gives every inner channel exactly zero Fisher, so every delta
   would prune the same, arbitrary, channels;
4. ``make_spec`` + ``apply_spec`` on a deep copy gives the compact model; its tensor-mode output
   is checked against the masked model's (relative difference, should be ~1e-6).

The ``modelopt`` variant is a peer, not GFP: NVIDIA ModelOpt 0.47 FastNAS searches widths (in
multiples of 32) at ``--target`` of the FLOPs, scored by agreement with the original's outputs
(``benchmarks/_latency_modelopt.py``; ModelOpt comes from ``.venv/modelopt``, which
``tools/setup_env.sh`` fills, or ``$MMGFP_MODELOPT_DIR``). ``--save-specs`` stores its widths as
``<model>__modelopt.json`` and ``--reuse-specs`` rebuilds the compact from them without a search.

Then the original and the compact models run ``tensor_forward`` (``mode='tensor'``: the raw
network outputs, no NMS/post-processing) in eval mode under ``torch.no_grad`` at the
*latency* input size, for every batch size, interleaved (every round times each model once, in
rotating order) after warm-up; the median over rounds is reported, next to the ratio the
batch's latency table predicts for every variant (``LatencyTable.predict``).

FLOPs (multiply-accumulates), activations (output elements of conv/linear layers) and
parameters of the compact models are counted independently at the latency input size with
forward hooks (not with mmgfp's own counters), and mmgfp's ``remaining()`` at the pruning input
size is shown next to them. Pruning at a smaller input size than the latency one keeps the
script fast; the FLOPs ratios barely depend on it (every feature map scales alike).
"""
import argparse
import contextlib
import os
import sys
import time

import torch

import _common as C
from _latency_models import MODELS, VARIANTS, costs, from_spec, is_detector, prune


def latency(models, batch, warmup, rounds, guard):
    from mmgfp.apis.inputs import tensor_forward
    fwd = tensor_forward(batch)
    names = list(models)
    for _ in range(warmup):
        for n in names:
            with torch.no_grad():
                fwd(models[n])
    times = {n: [] for n in names}

    def one_round(order):
        got = {}
        for n in order:
            with torch.no_grad():
                got[n] = C.timed(lambda: fwd(models[n]))
        return got

    for r in range(rounds):
        k = r % len(names)
        got = guard.run(lambda: one_round(names[k:] + names[:k]))
        for n, t in got.items():
            times[n].append(t)
    return {n: C.median(t) for n, t in times.items()}, times


@contextlib.contextmanager
def pinned(core):
    """Run the block on CPU ``core`` only (None: leave the affinity alone).

    The process pins its main thread, which with ``--threads 1`` is the only one that computes;
    pruning and tracing run on the other cores, timing and profiling on the reserved one.
    """
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def get_table(orig, groups, name, bs, lsize, args):
    """The model's CPU latency table at batch ``bs``: from ``--tables-dir`` when a table with the
    same device, settings and layers is there, else profiled (on ``--time-core``) and stored."""
    from mmgfp.apis.inputs import demo_batch, tensor_forward
    from mmgfp.apis.latency.profile import profile_latency
    os.makedirs(args.tables_dir, exist_ok=True)
    path = os.path.join(args.tables_dir, f'{name}_cpu_b{bs}_t{args.threads}_'
                        f'{lsize[0]}x{lsize[1]}.json')
    orig.eval()
    fwd = tensor_forward(demo_batch(orig, bs, lsize, seed=args.seed + bs))
    t0 = time.perf_counter()
    with pinned(args.time_core):
        table = profile_latency(orig, fwd, groups, device='cpu', dtype='fp32', batch=bs,
                                threads=args.threads, input_size=tuple(lsize), config=name,
                                rounds=args.profile_rounds, out=path,
                                force=args.force_profile, progress=args.progress)
    t_prof = time.perf_counter() - t0
    print(f'[latency] {name}: latency table at batch {bs} ({t_prof:.0f} s) in {path}',
          flush=True)
    return table, t_prof


def predicted_ratio(table, groups, kept):
    return table.predict(groups, lambda k: kept[k]) / table.total_us


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=MODELS, choices=MODELS)
    p.add_argument('--variants', nargs='+', default=['acts', 'flops', 'latency'],
                   choices=list(VARIANTS) + ['modelopt'],
                   help='GFP variants (see the docstring) and `modelopt` (NVIDIA ModelOpt '
                        'FastNAS at --target FLOPs, see benchmarks/_latency_modelopt.py)')
    p.add_argument('--target', type=float, default=0.5, help='FLOPs fraction to keep')
    p.add_argument('--latency-target', type=float, default=0.5,
                   help='predicted latency fraction to keep (latency variants)')
    p.add_argument('--channels-per-step', type=int, default=32,
                   help='selections per pruning step (one Fisher iteration before each)')
    p.add_argument('--det-size', type=int, default=320, help='detector latency input side')
    p.add_argument('--cls-size', type=int, default=224, help='classifier latency input side')
    p.add_argument('--prune-det-size', type=int, default=128)
    p.add_argument('--prune-det-batch', type=int, default=2)
    p.add_argument('--prune-cls-size', type=int, default=128)
    p.add_argument('--prune-cls-batch', type=int, default=4)
    p.add_argument('--batches', nargs='+', type=int, default=[1, 8])
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--rounds', type=int, default=5, help='timed forwards per model (median)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--time-core', type=int,
                   help='pin profiling and timing to this CPU core (pruning runs elsewhere); '
                        'use with --threads 1')
    p.add_argument('--no-table', action='store_true',
                   help='do not profile latency tables (no latency variants, no predictions)')
    p.add_argument('--tables-dir', default='work_dirs/latency_tables',
                   help='latency tables are stored here and reused when their settings match')
    p.add_argument('--force-profile', action='store_true', help='profile even if stored')
    p.add_argument('--profile-rounds', type=int, default=5,
                   help='timed runs per sampled width while profiling (median)')
    p.add_argument('--progress', action='store_true', help="show the profiler's progress")
    p.add_argument('--save-specs', metavar='DIR',
                   help='write each compact model\'s channel spec as DIR/<model>__<variant>.json '
                        '(benchmarks/gpu/pack.py --specs DIR reuses them)')
    p.add_argument('--reuse-specs', metavar='DIR',
                   help='take a variant from DIR/<model>__<variant>.json where it exists '
                        '(as --save-specs wrote it) instead of pruning it again')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--max-foreign', type=float, default=0.2,
                   help='discard and redo timing rounds during which other processes used '
                        'more than this many cores (of the timing core with --time-core)')
    p.add_argument('--max-wait', type=float, default=1800,
                   help='seconds to spend waiting out contention in total')
    p.add_argument('--wait-idle', type=float, default=0, metavar='SECONDS',
                   help='first wait up to this long for other processes to go quiet')
    p.add_argument('--json', help='write the results here')
    args = p.parse_args(argv)
    needs_table = [v for v in args.variants if VARIANTS.get(v, {}).get('delta') == 'latency']
    if args.no_table and needs_table:
        p.error(f'--variants {needs_table} need a latency table; drop --no-table')
    if args.time_core is not None and args.time_core not in os.sched_getaffinity(0):
        p.error(f'--time-core {args.time_core} is not a core this process may use '
                f'({sorted(os.sched_getaffinity(0))})')
    if args.time_core is not None and args.threads != 1:
        p.error(f'--time-core pins one thread; use --threads 1 (got {args.threads})')
    if 'modelopt' in args.variants:
        import _latency_modelopt as LMO
        try:
            LMO.import_modelopt()
        except LMO.ModelOptMissing as e:
            p.error(str(e))
    return args


def build(name, args):
    """The original model (random init, random norms) and its groups."""
    from mmgfp.apis.checking.check import build_model, randomize_norms
    from mmgfp.apis.inputs import demo_batch, loss_forward
    from mmgfp.core import build_groups
    torch.manual_seed(args.seed)
    orig = build_model(C.load_config(name))
    # Random init zeroes the last BN gamma of every residual block (zero_init_residual):
    # the inner channels would then all get exactly zero Fisher and tie, whatever `delta`.
    randomize_norms(orig, args.seed)
    psize = (args.prune_det_size if is_detector(name) else args.prune_cls_size,) * 2
    orig.train()
    t0 = time.perf_counter()
    groups = build_groups(orig, loss_forward(demo_batch(orig, 2, psize, seed=args.seed)))
    t_groups = time.perf_counter() - t0
    print(f'[latency] {name}: {groups.summary()} ({t_groups:.1f} s)', flush=True)
    return orig, groups, {'model': name, 'groups': groups.summary(), 'build_groups_s': t_groups,
                          'prune_input': f'{psize[0]}x{psize[1]}'}


def prune_variants(orig, groups, name, args, table=None):
    """``{variant: compact model}`` and ``{variant: pruning info}`` for ``args.variants``."""
    from mmgfp.core import load_spec
    compacts, info = {}, {}
    for v in args.variants:
        stored = os.path.join(args.reuse_specs or '', f'{name}__{v}.json')
        if v == 'modelopt':  # its own search, cache and file format
            import _latency_modelopt as LMO
            compacts[v], info[v] = LMO.variant(orig, groups, name, args, table)
        elif args.reuse_specs and os.path.isfile(stored):
            print(f'[latency] {name} {v}: channel spec from {stored} (not pruned again)')
            compacts[v], info[v] = from_spec(orig, groups, v, load_spec(stored), table)
        else:
            compacts[v], info[v] = prune(orig, groups, v, name, args, args.seed + 1, table)
        i = info[v]
        print(f'[latency] {name} {v}: {i["steps"]} steps of {args.channels_per_step}, '
              f'{i["channels_pruned"]} channels, {i["prune_s"]:.0f} s, remaining '
              f'{fmt_rem(i["remaining"])}, compact vs masked rel diff {i["rel_diff"]:.1e}',
              flush=True)
        if args.save_specs and i['spec'] is not None:
            from mmgfp.core import save_spec
            os.makedirs(args.save_specs, exist_ok=True)
            save_spec(i['spec'], os.path.join(args.save_specs, f'{name}__{v}.json'))
    return compacts, info


def measure_rows(name, models, info, tables, groups, args, guard):
    """Time every batch size; one row per (batch, variant) with costs and predictions."""
    from mmgfp.apis.inputs import demo_batch
    lsize = (args.det_size if is_detector(name) else args.cls_size,) * 2
    orig = models['original']
    cost = {k: costs(m, demo_batch(orig, 1, lsize, seed=args.seed)) for k, m in models.items()}
    full = {k: g.channels for k, g in groups.groups.items()}
    rows = []
    for bs in args.batches:
        batch = demo_batch(orig, bs, lsize, seed=args.seed + bs)
        with pinned(args.time_core):
            med, raw = latency(models, batch, args.warmup, args.rounds, guard)
        table = tables.get(bs)
        for k in models:
            row = {'model': name, 'input': f'{lsize[0]}x{lsize[1]}', 'batch': bs, 'variant': k,
                   'latency_ms': med[k] * 1e3, 'latency_ratio': med[k] / med['original'],
                   'flops_ratio': cost[k]['flops'] / cost['original']['flops'],
                   'acts_ratio': cost[k]['acts'] / cost['original']['acts'],
                   'params_ratio': cost[k]['params'] / cost['original']['params'],
                   'gflops': cost[k]['flops'] / 1e9, 'mparams': cost[k]['params'] / 1e6,
                   'times_ms': [t * 1e3 for t in raw[k]]}
            if table is not None:
                pred = predicted_ratio(table, groups, info[k]['kept'] if k in info else full)
                row.update(predicted_ratio=pred,
                           predicted_ms=table.total_us * pred / 1e3,
                           prediction_error=pred / row['latency_ratio'] - 1)
            if k in info:
                rem = info[k]['remaining']
                row.update(mmgfp_flops=rem['flops'], mmgfp_acts=rem['acts'],
                           mmgfp_params=rem['params'], rel_diff=info[k]['rel_diff'])
            rows.append(row)
        print(f'[latency] {name} batch {bs}: ' + ', '.join(
            f'{k} {v * 1e3:.1f} ms' for k, v in med.items()), flush=True)
    return rows


def run_model(name, args, guard):
    orig, groups, detail = build(name, args)
    lsize = (args.det_size if is_detector(name) else args.cls_size,) * 2
    tables = {}
    if not args.no_table:
        for bs in args.batches:
            tables[bs], detail[f'profile_b{bs}_s'] = get_table(orig, groups, name, bs, lsize,
                                                               args)
    compacts, info = prune_variants(orig, groups, name, args, tables.get(args.batches[0]))
    models = {'original': orig, **compacts}
    for m in models.values():
        m.eval()
    rows = measure_rows(name, models, info, tables, groups, args, guard)
    for v, i in info.items():
        detail[f'prune_{v}'] = {k: val for k, val in i.items() if k not in ('spec', 'kept')}
    return rows, detail


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    C.quiet_logs()
    if args.time_core is not None:  # keep the timing core free while pruning and tracing
        os.sched_setaffinity(0, (os.sched_getaffinity(0) - {args.time_core}) or
                             {args.time_core})
    print('[wait] ' + C.wait_idle(args.wait_idle), flush=True)
    monitor = C.CpuMonitor()
    guard = C.Guard(args.max_foreign, args.max_wait,
                    cores=None if args.time_core is None else [args.time_core])
    rows, details = [], []
    t_start = time.perf_counter()
    for name in args.models:
        got, detail = run_model(name, args, guard)
        rows += got
        details.append(detail)
    total = time.perf_counter() - t_start
    report(rows, details, args)
    print('latency rounds: ' + guard.summary())
    if args.time_core is not None:  # the guard watched the timing core; this is the machine
        print(f'total time {total:.0f} s; whole machine (pruning and others, not the timing '
              f'core): other processes used {monitor.foreign_cores():.2f} cores on average')
    else:
        print(f'total time {total:.0f} s; ' + monitor.report())
    C.write_json(args.json, {'benchmark': 'latency', 'args': vars(args), 'rows': rows,
                             'pruning': details, 'total_s': total, 'guard': guard.state(),
                             'foreign_cores': monitor.foreign_cores()})
    return rows


def report(rows, details, args):
    where = (f'1 thread pinned to core {args.time_core}' if args.time_core is not None
             else f'{args.threads} threads')
    print(f'\nCPU latency of compact models (acts/flops variants: <= {args.target:.0%} FLOPs; '
          f'latency variants: predicted <= {args.latency_target:.0%} time), tensor-mode '
          f'forward (no post-processing), eval, no_grad, {where}, median of {args.rounds} '
          f'interleaved rounds after {args.warmup} warm-up')
    print(C.env_line())
    cols = ['model', 'input', 'batch', 'variant', 'latency_ms', 'latency_ratio',
            'predicted_ratio', 'prediction_error', 'flops_ratio', 'acts_ratio', 'params_ratio']
    heads = ['model', 'input', 'batch', 'variant', 'latency (ms)', 'latency ratio',
             'predicted ratio', 'prediction error', 'FLOPs ratio', 'acts ratio',
             'params ratio']
    print(C.table(rows, cols, heads))
    print('\nPruning runs (FisherPruner on random data; ratios as mmgfp counts them at the '
          'pruning input size, latency as the table predicts it; rel diff = compact vs masked '
          'model outputs)')
    prow = []
    for d in details:
        for v in args.variants:
            i = d[f'prune_{v}']
            prow.append({'model': d['model'], 'variant': v, 'steps': i['steps'],
                         'channels': i['channels_pruned'], 'prune_s': i['prune_s'],
                         **i['remaining'], 'rel_diff': f'{i["rel_diff"]:.1e}'})
    print(C.table(prow, ['model', 'variant', 'steps', 'channels', 'prune_s', 'flops', 'acts',
                         'params', 'latency', 'rel_diff'],
                  ['model', 'variant', 'steps', 'channels pruned', 'pruning time (s)',
                   'FLOPs left', 'acts left', 'params left', 'latency left (predicted)',
                   'rel diff']))


def fmt_rem(rem):
    return ', '.join(f'{k} {v:.3f}' for k, v in rem.items())


if __name__ == '__main__':
    sys.exit(0 if main() is not None else 1)
