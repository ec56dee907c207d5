"""Accuracy at equal FLOPs: GFP against Torch-Pruning and simple baselines (digits by default).

Run from the repository root (Torch-Pruning 1.6.1 and matplotlib must be installed)::

    .venv/bin/python benchmarks/accuracy.py --json benchmarks/results/accuracy.json \\
        --plot benchmarks/results/accuracy.png     # ~23 min per seed and target (measured)
    .venv/bin/python benchmarks/accuracy.py --quick     # every method for a few iterations
    .venv/bin/python benchmarks/accuracy.py --stored-only --targets 0.3 0.5 0.7  # tabulate only

On a machine other jobs load, add ``--threads 1``: two OpenMP threads fighting other processes
for two cores ran a RetinaNet iteration 5x slower (9.4 s vs 1.8 s) than one thread.

One baseline of ``--config`` (default: RetinaNet-R18,
``configs/digits/retinanet_r18_fpn_digits.py``; any single-stage mmdet detector, top-down
mmpose estimator, mmseg encoder-decoder or mmpretrain classifier config, e.g.
``configs/digits/td-hm_r18_digits.py``, ``configs/digits/fcn_r18-d8_digits.py`` and
``configs/digits/resnet18_digits.py``, with its data and test evaluator taken as written:
bbox mAP, keypoint AP or PCK, mIoU, top-1; see ``_accuracy_tasks.py``), trained here once (an
epoch-based config by iterations: its epochs and schedulers rewritten in iterations) or given
as ``--baseline CKPT``, is brought to ``--targets`` of its FLOPs (default 0.5) by each
method, for every seed. Before anything trains, the config is checked (the kind of model; the
train/val/test data sets load and their first image exists; the test evaluator builds and
gives the task's metric) and a clear error names what to fix. Each training and test run
prints its iterations and ETA every ``--progress`` seconds. ``--quick``
uses a tiny generated digits set for the embedded digits data, and the first few images of
any other data set.

=============  ==============================================================================
gfp_acts       FisherPruningHook, delta='acts', prunes while training from the baseline
gfp_flops      the same with delta='flops'
gfp_acts_kd    gfp_acts with GFPDistillHook's defaults (channel-wise distillation of the FPN
               outputs from the baseline, pruned channels left out) while pruning and
               fine-tuning; ``--kd-losses JSON`` / ``--kd-during`` / ``--kd-weight`` choose
               another recipe (``_accuracy_kd.py``), named in the table
gfp_flops_kd   gfp_flops with the same distillation (the cost the compact is ranked by,
               with the teacher: on MobileNetV2 acts and flops keep different channels).
               Not in the default ``--methods``
tp_l1          Torch-Pruning MetaPruner, GroupMagnitudeImportance(p=1) (group L1), one shot,
               ranked across layers (``--tp-scope global``, like GFP) by default
tp_l1_kd       tp_l1 fine-tuned with distillation from the unpruned baseline (built from
               --config): an output loss only (the student is sliced; ``cwd`` is refused):
               KL on a classifier's logits, sigmoid KL on a detector head's class scores,
               or ``--kd-losses``
tp_taylor      Torch-Pruning MetaPruner, GroupTaylorImportance from ``--taylor-batches``
               training batches of gradients, one shot
random         mmgfp's channel groups, units removed in random order, one shot
thin           the same detector with all widths scaled (ResNet backbones), from scratch
unpruned       the baseline trained on for the same iterations, nothing pruned (once per seed,
               whatever the targets): what the budget buys without pruning
unpruned_kd    the same with GFPDistillHook and the ``--kd-*`` options of gfp_acts_kd (the
               teacher a frozen copy of the baseline): what the teacher, and its images without
               labels, give the model that keeps all its channels. Nothing prunes, so the
               teacher teaches on every iteration (``--kd-during finetuning`` too; ``pruning``
               is refused). Not in the default ``--methods``
=============  ==============================================================================

The budget: every pruning method trains ``--iters`` iterations after the baseline with the
same optimiser and LR schedule (the pruning configs' one: constant LR for the first half, then
a cosine decay). GFP's pruning steps happen inside those iterations (it reaches the target
after ``pruning_iters`` and fine-tunes with the masks fixed for the rest); the one-shot methods
prune before them (Taylor's gradient batches update no weights) and fine-tune for all of
them. ``thin`` trains from scratch for baseline + ``--iters`` iterations with the baseline's
schedule stretched. Torch-Pruning's ratio and the thin width are searched until mmgfp's cost
model, applied to the final compact module of every method alike, gives the target FLOPs within
``--tol``. ``--train-images N`` trains every method after the baseline on the first ``N``
training images only (the baseline keeps all it was trained on): pruning with few labels.

Each finished (method, seed) run is stored in ``WORK_DIR/runs/<name>/result.json`` and reused
by a later call with the same settings, so seeds can be added one call at a time. A call with
other settings (``--lr``, ``--iters``, ...) whose runs would replace finished ones stops before
training and names them: give it a work dir of its own, delete those runs, or ``--force``.
"""
import argparse
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import _accuracy_kd as K  # noqa: E402
import _common as C  # noqa: E402
# the run, setup and table code lives in these modules; their names stay importable from here
from _accuracy_runs import (  # noqa: E402,F401
    _log_level, _stamp, baseline_ckpt, baseline_iters, changed_runs, finished_runs,
    refuse_replacing, replaced, run_one, save, settings, stored, train_baseline)
from _accuracy_setup import base_config, few_images  # noqa: E402,F401
from _accuracy_table import (LABELS, METHODS, OPT_IN, UNPRUNED, _mean_std, _pm,  # noqa: E402,F401
                             format_tables, plot, summarize)

DEFAULT_CONFIG = osp.join(ROOT, 'configs', 'digits', 'retinanet_r18_fpn_digits.py')
# --quick: one image per batch on a tiny data set; GFP removes up to 1024 units per iteration
# so that it reaches the target within the few iterations.
QUICK = dict(iters=4, baseline_iters=2, seeds=[0], gfp_interval=1, gfp_channels_per_step=1024,
             taylor_batches=1, tol=0.02)


def fill_defaults(args, defaults: dict, quick: dict) -> None:
    """Options left at None take their default, or their ``quick`` value with --quick."""
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, quick[k] if args.quick else v)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=DEFAULT_CONFIG, help='baseline config')
    p.add_argument('--baseline', help='trained baseline checkpoint (else trained here once)')
    p.add_argument('--baseline-iters', type=int,
                   help="baseline training iterations (default: the config's max_iters)")
    p.add_argument('--iters', type=int, help='training iterations after the baseline, for '
                   'every method (default 300; 88, two epochs of the digits set, for '
                   'classifiers)')
    p.add_argument('--seeds', type=int, nargs='+', help='default 0 1 2')
    p.add_argument('--methods', nargs='+', choices=METHODS,
                   default=[m for m in METHODS if m not in OPT_IN],
                   help=f'default: all but {" and ".join(OPT_IN)}')
    p.add_argument('--targets', type=float, nargs='+', default=[0.5],
                   help='fractions of the baseline FLOPs to keep (several give curves)')
    p.add_argument('--tol', type=float, help='FLOPs tolerance of the TP/thin search (0.01)')
    p.add_argument('--lr', type=float, help='LR after the baseline (all methods but thin, '
                   "which uses the baseline's schedule; default: 0.1 x the config's, 2e-4 "
                   'for the digits detectors)')
    p.add_argument('--gfp-interval', type=int, help='iterations between pruning steps (2)')
    p.add_argument('--gfp-channels-per-step', type=int, help='selections per step (32)')
    p.add_argument('--taylor-batches', type=int, help='gradient batches for TP Taylor (4)')
    p.add_argument('--train-images', type=int, metavar='N',
                   help='every method after the baseline trains on the first N training '
                        'images only (the baseline is trained, or was, on all): pruning with '
                        'few labels, where a teacher may know more than they say')
    K.add_args(p, unlabeled=True)
    p.add_argument('--tp-scope', choices=['global', 'local'], default='global',
                   help="Torch-Pruning's ranking: across layers (global_pruning=True, like "
                        'GFP) or the same ratio in every layer')
    p.add_argument('--work-dir', default=osp.join('work_dirs', 'accuracy'))
    p.add_argument('--json', help='write all results here')
    p.add_argument('--plot', help='write the mAP vs FLOPs plot here (PNG)')
    p.add_argument('--quick', action='store_true', help='a few iterations on a tiny data set '
                   '(smoke check of every method; mAP is meaningless)')
    p.add_argument('--force', action='store_true', help='rerun runs stored in WORK_DIR')
    p.add_argument('--stored-only', action='store_true',
                   help='train nothing: tabulate and plot the runs stored in WORK_DIR for '
                        '--targets x --seeds x --methods, skipping (and naming) missing ones')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--progress', type=float, default=30.0, metavar='SECONDS',
                   help='print iterations done and ETA of each training/test run this often '
                        '(0: every iteration)')
    p.add_argument('--verbose', action='store_true', help="keep MMEngine's INFO logs")
    args = p.parse_args(argv)
    # iters None: the task's default (base_config)
    fill_defaults(args, dict(iters=None, seeds=[0, 1, 2], gfp_interval=2,
                             gfp_channels_per_step=32, taylor_batches=4, tol=0.01), QUICK)
    if args.quick and args.baseline_iters is None:
        args.baseline_iters = QUICK['baseline_iters']
    for name in ('iters', 'gfp_interval', 'gfp_channels_per_step', 'taylor_batches'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be a positive integer, got '
                    f'{getattr(args, name)}')
    if args.progress < 0:
        p.error(f'--progress must be >= 0 seconds, got {args.progress}')
    if args.train_images is not None and args.train_images < 1:
        p.error(f'--train-images must be a positive integer, got {args.train_images}')
    if args.train_images is not None and args.quick:
        p.error('--quick trains on a few images already: leave out --train-images')
    if args.baseline_iters is not None and args.baseline_iters < 1:
        p.error(f'--baseline-iters must be a positive integer, got {args.baseline_iters}')
    for t in args.targets:
        if not 0 < t < 1:
            p.error(f'--targets are fractions of the FLOPs to keep, in (0, 1); got {t}')
    if args.stored_only and args.force:
        p.error('--stored-only and --force contradict each other: pick one')
    K.check_args(p, args)
    if args.baseline and not osp.isfile(args.baseline):
        p.error(f'--baseline {args.baseline} does not exist: give a checkpoint of --config, '
                'or leave it out to train the baseline here')
    return args


# ------------------------------------------------------------------------------ main
def start(args):
    """What every accuracy benchmark does first: mmgfp imported (hook, data sets, safe
    checkpoint loading), Torch-Pruning present if a ``tp_*`` method runs, threads, quiet logs
    and progress lines set. Returns the methods module."""
    import torch

    import mmgfp  # noqa: F401
    tp = [m for m in args.methods if m.startswith('tp_')]
    if tp:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            raise SystemExit(f'error: {"/".join(tp)} need(s) Torch-Pruning: PIP_CONSTRAINT='
                             '.venv/mmgfp-constraints.txt .venv/bin/pip install '
                             f'torch-pruning==1.6.1 (or leave {"/".join(tp)} out of '
                             '--methods)') from None
    import _accuracy_methods as M
    torch.set_num_threads(args.threads)
    if not args.verbose:
        C.quiet_logs()
    M.Progress.every = args.progress
    return M


def main(argv=None) -> dict:
    args = parse_args(argv)
    M = start(args)
    t_start = time.perf_counter()
    wd = osp.abspath(args.work_dir)
    base = base_config(args)
    task = M.task()
    k1, k2 = task.keys
    if args.kd_unlabeled is not None:  # before few_images keeps the first N
        args.unlabeled_dataloader = K.unlabeled_loader(base, args.kd_unlabeled,
                                                       args.train_images)
    K.check_hook(args, task, base)
    print(f'[accuracy] {args.config}: {base.model.type}, data and evaluator checked',
          flush=True)
    jobs = [(1.0, seed, m) for seed in args.seeds for m in UNPRUNED if m in args.methods]
    for target in args.targets:
        for seed in args.seeds:  # all methods of a seed before the next seed
            jobs += [(target, seed, m) for m in args.methods if m not in UNPRUNED]
    run_dirs = [osp.join(wd, 'runs', K.run_name(method, target, seed, args))
                for target, seed, method in jobs]
    if not (args.baseline or args.force or args.stored_only or
            osp.isfile(baseline_ckpt(base, args, osp.join(wd, 'baseline')))):
        # a new baseline would be trained: every finished run here was made from another
        refuse_replacing([(d, 'made from another baseline; this call trains a new one')
                          for d in finished_runs(run_dirs)], wd)
    baseline = args.baseline or train_baseline(base, args, osp.join(wd, 'baseline'))
    if args.train_images is not None:
        few_images(base, args.train_images)
    base_model = M.build(base, baseline)
    full = M.measure(base_model)
    sig = settings(args, baseline)
    ctx = {'args': args, 'base': base, 'baseline': baseline, 'full': full, 'work_dir': wd,
           'baseline_iters': baseline_iters(args, base, baseline)}
    LABELS['thin'] = f'thin {base.model.type} (scratch)'
    if not (args.force or args.stored_only):
        refuse_replacing(changed_runs(zip([m for _, _, m in jobs], run_dirs), sig), wd)
    base_path = osp.join(wd, 'baseline_eval.json')
    base_res = stored(base_path, sig, 'baseline')
    if base_res is None and args.stored_only:
        raise SystemExit(f'error: --stored-only, but {base_path} is missing or was made with '
                         'other settings (iters, lr, config, baseline...): give the same '
                         'options as the runs that made it')
    if base_res is None or args.force:
        base_res = dict(M.evaluate(base_model, base, osp.join(wd, 'baseline_eval'),
                                   _stamp('baseline_test'), _log_level(args)),
                        flops=1.0, params=1.0, acts=1.0, seconds=float('nan'),
                        settings=K.run_signature(sig, 'baseline'), full=full)
        save(base_path, base_res)
    del base_model
    print(f'[accuracy] baseline {baseline}: {task.headers[0]} {base_res[k1]:.3f}, '
          f'{full["flops"] / 1e9:.3f} GMACs per {"x".join(map(str, M.INPUT_SIZE))} image',
          flush=True)

    runs, missing = [], []
    for (target, seed, method), run_dir in zip(jobs, run_dirs):
        path = osp.join(run_dir, 'result.json')
        res = None if args.force else stored(path, sig, method)
        if res is None and args.stored_only:
            print(f'[accuracy] {method}, target {target}, seed {seed}: no stored run '
                  'with these settings, left out', flush=True)
            missing.append((method, target, seed))
            continue
        if res is None:
            print(f'[accuracy] {method}, target {target}, seed {seed} ...', flush=True)
            try:
                res = run_one(method, seed, target, ctx)
            except Exception as e:  # noqa: BLE001  (reported in the table)
                import traceback
                traceback.print_exc()
                res = {'method': method, 'seed': seed, 'target': target,
                       'error': f'{type(e).__name__}: {e}'[:300]}
            res['settings'] = K.run_signature(sig, method)
            save(path, res)
        if 'error' not in res:
            print(f'[accuracy]   {method} seed {seed}: FLOPs {100 * res["flops"]:.1f}%,'
                  f' {task.headers[0]} {res[k1]:.3f} ({res["seconds"]:.0f} s)', flush=True)
        runs.append(res)

    rows = summarize(runs, base_res, task.keys)
    total = time.perf_counter() - t_start
    seeds = {t: sorted({r['seed'] for r in runs if r['target'] == t}) for t in args.targets}
    if len({tuple(v) for v in seeds.values()}) == 1:
        seed_txt = 'seeds ' + ' '.join(map(str, seeds[args.targets[0]]))
    else:
        seed_txt = '; '.join(f'{t:g}: seed{"s" if len(v) > 1 else ""} {" ".join(map(str, v))}'
                             for t, v in seeds.items())
    thin = (f' (thin: {ctx["baseline_iters"] + args.iters} from scratch)'
            if 'thin' in args.methods else '')
    images = ('' if args.train_images is None else
              f' on the first {args.train_images} training images')
    budget = (f'{args.iters} iterations{images} after a {ctx["baseline_iters"]}-iteration '
              f'baseline{thin}, {seed_txt}')
    print(f'\n{task.headers[0]} on the test split of {osp.basename(args.config)} at '
          f'{"/".join(map(str, args.targets))} of the FLOPs; budget: {budget}; mean ± std over '
          'seeds')
    print(C.env_line())
    print(format_tables(rows, task.keys, task.headers))
    if missing:
        print(f'left out ({len(missing)} not stored): ' +
              ', '.join(f'{m} {t:g} s{sd}' for m, t, sd in missing))
    print(f'total time {total:.0f} s')
    given = {k: v for k, v in vars(args).items() if k != 'unlabeled_dataloader'}
    payload = {'benchmark': 'accuracy', 'args': given, 'budget': budget,
               'task': task.scope, 'metric': dict(zip(task.keys, task.headers)),
               'baseline': base_res, 'rows': rows, 'runs': runs, 'total_s': total,
               'missing': [dict(method=m, target=t, seed=sd) for m, t, sd in missing]}
    C.write_json(args.json, payload)
    if args.plot:
        plot(rows, runs, args.plot, f'{osp.basename(args.config)}, {budget}', k1,
             task.headers[0])
    return payload


if __name__ == '__main__':
    res = main()
    sys.exit(1 if any('error' in r for r in res['runs']) else 0)
