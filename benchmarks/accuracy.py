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
mmpose estimator or mmseg encoder-decoder config, e.g. ``configs/digits/td-hm_r18_digits.py``
and ``configs/digits/fcn_r18-d8_digits.py``, with its data and test evaluator taken as written:
bbox mAP, keypoint AP or PCK, mIoU; see ``_accuracy_tasks.py``), trained here once (an
epoch-based config needs ``--baseline-iters``) or given as ``--baseline CKPT``, is brought to
``--targets`` of its FLOPs (default 0.5) by each method, for every seed. Before anything
trains, the config is checked (the kind of model; the train/val/test data sets load and their
first image exists; the test evaluator builds and gives the task's metric) and a clear error
names what to fix. Each
training and test run prints its iterations and ETA every ``--progress`` seconds. ``--quick``
uses a tiny generated digits set for the embedded digits data, and the first few images of
any other data set.

=============  ==============================================================================
gfp_acts       FisherPruningHook, delta='acts', prunes while training from the baseline
gfp_flops      the same with delta='flops'
gfp_acts_kd    gfp_acts with GFPDistillHook's defaults (channel-wise distillation of the FPN
               outputs from the baseline, pruned channels left out) while pruning and
               fine-tuning; ``--kd-losses JSON`` / ``--kd-during`` / ``--kd-weight`` choose
               another recipe (``_accuracy_kd.py``), named in the table
tp_l1          Torch-Pruning MetaPruner, GroupMagnitudeImportance(p=1) (group L1), one shot,
               ranked across layers (``--tp-scope global``, like GFP) by default
tp_taylor      Torch-Pruning MetaPruner, GroupTaylorImportance from ``--taylor-batches``
               training batches of gradients, one shot
random         mmgfp's channel groups, units removed in random order, one shot
thin           the same detector with all widths scaled (ResNet backbones), from scratch
unpruned       the baseline trained on for the same iterations, nothing pruned (once per seed,
               whatever the targets): what the budget buys without pruning
=============  ==============================================================================

The budget: every pruning method trains ``--iters`` iterations after the baseline with the
same optimiser and LR schedule (the pruning configs' one: constant LR for the first half, then
a cosine decay). GFP's pruning steps happen inside those iterations (it reaches the target
after ``pruning_iters`` and fine-tunes with the masks fixed for the rest); the one-shot methods
prune before them (Taylor's gradient batches update no weights) and fine-tune for all of
them. ``thin`` trains from scratch for baseline + ``--iters`` iterations with the baseline's
schedule stretched. Torch-Pruning's ratio and the thin width are searched until mmgfp's cost
model, applied to the final compact module of every method alike, gives the target FLOPs within
``--tol``.

Each finished (method, seed) run is stored in ``WORK_DIR/runs/<name>/result.json`` and reused
by a later call with the same settings, so seeds can be added one call at a time.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time
from typing import Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import _accuracy_kd as K  # noqa: E402
import _common as C  # noqa: E402

METHODS = ['gfp_acts', 'gfp_acts_kd', 'gfp_flops', 'tp_l1', 'tp_taylor', 'random', 'thin',
           'unpruned']
LABELS = {'baseline': 'baseline (unpruned)', 'gfp_acts': 'GFP (acts)',
          'gfp_acts_kd': 'GFP (acts) + distillation',
          'gfp_flops': 'GFP (flops)', 'tp_l1': 'TP group L1',
          'tp_l1_kd': 'TP group L1 + distillation', 'tp_taylor': 'TP group Taylor',
          'random': 'random groups', 'thin': 'thin RetinaNet (scratch)',
          'unpruned': 'unpruned, same budget'}
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
    p.add_argument('--methods', nargs='+', default=METHODS, choices=METHODS)
    p.add_argument('--targets', type=float, nargs='+', default=[0.5],
                   help='fractions of the baseline FLOPs to keep (several give curves)')
    p.add_argument('--tol', type=float, help='FLOPs tolerance of the TP/thin search (0.01)')
    p.add_argument('--lr', type=float, help='LR after the baseline (all methods but thin, '
                   "which uses the baseline's schedule; default: 0.1 x the config's, 2e-4 "
                   'for the digits detectors)')
    p.add_argument('--gfp-interval', type=int, help='iterations between pruning steps (2)')
    p.add_argument('--gfp-channels-per-step', type=int, help='selections per step (32)')
    p.add_argument('--taylor-batches', type=int, help='gradient batches for TP Taylor (4)')
    K.add_args(p)
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


# ------------------------------------------------------------------------------ setup
def base_config(args):
    """The baseline config as written, checked before anything trains (tiny data for --quick).

    Also tells the methods module which task (``_accuracy_tasks``) and input size it runs.

    Raises:
        SystemExit: naming what cannot work (model, data files, evaluator, schedule, thin)
            and how to fix it, before the baseline trains for minutes and fails later.
    """
    import _accuracy_methods as M
    import _accuracy_thin as thin
    from _accuracy_tasks import task_of
    from mmgfp.apis.checking.check import load_config
    from mmgfp.apis.inputs import default_input_size
    try:
        cfg = load_config(args.config)
    except FileNotFoundError as e:
        raise SystemExit(f'error: --config: {e}') from None
    _fail = _failer(args.config)
    task = task_of(cfg)
    check_model(cfg, task, _fail)
    if args.quick:
        quick_data(cfg, task, args.work_dir)
    if 'thin' in args.methods and (why := thin.thin_problem(cfg)):
        _fail(f'the thin method cannot scale its widths: {why}. Leave thin out of --methods')
    cfg.custom_hooks = []
    check_data(cfg, task, _fail)
    by_iterations(cfg, task, args, _fail)
    if args.iters is None:
        args.iters = task.default_iters
    if args.lr is None:  # as the pruning configs do: a tenth of the baseline's LR
        args.lr = round(0.1 * cfg.optim_wrapper.optimizer.lr, 12)
    M.set_task(task, tuple(default_input_size(cfg)))
    return cfg


def by_iterations(cfg, task, args, fail) -> None:
    """An epoch-based config rewritten to train by iterations (``IterBasedTrainLoop``, the
    schedulers in iterations): the benchmark counts iterations. An epoch is
    ``ceil(len(train set) / batch_size)`` iterations (floor with ``drop_last``)."""
    import copy
    import math

    import _accuracy_methods as M
    loop = dict(cfg.get('train_cfg') or {})
    if loop.get('max_iters') is not None:
        return
    if loop.get('max_epochs') is None:
        fail(f'its train_cfg={loop} gives neither max_iters nor max_epochs: give '
             '--baseline-iters N or one of them')
    loader = cfg.train_dataloader
    size = len(task.registry('DATASETS').build(copy.deepcopy(loader.dataset)))
    div = math.floor if loader.get('drop_last') else math.ceil
    epoch = max(1, div(size / loader.batch_size))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=loop['max_epochs'] * epoch,
                         val_interval=loop.get('val_interval', 1) * epoch)
    cfg.param_scheduler = M.epochs_to_iters(cfg.get('param_scheduler') or [], epoch)
    print(f'[accuracy] {osp.basename(args.config)} trains {loop["max_epochs"]} epochs of '
          f'{epoch} iterations: {cfg.train_cfg["max_iters"]} iterations here', flush=True)


def _failer(config: str):
    def fail(msg: str):
        raise SystemExit(f'error: --config {config}: {msg}')
    return fail


def check_model(cfg, task, fail) -> None:
    """The config must build the kind of model ``task`` measures (e.g. a single-stage mmdet
    detector: one ``bbox_head``, no RoI head)."""
    from mmengine.registry import init_default_scope

    from mmgfp.codebases.base import prepare_scope
    prepare_scope(task.scope)
    init_default_scope(cfg.get('default_scope') or task.scope)
    model = cfg.get('model') or {}
    cls = task.registry('MODELS').get(model.get('type')) if model.get('type') else None
    if cls is None:
        fail(f'model type {model.get("type")!r} is not a registered {task.scope} model')
    why = task.model_problem(model, cls)
    if why:
        fail(f'model {model.get("type")!r} {why}: the benchmark prunes and measures '
             f'{task.what}')


def quick_data(cfg, task, work_dir: str) -> None:
    """--quick: a few images per split, ``task.quick_batch`` (mostly one) per batch.

    The embedded digits set of the task is generated tiny into ``WORK_DIR/data_quick``
    (evaluator annotation paths under the old data root follow it); any other data set keeps
    its files and uses its first images (``indices``).
    """
    splits = [k for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')
              if cfg.get(k)]
    digits = all(cfg[k].dataset.get('type') == task.digits for k in splits)
    root = osp.join(osp.abspath(work_dir), 'data_quick') + '/'
    for k in splits:
        ds = cfg[k].dataset
        if digits:
            old, ds.data_root = ds.get('data_root', ''), root
            ds.generate_cfg = dict(num_train=8, num_val=4, seed=0)
            for ev in ('val_evaluator', 'test_evaluator'):
                ann = (cfg.get(ev) or {}).get('ann_file')
                if old and isinstance(ann, str) and ann.startswith(old):
                    cfg[ev].ann_file = root + ann[len(old):]
        elif 'ann_file' in ds:  # a plain data set, not a wrapper
            ds.indices = 8 if k == 'train_dataloader' else 4
        cfg[k].batch_size = task.quick_batch


def check_data(cfg, task, fail) -> None:
    """Train/val/test data sets load, have images on disk, and the test evaluator builds."""
    import copy

    from mmengine.evaluator import Evaluator
    datasets = task.registry('DATASETS')
    seen = []
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if loader is None:
            if key != 'val_dataloader':
                fail(f'it has no {key}')
            continue
        if loader.dataset in seen:
            continue
        seen.append(loader.dataset)
        try:
            ds = datasets.build(copy.deepcopy(loader.dataset))
        except Exception as e:  # noqa: BLE001  (re-raised as a message naming the key)
            fail(f'{key}.dataset cannot be loaded ({type(e).__name__}: {e}). Fix its '
                 'data_root / ann_file / data_prefix')
        if len(ds) == 0:
            fail(f'{key}.dataset has no images (ann_file, filter_cfg?)')
        img = ds.get_data_info(0).get('img_path')
        if img and not osp.isfile(img):
            fail(f'{key}.dataset: image {img} does not exist. Fix its data_prefix')
    _check_evaluator(cfg, task, fail, Evaluator)


def _check_evaluator(cfg, task, fail, Evaluator) -> None:
    import copy
    ev = cfg.get('test_evaluator')
    if not ev:
        fail(f'it has no test_evaluator (the benchmark reports its {task.headers[0]})')
    try:
        metrics = Evaluator(copy.deepcopy(ev)).metrics
    except Exception as e:  # noqa: BLE001
        fail(f'test_evaluator cannot be built ({type(e).__name__}: {e}). Fix its ann_file / '
             'settings')
    if not any(task.metric_ok(m) for m in metrics):
        fail(f'test_evaluator {[type(m).__name__ for m in metrics]} gives no '
             f'{task.headers[0]}: use {task.evaluator_hint}')


def train_baseline(base, args, work_dir: str) -> str:
    import _accuracy_methods as M
    iters = args.baseline_iters or base.train_cfg.max_iters
    ckpt = osp.join(work_dir, f'iter_{iters}.pth')
    if osp.isfile(ckpt) and not args.force:
        print(f'[accuracy] reusing baseline {ckpt}', flush=True)
        return ckpt
    if args.stored_only:
        raise SystemExit(f'error: --stored-only, but no baseline checkpoint {ckpt}: give '
                         '--baseline CKPT or the --work-dir of the earlier runs')
    print(f'[accuracy] training the baseline for {iters} iterations', flush=True)
    cfg = M.train_cfg(base, work_dir, iters, 0, _stamp('baseline'), _log_level(args),
                      M.iter_based(M.scale_schedule(base.param_scheduler,
                                                    base.train_cfg.get('max_iters', iters),
                                                    iters)))
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=iters,
                                        max_keep_ckpts=1)
    M.runner(cfg).train()
    return ckpt


def _stamp(name: str) -> str:
    return f'{name}_{time.strftime("%Y%m%d_%H%M%S")}_{os.getpid()}'


def _log_level(args) -> str:
    return 'INFO' if args.verbose else 'WARNING'


def settings(args, baseline: str) -> dict:
    """What a stored run must share with this call to be reused."""
    st = os.stat(baseline)
    keys = ('iters', 'lr', 'gfp_interval', 'gfp_channels_per_step', 'taylor_batches',
            'tp_scope', 'tol', 'quick', 'baseline_iters')
    sig = dict({k: getattr(args, k) for k in keys}, config=osp.abspath(args.config),
               baseline=[osp.abspath(baseline), st.st_size, int(st.st_mtime)])
    return K.add_signature(sig, args)  # the kd options only when given


# ------------------------------------------------------------------------------ one run
def run_one(method: str, seed: int, target: float, ctx: dict) -> dict:
    """Bring the baseline to ``target`` FLOPs with ``method``, train, measure, evaluate."""
    import torch

    import _accuracy_methods as M
    import _accuracy_thin as T
    args, base, ckpt, full = ctx['args'], ctx['base'], ctx['baseline'], ctx['full']
    name = f'{method}_t{round(target * 100)}_s{seed}'
    wd = osp.join(ctx['work_dir'], 'runs', name)
    level = _log_level(args)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    out = {'method': method, 'seed': seed, 'target': target, 'name': name}
    ft = M.train_cfg(base, wd, args.iters, seed, _stamp(name), level,
                     M.finetune_schedule(args.iters), args.lr)
    if method == 'unpruned':
        model = M.build(base, ckpt)
        M.runner(ft, model).train()
        info = {}
        out['train_iters'] = args.iters
    elif method.startswith('gfp'):
        model, info = M.gfp(ft, ckpt, method.split('_')[1], target, args.gfp_interval,
                            args.gfp_channels_per_step, distill=K.hook_args(method, args))
        out['train_iters'] = args.iters
    elif method == 'thin':
        base_iters = ctx['baseline_iters']
        total = base_iters + args.iters
        width, flops, trials = T.thin_search(base, target, full['flops'], args.tol)
        cfg = M.train_cfg(T.thin_cfg(base, width), wd, total, seed, _stamp(name), level,
                          M.scale_schedule(base.param_scheduler,
                                           base.train_cfg.get('max_iters', base_iters), total))
        run = M.runner(cfg)
        run.train()
        model = M.unwrap(run.model)
        info = {'width': width, 'search': trials}
        out['train_iters'] = total
    else:
        model = M.build(base, ckpt)
        if method == 'random':
            info = M.random_prune(model, target, seed)
        else:
            if method == 'tp_taylor':
                M.taylor_gradients(model, _batches(base, seed, args.taylor_batches))
            model, info = M.tp_prune_to(model, method.split('_')[1], target, full['flops'],
                                        args.tol, args.tp_scope == 'global')
        info['pruned_eval'] = M.evaluate(model, base, wd, _stamp(name + '_pruned'), level)
        if K.is_kd(method):  # the sliced student distils from the unpruned baseline
            ft.custom_hooks.insert(0, K.sliced_hook(args, M.task(), ckpt, base))
        run = M.runner(ft, model)
        run.train()
        info.update(M.distilled(run))
        out['train_iters'] = args.iters
    cost = M.measure(model)
    out.update({k: cost[k] / full[k] for k in ('flops', 'params', 'acts')})
    out.update(M.evaluate(model, base, wd, _stamp(name + '_test'), level))
    out['info'] = info
    out['seconds'] = time.perf_counter() - t0
    return out


def _batches(base, seed: int, num: int) -> list:
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(base.train_dataloader, seed=seed)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == num:
            break
    return batches


def stored(path: str, sig: dict, method: Optional[str] = None):
    """The run stored at ``path`` if made with settings ``sig`` (None: missing, other
    settings or failed). With ``method``, only the settings that method uses are compared
    (the distillation options only for ``*_kd``)."""
    if not osp.isfile(path):
        return None
    with open(path) as f:
        res = json.load(f)
    have = res.get('settings') or {}
    if method is not None:
        have, sig = K.run_signature(have, method), K.run_signature(sig, method)
    return res if have == sig and 'error' not in res else None


def save(path: str, res: dict) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(res, f, indent=1, default=str)
    os.replace(path + '.tmp', path)


# ------------------------------------------------------------------------------ summary
def _mean_std(xs):
    if not xs:
        return float('nan'), float('nan')
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float('nan'))


def summarize(runs: list, baseline: dict, keys=('mAP', 'mAP50')) -> list:
    """One row per (target, method): means and stds over seeds of the costs and of the
    task's metric ``keys`` (the first also right after one-shot pruning)."""
    k1, k2 = keys
    rows = [dict(baseline, method='baseline', n=1, target=1.0,
                 **{k1 + '_std': float('nan'), k2 + '_std': float('nan')})]
    cells = []
    for r in runs:
        if (r['target'], r['method']) not in cells:
            cells.append((r['target'], r['method']))
    for target, method in sorted(cells, key=lambda k: (-k[0], METHODS.index(k[1]))):
        ok = [r for r in runs if r['method'] == method and r['target'] == target and
              'error' not in r]
        bad = [r for r in runs if r['method'] == method and r['target'] == target and
               'error' in r]
        row = {'method': method, 'target': target, 'n': len(ok), 'failed': len(bad),
               'seeds': [r['seed'] for r in ok]}
        for k in ('flops', 'params', 'acts', k1, k2, 'seconds'):
            row[k], row[k + '_std'] = _mean_std([r[k] for r in ok])
        row['pruned_' + k1] = _mean_std([r['info']['pruned_eval'][k1] for r in ok
                                       if 'pruned_eval' in r.get('info', {})])[0]
        row['error'] = bad[0]['error'] if bad else ''
        kd = next((r['info']['kd'] for r in ok if 'kd' in r.get('info', {})), None)
        if kd:  # the distillation recipe that ran
            row['kd'] = kd
        rows.append(row)
    return rows


def _pm(mean, std, digits=3):
    if mean != mean:
        return 'n/a'
    return f'{mean:.{digits}f}' + ('' if std != std else f' ± {std:.{digits}f}')


def format_tables(rows: list, keys=('mAP', 'mAP50'), headers=('bbox mAP', 'mAP@0.5')) -> str:
    """The main table (costs and metric per method) and the details (one-shot, time)."""
    k1, k2 = keys
    main, detail = [], []
    for r in rows:
        label = LABELS[r['method']]
        if r.get('kd'):
            label += f" ({K.recipe(r['kd']['losses'], r['kd'].get('during'))})"
        main.append({'method': label, 'flops': f'{100 * r["flops"]:.1f}',
                     'params': f'{100 * r["params"]:.1f}', 'acts': f'{100 * r["acts"]:.1f}',
                     'map': _pm(r[k1], r[k1 + '_std']), 'map50': _pm(r[k2],
                                                                     r[k2 + '_std']),
                     'n': f'{r["n"]}' + (f' ({r.get("failed")} failed)' if r.get('failed')
                                         else '')})
        if r['method'] != 'baseline':
            detail.append({'method': LABELS[r['method']], 'target': f'{r["target"]:.2f}',
                           'pruned': _pm(r['pruned_' + k1], float('nan')),
                           'secs': f'{r["seconds"]:.0f}', 'error': r.get('error', '')})
    out = C.table(main, ['method', 'flops', 'params', 'acts', 'map', 'map50', 'n'],
                  ['method', 'FLOPs %', 'params %', 'acts %', *headers, 'seeds'])
    out += '\n\n' + C.table(detail, ['method', 'target', 'pruned', 'secs', 'error'],
                            ['method', 'FLOPs target',
                             f'{headers[0]} right after one-shot pruning',
                             's per run', 'error'])
    return out


def _err(std: float) -> float:
    return 0 if std != std else std


def plot(rows: list, runs: list, path: str, title: str, key: str = 'mAP',
         label: str = 'bbox mAP') -> None:
    """Left: the metric ``key`` (e.g. mAP) vs FLOPs (a curve per method when there are several
    targets). Right: the metric of every method at each target, mean ± std with the single
    seeds as dots. ``label`` names the metric on the axes."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    targets = sorted({r['target'] for r in rows if r['method'] != 'baseline'}, reverse=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={'width_ratios': [1, 1.2]})
    base = rows[0]
    methods = [m for m in METHODS if any(r['method'] == m and r['n'] for r in rows)]
    markers = dict(zip(METHODS, 'ohsD*^vXP'))
    ax = axes[0]
    ax.plot([100.0], [base[key]], 'k*', ms=12, label=LABELS['baseline'])
    # curves end at the unpruned model with the same training budget when it was measured
    end = next((r for r in rows if r['method'] == 'unpruned' and r['n']), base)
    for i, method in enumerate(methods):
        rs = sorted((r for r in rows if r['method'] == method and r['n']),
                    key=lambda r: r['flops'])
        colour = f'C{METHODS.index(method)}'
        if len(rs) > 1 and method != 'unpruned':
            # through the targets and on to the unpruned model, except for the thin networks:
            # their full-width counterpart (trained from scratch as long) is not measured
            tail = [] if method == 'thin' else [(100.0, end[key])]
            pts = [(100 * r['flops'], r[key]) for r in rs] + tail
            ax.plot([p[0] for p in pts], [p[1] for p in pts], '-', color=colour, alpha=0.5)
        ax.errorbar([100 * r['flops'] for r in rs], [r[key] for r in rs],
                    yerr=[_err(r[key + '_std']) for r in rs],
                    fmt=markers[method], color=colour, capsize=3, label=LABELS[method])
    ax.axhline(base[key], color='grey', ls='--', lw=1)
    ax.set_xlabel('FLOPs (% of the baseline, mmgfp cost model)')
    ax.set_ylabel(f'{label} (test split)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower center', ncol=2)
    ax = axes[1]
    width = 0.8 / max(1, len(targets))
    for j, target in enumerate(targets):
        for i, method in enumerate(methods):
            r = next((r for r in rows if r['method'] == method and r['target'] == target
                      and r['n']), None)
            if r is None:
                continue
            x = i + (j - (len(targets) - 1) / 2) * width
            colour = f'C{METHODS.index(method)}'
            ax.errorbar([x], [r[key]], yerr=[_err(r[key + '_std'])],
                        fmt=markers[method], color=colour, capsize=4, ms=8)
            seeds = [s[key] for s in runs if s['method'] == method and
                     s['target'] == target and 'error' not in s]
            ax.plot([x + 0.12] * len(seeds), seeds, '.', color=colour, alpha=0.5)
            ax.annotate(f'{100 * r["flops"]:.0f}%', (x, r[key]), textcoords='offset points',
                        xytext=(-10, -14), fontsize=7, color='dimgrey')
    ax.axhline(base[key], color='grey', ls='--', lw=1)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([LABELS[m] for m in methods], rotation=20, ha='right', fontsize=8)
    ax.set_ylabel(f'{label} (mean ± std; dots: seeds; label: FLOPs)')
    ax.grid(alpha=0.3, axis='y')
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f'wrote {path}')


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
    K.check_hook(args, task, base)
    print(f'[accuracy] {args.config}: {base.model.type}, data and evaluator checked',
          flush=True)
    baseline = args.baseline or train_baseline(base, args, osp.join(wd, 'baseline'))
    base_model = M.build(base, baseline)
    full = M.measure(base_model)
    sig = settings(args, baseline)
    ctx = {'args': args, 'base': base, 'baseline': baseline, 'full': full, 'work_dir': wd,
           'baseline_iters': args.baseline_iters or base.train_cfg.max_iters}
    LABELS['thin'] = f'thin {base.model.type} (scratch)'
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
    jobs = [(1.0, seed, 'unpruned') for seed in args.seeds if 'unpruned' in args.methods]
    for target in args.targets:
        for seed in args.seeds:  # all methods of a seed before the next seed
            jobs += [(target, seed, m) for m in args.methods if m != 'unpruned']
    for target, seed, method in jobs:
        path = osp.join(wd, 'runs', f'{method}_t{round(target * 100)}_s{seed}',
                        'result.json')
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
    budget = (f'{args.iters} iterations after a {ctx["baseline_iters"]}-iteration baseline'
              f'{thin}, {seed_txt}')
    print(f'\n{task.headers[0]} on the test split of {osp.basename(args.config)} at '
          f'{"/".join(map(str, args.targets))} of the FLOPs; budget: {budget}; mean ± std over '
          'seeds')
    print(C.env_line())
    print(format_tables(rows, task.keys, task.headers))
    if missing:
        print(f'left out ({len(missing)} not stored): ' +
              ', '.join(f'{m} {t:g} s{sd}' for m, t, sd in missing))
    print(f'total time {total:.0f} s')
    payload = {'benchmark': 'accuracy', 'args': vars(args), 'budget': budget,
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
