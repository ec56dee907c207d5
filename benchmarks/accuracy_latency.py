"""Accuracy at equal latency: GFP (latency) against GFP (acts, flops), Torch-Pruning L1 and
ModelOpt FastNAS.

Run from the repository root (Torch-Pruning 1.6.1 installed), on the 2000-iteration baseline
of ``benchmarks/accuracy.py`` (trained there, or here with ``--baseline-iters``)::

    .venv/bin/python benchmarks/accuracy_latency.py --threads 1 \\
        --baseline work_dirs/accuracy_b2000/baseline/iter_2000.pth \\
        --work-dir work_dirs/accuracy_latency --json benchmarks/results/accuracy_latency.json
    .venv/bin/python benchmarks/accuracy_latency.py --quick   # every method for a few iterations

One latency table of ``--config`` is profiled first (CPU, fp32, batch 1, the 128x128 digits
canvas, ``--threads`` threads; cached in ``--table``). Every method then brings the baseline to
``--target`` of the latency that table predicts, with the accuracy benchmark's budget
(``--iters`` iterations at ``--lr``, constant then cosine; GFP prunes inside them):

===========  ================================================================================
gfp_latency  FisherPruningHook(delta='latency', target_metric='latency', divisor='auto')
gfp_latency_kd  gfp_latency with GFPDistillHook (the unpruned baseline teaches while pruning
             and fine-tuning; ``--kd-losses`` / ``--kd-during`` / ``--kd-weight`` as in
             ``benchmarks/accuracy.py``, e.g. the head's class scores)
gfp_latency_d1  the same with divisor=1: the latency criterion without the table's alignment
             (the table asks for multiples of 16 in the stem, layer1 and the first FPN conv)
gfp_acts     FisherPruningHook(delta='acts', target_metric='latency', divisor=1)
gfp_acts_d8  the same with divisor=8 (every kept width a multiple of 8, what ONNX Runtime's
             CPU kernels and tensor cores like without a table)
gfp_flops    FisherPruningHook(delta='flops', target_metric='latency', divisor=1)
tp_l1        Torch-Pruning group L1 (global), one shot, its ratio searched until the table
             predicts ``--target`` for the compact module (``LatencyTable.predict_module``),
             then fine-tuned
modelopt     NVIDIA ModelOpt FastNAS (optional, ``.venv/modelopt``), its FLOPs constraint
             searched until the table predicts ``--target`` for the compact, then fine-tuned
             like tp_l1; scored on train images (``--modelopt-score``, see
             ``_accuracy_modelopt.py``); widths stored in the run's ``modelopt.json``
===========  ================================================================================

``--backend onnxruntime`` makes it the same benchmark in ONNX Runtime (CPU provider, all graph
optimisations, ``--threads`` threads): the table is profiled there (``--calibrate-groups`` adds
its per-group factors) and every model is exported (``torch.onnx.export``, opset 17, the tensor
path) and timed there, in process CPU time with one thread.

So all methods meet the same *predicted* time. Each compact model is stored; at the end all of
them and the baseline are timed in one process, interleaved (``compare_latency``, ``--rounds``
rounds of every model in rotating order, tensor path at batch 1, ``--threads`` threads), and
the table reports the *measured* time next to the prediction, FLOPs, activations, parameters
and bbox mAP. Finished runs are stored in ``WORK_DIR/runs/<name>/`` (result.json and
compact.pth, the whole pruned module) and reused by a later call with the same settings.
"""
import argparse
import os
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import _accuracy_kd as K  # noqa: E402
import _accuracy_modelopt as MO  # noqa: E402  (imports no torch at module level)
import _common as C  # noqa: E402
import accuracy as A  # noqa: E402

METHODS = ['gfp_latency', 'gfp_latency_kd', 'gfp_latency_d1', 'gfp_acts', 'gfp_acts_d8',
           'gfp_flops', 'tp_l1', 'modelopt']
LABELS = {'baseline': 'baseline (unpruned)', 'gfp_latency': 'GFP (latency)',
          'gfp_latency_kd': 'GFP (latency) + distillation',
          'gfp_latency_d1': 'GFP (latency, divisor 1)',
          'gfp_acts': 'GFP (acts)', 'gfp_acts_d8': 'GFP (acts, divisor 8)',
          'gfp_flops': 'GFP (flops)', 'tp_l1': 'TP group L1',
          'modelopt': 'ModelOpt FastNAS'}
TABLE = osp.join(ROOT, 'benchmarks', 'results', 'latency_tables',
                 'digits_retinanet_r18_cpu_b1_t1_128x128.json')
TABLE_ORT = osp.join(ROOT, 'benchmarks', 'results', 'latency_tables',
                     'digits_retinanet_r18_ort_cpu_b1_t1_128x128.json')
QUICK = dict(iters=4, seeds=[0], gfp_interval=1, gfp_channels_per_step=1024, tol=0.03,
             rounds=3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=A.DEFAULT_CONFIG, help='baseline config (single-stage)')
    p.add_argument('--baseline', help='trained baseline checkpoint (else trained here once)')
    p.add_argument('--baseline-iters', type=int, default=2000,
                   help='baseline iterations when it is trained here (default 2000)')
    p.add_argument('--iters', type=int, help='training iterations after the baseline (300)')
    p.add_argument('--seeds', type=int, nargs='+', help='default 0 1 2')
    p.add_argument('--methods', nargs='+', default=METHODS, choices=METHODS)
    p.add_argument('--target', type=float, default=0.5,
                   help='fraction of the predicted latency to keep (default 0.5)')
    p.add_argument('--tol', type=float, help="tolerance of Torch-Pruning's and ModelOpt's "
                   'searches (0.01)')
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--gfp-interval', type=int, help='iterations between pruning steps (2)')
    p.add_argument('--gfp-channels-per-step', type=int, help='selections per step (32)')
    p.add_argument('--table', help=f'latency table (profiled here when missing; default '
                   f'{osp.relpath(TABLE, ROOT)}, {osp.basename(TABLE_ORT)} with --backend '
                   'onnxruntime, or WORK_DIR/table.json with --quick)')
    p.add_argument('--backend', choices=('torch', 'onnxruntime'), default='torch',
                   help='where the table is profiled and the models are timed: PyTorch eager '
                   '(default) or ONNX Runtime (CPU provider)')
    p.add_argument('--calibrate-groups', action='store_true',
                   help="add the table's per-group factors (profile_latency "
                   '--calibrate-groups) when it is profiled or lacks them')
    p.add_argument('--rounds', type=int, help='timing rounds of every model (default 50)')
    K.add_args(p)
    MO.add_args(p)
    p.add_argument('--work-dir', default=osp.join('work_dirs', 'accuracy_latency'))
    p.add_argument('--json', help='write all results here')
    p.add_argument('--quick', action='store_true', help='a few iterations on a tiny data set '
                   '(smoke check; mAP and times are meaningless)')
    p.add_argument('--force', action='store_true', help='rerun runs stored in WORK_DIR')
    p.add_argument('--threads', type=int, default=1, help='threads for training and timing')
    p.add_argument('--progress', type=float, default=30.0, metavar='SECONDS')
    p.add_argument('--verbose', action='store_true')
    args = p.parse_args(argv)
    K.check_args(p, args)
    A.fill_defaults(args, dict(iters=300, seeds=[0, 1, 2], gfp_interval=2,
                               gfp_channels_per_step=32, tol=0.01, rounds=50), QUICK)
    MO.check_args(p, args)
    if not 0 < args.target < 1:
        p.error(f'--target is the fraction of the latency to keep, in (0, 1); got {args.target}')
    for name in ('iters', 'gfp_interval', 'gfp_channels_per_step', 'rounds', 'threads'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be a positive integer, got '
                    f'{getattr(args, name)}')
    if args.baseline and not osp.isfile(args.baseline):
        p.error(f'--baseline {args.baseline} does not exist: give a checkpoint of --config '
                '(benchmarks/accuracy.py --baseline-iters 2000 trains one), or leave it out '
                'to train it here')
    if args.quick:
        args.baseline_iters = 2
    if args.table is None:
        args.table = (osp.join(args.work_dir, 'table.json') if args.quick else
                      TABLE_ORT if args.backend == 'onnxruntime' else TABLE)
    return args


# ------------------------------------------------------------------------------ latency
def forward_fn(model):
    """The timed forward: tensor path, batch 1, one 128x128 canvas (as the table)."""
    from mmgfp.apis.inputs import demo_batch, tensor_forward
    import _accuracy_methods as M
    return tensor_forward(demo_batch(model, 1, M.INPUT_SIZE, seed=0))


def get_table(cfg, args, baseline: str):
    """The config's CPU latency table: reused from ``--table`` when it fits, else profiled."""
    from mmgfp.apis.latency.profile import profile_config
    import _accuracy_methods as M
    from mmgfp.core.latency import load_table
    os.makedirs(osp.dirname(osp.abspath(args.table)), exist_ok=True)
    if osp.isfile(args.table):
        made = load_table(args.table).mismatches({'backend': args.backend})
        if made:
            raise SystemExit(f'[accuracy_latency] {args.table} is a {made["backend"][0]} table, '
                             f'not {args.backend}: give --table a new file (it is profiled '
                             'there) or drop --backend, so that it is not overwritten')
    quick = dict(points=2, rounds=1, align=False) if args.quick else {}
    t0 = time.perf_counter()
    table, groups = profile_config(cfg, args.config, batch=1,
                                   input_size=M.INPUT_SIZE, checkpoint=baseline,
                                   threads=args.threads, out=args.table, backend=args.backend,
                                   calibrate_groups=args.calibrate_groups, **quick)
    print(f'[accuracy_latency] latency table {args.table} ({args.backend}): full model '
          f'{table.total_us / 1e3:.2f} ms ({time.perf_counter() - t0:.0f} s)', flush=True)
    return table


def _divisor(method: str):
    """The hook's ``divisor``: the table's alignment for the latency criterion (``'auto'``),
    8 for gfp_acts_d8, none for the divisor-1 variant and the FLOPs/activation criteria."""
    if method == 'gfp_acts_d8':
        return 8
    return 'auto' if method in ('gfp_latency', 'gfp_latency_kd') else 1


def predicted(table, model) -> float:
    return table.predict_module(model) / table.total_us


def run_name(method: str, seed: int, args) -> str:
    """The run's folder under ``WORK_DIR/runs``; a modelopt run's names its score
    (``modelopt-agreement16_lat50_s0``)."""
    name = K.run_name(method, args.target, seed, args, 'lat')
    if method == 'modelopt':
        name = name.replace('modelopt_', f'modelopt-{MO.tag(args)}_', 1)
    return name


def one_shot(method: str, ctx: dict, wd: str):
    """The baseline pruned once to the target predicted latency (tp_l1, modelopt)."""
    import _accuracy_methods as M
    args, table = ctx['args'], ctx['table']
    model = M.build(ctx['base'], ctx['baseline'])
    if method == 'modelopt':
        key = {k: ctx['sig'][k] for k in ('baseline', 'table', 'target', 'tol', 'quick')}
        return MO.prune_to(model, ctx['base'], lambda m: predicted(table, m), args, wd, key)
    return M.tp_prune_to(model, 'l1', args.target, ctx['full']['flops'], args.tol, True,
                         remaining=lambda m: predicted(table, m))


# ------------------------------------------------------------------------------ one run
def run_one(method: str, seed: int, ctx: dict) -> dict:
    """Bring the baseline to the target predicted latency with ``method``, train, evaluate."""
    import torch

    import _accuracy_methods as M
    args, base, ckpt, full, table = (ctx[k] for k in ('args', 'base', 'baseline', 'full',
                                                       'table'))
    name = run_name(method, seed, args)
    wd = osp.join(ctx['work_dir'], 'runs', name)
    level = A._log_level(args)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    out = {'method': method, 'seed': seed, 'target': args.target, 'name': name,
           'train_iters': args.iters}
    ft = M.train_cfg(base, wd, args.iters, seed, A._stamp(name), level,
                     M.finetune_schedule(args.iters), args.lr)
    if method.startswith('gfp'):
        delta = method.split('_')[1]
        model, info = M.gfp(ft, ckpt, delta, args.target, args.gfp_interval,
                            args.gfp_channels_per_step, target_metric='latency',
                            latency_table=osp.abspath(args.table),
                            divisor=_divisor(method), distill=K.hook_args(method, args))
    else:
        model, info = one_shot(method, ctx, wd)
        info['target_reached'] = bool(abs(predicted(table, model) - args.target) <= args.tol)
        info['pruned_eval'] = M.evaluate(model, base, wd, A._stamp(name + '_pruned'), level)
        M.runner(ft, model).train()
    cost = M.measure(model)
    out.update({k: cost[k] / full[k] for k in ('flops', 'params', 'acts')})
    out['predicted'] = predicted(table, model)
    out.update(M.evaluate(model, base, wd, A._stamp(name + '_test'), level))
    out['info'] = info
    out['seconds'] = time.perf_counter() - t0
    torch.save(model.cpu().eval(), osp.join(wd, 'compact.pth'))
    return out


def settings(args, baseline: str, table) -> dict:
    """What a stored run must share with this call to be reused."""
    st = os.stat(baseline)
    keys = ('iters', 'lr', 'gfp_interval', 'gfp_channels_per_step', 'tol', 'quick', 'target')
    sig = dict({k: getattr(args, k) for k in keys}, config=osp.abspath(args.config),
               baseline=[osp.abspath(baseline), st.st_size, int(st.st_mtime)],
               table=[table.key, table.total_us])
    return K.add_signature(sig, args)  # the kd options only when given


# ------------------------------------------------------------------------------ timing
def time_all(runs: list, base_model, args) -> dict:
    """Measured forward time (ms) of the baseline and every stored compact model, interleaved
    in one process; each run gets ``measured`` (its time over the baseline's)."""
    import torch

    from mmgfp.apis.latency.timing import compare_latency, prepare
    models = {'baseline': prepare(base_model)}
    for r in runs:
        path = osp.join(r['dir'], 'compact.pth')
        try:
            models[r['name']] = prepare(torch.load(path, map_location='cpu',
                                                   weights_only=False))
        except Exception as e:  # noqa: BLE001  (one unreadable model must not lose the table)
            r['error'] = f'cannot load {path} for timing: {type(e).__name__}: {e}'[:300]
            print(f'[accuracy_latency] {r["error"]}', flush=True)
    runs = [r for r in runs if r['name'] in models]
    print(f'[accuracy_latency] timing {len(models)} models in {args.backend}, {args.rounds} '
          f'interleaved rounds, {args.threads} thread(s)', flush=True)
    fwd = forward_fn(base_model)  # one input for every model
    if args.backend == 'onnxruntime':
        ms = time_ort(models, fwd, runs, args)
        runs = [r for r in runs if r['name'] in ms]
    else:
        ms = compare_latency(models, fwd, rounds=args.rounds, warmup=3, threads=args.threads)
    for r in runs:
        r['measured_ms'] = ms[r['name']]
        r['measured'] = ms[r['name']] / ms['baseline']
    return ms


def time_ort(models: dict, fwd, runs: list, args) -> dict:
    """Median time (ms) of each model's call in ``fwd`` exported to ONNX and run in ONNX
    Runtime (CPU provider, all graph optimisations, ``args.threads`` threads; process CPU time
    with one thread), interleaved. A model that does not export gets an ``error`` in its run,
    not a lost table."""
    import tempfile

    import torch

    from mmgfp.apis.latency.plan import export_models
    from mmgfp.apis.latency.runner import Backend, compare_calls
    from mmgfp.apis.latency.timing import threads_set
    with threads_set(args.threads), tempfile.TemporaryDirectory() as tmp:
        run = Backend('onnxruntime', threads=torch.get_num_threads())
        calls, x = {}, None
        for name, model in models.items():
            try:
                files = export_models({name: model}, fwd, osp.join(tmp, 'm'),
                                      torchscript=False)
                x = torch.randn(files['input_shape']) if x is None else x
                calls[name] = run.file_callable(osp.join(tmp, files[f'{name}_onnx']), x)
            except Exception as e:  # noqa: BLE001  (one model must not lose the table)
                if name == 'baseline':
                    raise
                msg = f'cannot time {name} in onnxruntime: {type(e).__name__}: {e}'[:300]
                print(f'[accuracy_latency] {msg}', flush=True)
                for r in runs:
                    if r['name'] == name:
                        r['error'] = msg
        us = compare_calls(calls, 'cpu', args.rounds, 3, run.clock)
    return {k: v / 1e3 for k, v in us.items()}


# ------------------------------------------------------------------------------ summary
COLUMNS = ('predicted', 'measured', 'flops', 'acts', 'params', 'mAP', 'mAP50')


def summarize(runs: list, base_res: dict, base_ms: float) -> list:
    rows = [dict(base_res, method='baseline', n=1, predicted=1.0, measured=1.0,
                 measured_ms=base_ms)]
    for method in METHODS:
        ok = [r for r in runs if r['method'] == method and 'error' not in r]
        bad = [r for r in runs if r['method'] == method and 'error' in r]
        if not ok and not bad:
            continue
        row = {'method': method, 'n': len(ok), 'failed': len(bad),
               'seeds': [r['seed'] for r in ok], 'error': bad[0]['error'] if bad else ''}
        for k in COLUMNS + ('measured_ms', 'seconds'):
            row[k], row[k + '_std'] = A._mean_std([r[k] for r in ok if k in r])
        rows.append(row)
    return rows


def format_table(rows: list) -> str:
    head = ('| method | predicted latency % | measured latency % | ms (batch 1) | FLOPs % | '
            'acts % | params % | bbox mAP | mAP@0.5 | seeds |')
    lines = [head, '|' + '---|' * 10]
    for r in rows:
        pct = [A._pm(100 * r[k], 100 * r.get(k + '_std', float('nan')), 1)
               for k in ('predicted', 'measured')]
        cells = [LABELS[r['method']], *pct, f"{r['measured_ms']:.2f}",
                 *(f'{100 * r[k]:.1f}' for k in ('flops', 'acts', 'params')),
                 A._pm(r['mAP'], r.get('mAP_std', float('nan'))),
                 A._pm(r['mAP50'], r.get('mAP50_std', float('nan'))), str(r['n'])]
        if r.get('failed'):
            cells[-1] += f" ({r['failed']} failed: {r['error'][:80]})"
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


# ------------------------------------------------------------------------------ main
def _baseline_eval(M, base, base_model, args, wd: str, sig: dict) -> dict:
    path = osp.join(wd, 'baseline_eval.json')
    res = None if args.force else A.stored(path, sig, 'baseline')
    if res is None:
        res = dict(M.evaluate(base_model, base, osp.join(wd, 'baseline_eval'),
                              A._stamp('baseline_test'), A._log_level(args)),
                   flops=1.0, params=1.0, acts=1.0, settings=sig)
        A.save(path, res)
    return res


def _refuse_replacing(args, wd: str, sig: dict) -> None:
    """Stop before the baseline evaluation and any training where finished runs of other
    settings would be replaced (see ``_accuracy_runs.refuse_replacing``)."""
    if not args.force:
        runs = [(method, osp.join(wd, 'runs', run_name(method, seed, args)))
                for seed in args.seeds for method in args.methods]
        A.refuse_replacing(A.changed_runs(runs, sig), wd)


def _run_all(args, ctx: dict, sig: dict) -> list:
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            name = run_name(method, seed, args)
            rdir = osp.join(ctx['work_dir'], 'runs', name)
            path = osp.join(rdir, 'result.json')
            res = None if args.force else A.stored(path, sig, method)
            if res is not None and not osp.isfile(osp.join(rdir, 'compact.pth')):
                res = None
            if res is None:
                print(f'[accuracy_latency] {method}, seed {seed} ...', flush=True)
                try:
                    res = run_one(method, seed, ctx)
                except Exception as e:  # noqa: BLE001  (reported in the table)
                    import traceback
                    traceback.print_exc()
                    res = {'method': method, 'seed': seed, 'name': name,
                           'error': f'{type(e).__name__}: {e}'[:300]}
                res['settings'] = sig
                A.save(path, res)
            res['dir'] = rdir
            if 'error' not in res:
                print(f'[accuracy_latency]   {method} seed {seed}: predicted latency '
                      f'{100 * res["predicted"]:.1f}%, FLOPs {100 * res["flops"]:.1f}%, '
                      f'mAP {res["mAP"]:.3f}', flush=True)
            runs.append(res)
    return runs


def main(argv=None) -> dict:
    args = parse_args(argv)
    M = A.start(args)
    t_start = time.perf_counter()
    wd = osp.abspath(args.work_dir)
    args.stored_only = False  # what accuracy.train_baseline reads
    base = A.base_config(args)
    K.check_hook(args, M.task(), base)  # a bad --kd-* option fails before any training
    baseline = args.baseline or A.train_baseline(base, args, osp.join(wd, 'baseline'))
    table = get_table(base, args, baseline)
    base_model = M.build(base, baseline)
    full = M.measure(base_model)
    sig = settings(args, baseline, table)
    _refuse_replacing(args, wd, sig)
    base_res = _baseline_eval(M, base, base_model, args, wd, sig)
    ctx = {'args': args, 'base': base, 'baseline': baseline, 'full': full, 'work_dir': wd,
           'table': table, 'sig': sig}
    runs = _run_all(args, ctx, sig)
    ms = time_all([r for r in runs if 'error' not in r], base_model, args)
    rows = summarize(runs, base_res, ms['baseline'])
    budget = (f'{args.iters} iterations after the baseline ({osp.basename(baseline)}), seeds '
              + ' '.join(map(str, args.seeds)))
    kd = [r['info']['kd'] for r in runs if 'kd' in r.get('info', {})]
    if kd:
        text = K.recipe(kd[0]['losses'], kd[0]['during'], kd[0].get('fisher'),
                        kd[0].get('task_weight'))
        budget += f'; distillation: {text}'
    print(f'\nbbox mAP on the test split of {osp.basename(args.config)} at '
          f'{args.target:g} of the predicted CPU latency; budget: {budget}; mean ± std over '
          'seeds')
    print(C.env_line())
    print(format_table(rows))
    total = time.perf_counter() - t_start
    print(f'total time {total:.0f} s')
    payload = {'benchmark': 'accuracy_latency', 'args': vars(args), 'budget': budget,
               'table': {'path': args.table, 'key': table.key, 'total_us': table.total_us},
               'baseline': base_res, 'timing_ms': ms, 'rows': rows, 'runs': runs,
               'total_s': total}
    C.write_json(args.json, payload)
    return payload


if __name__ == '__main__':
    res = main()
    sys.exit(1 if any('error' in r for r in res['runs']) else 0)
