"""One run of ``benchmarks/accuracy.py``: a method brings the baseline to a FLOPs target,
trains, and is measured; runs are stored as JSON and reused when their settings match.
"""
import json
import os
import os.path as osp
import time
from typing import Optional

import _accuracy_kd as K


def baseline_ckpt(base, args, work_dir: str) -> str:
    """Where :func:`train_baseline` keeps the baseline it trains."""
    return osp.join(work_dir, f'iter_{args.baseline_iters or base.train_cfg.max_iters}.pth')


def train_baseline(base, args, work_dir: str) -> str:
    import _accuracy_methods as M
    iters = args.baseline_iters or base.train_cfg.max_iters
    ckpt = baseline_ckpt(base, args, work_dir)
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


def baseline_iters(args, base, baseline: str) -> int:
    """How long the baseline trained: ``--baseline-iters``, else the iteration stored in a
    given ``--baseline`` checkpoint (MMEngine's ``meta['iter']``), else the config's
    ``max_iters`` (the baseline trained here). A checkpoint without it falls back to the config
    and says so: the number labels the table and sets the thin network's scratch budget."""
    if args.baseline_iters:
        return args.baseline_iters
    if args.baseline:
        import torch
        meta = torch.load(baseline, map_location='cpu', weights_only=False).get('meta') or {}
        if isinstance(meta.get('iter'), int) and meta['iter'] > 0:
            return meta['iter']
        print(f'[accuracy] {baseline} stores no iteration (meta.iter): taking the config\'s '
              f'{base.train_cfg.max_iters}; give --baseline-iters if it trained longer',
              flush=True)
    return base.train_cfg.max_iters


def settings(args, baseline: str) -> dict:
    """What a stored run must share with this call to be reused."""
    st = os.stat(baseline)
    keys = ('iters', 'lr', 'gfp_interval', 'gfp_channels_per_step', 'taylor_batches',
            'tp_scope', 'tol', 'quick', 'baseline_iters')
    sig = dict({k: getattr(args, k) for k in keys}, config=osp.abspath(args.config),
               baseline=[osp.abspath(baseline), st.st_size, int(st.st_mtime)])
    if getattr(args, 'train_images', None) is not None:  # runs stored before it still match
        sig['train_images'] = args.train_images
    return K.add_signature(sig, args)  # the kd options only when given


def run_one(method: str, seed: int, target: float, ctx: dict) -> dict:
    """Bring the baseline to ``target`` FLOPs with ``method``, train, measure, evaluate."""
    import torch

    import _accuracy_methods as M
    import _accuracy_thin as T
    args, base, ckpt, full = ctx['args'], ctx['base'], ctx['baseline'], ctx['full']
    name = K.run_name(method, target, seed, args)
    wd = osp.join(ctx['work_dir'], 'runs', name)
    level = _log_level(args)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    out = {'method': method, 'seed': seed, 'target': target, 'name': name}
    ft = M.train_cfg(base, wd, args.iters, seed, _stamp(name), level,
                     M.finetune_schedule(args.iters), args.lr)
    if method.startswith('unpruned'):
        model = M.build(base, ckpt)
        distill = K.hook_args(method, args)
        if distill is not None:  # the teacher: GFPDistillHook's copy of the loaded model
            ft.custom_hooks.insert(0, dict(type='GFPDistillHook', **distill))
        run = M.runner(ft, model)
        run.train()
        info = K.distilled(run)
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
        info.update(K.distilled(run))
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


def _finished(path: str) -> Optional[dict]:
    """The run stored at ``path`` if it finished (None: missing, unreadable or failed)."""
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, ValueError):
        return None
    return res if isinstance(res, dict) and 'error' not in res else None


def replaced(path: str, sig: dict, method: Optional[str] = None) -> Optional[str]:
    """What a call with settings ``sig`` would lose at ``path``: for a finished run stored
    there with other settings, the settings that differ (``"lr 0.0002 -> 0.001"``); None when
    nothing would be lost (no run, a failed run, or the same settings: reused)."""
    res = _finished(path)
    if res is None:
        return None
    have = res.get('settings') or {}
    if method is not None:
        have, sig = K.run_signature(have, method), K.run_signature(sig, method)
    unused = _unused(method)
    keys = [k for k in sorted(set(have) | set(sig))
            if k not in unused and have.get(k) != sig.get(k)]
    return ', '.join(_change(k, have.get(k), sig.get(k)) for k in keys) or None


def _unused(method: Optional[str]) -> tuple:
    """Settings a method's run does not depend on: rerunning it after they change loses
    nothing, so :func:`replaced` does not count them."""
    unused = ()
    if method is None:
        return unused
    if not method.startswith('gfp'):
        unused += ('gfp_interval', 'gfp_channels_per_step')
    if method != 'tp_taylor':
        unused += ('taylor_batches',)
    if not method.startswith('tp'):
        unused += ('tp_scope',)
    if not method.startswith(('tp', 'thin')):
        unused += ('tol',)
    if method == 'thin':
        unused += ('lr',)
    return unused


def _change(key: str, old, new) -> str:
    """One setting's change, short: a checkpoint or a table is named, not printed."""
    if key == 'baseline':
        return 'baseline: another checkpoint, or the same file trained again'
    old, new = repr(old), repr(new)
    if len(old) + len(new) > 80:
        return f'{key} changed'
    return f'{key} {old} -> {new}'


def finished_runs(run_dirs) -> list:
    """The run folders among ``run_dirs`` that hold a finished run."""
    return [d for d in run_dirs if _finished(osp.join(d, 'result.json')) is not None]


def changed_runs(runs, sig: dict) -> list:
    """``(run folder, what differs)`` for each ``(method, run folder)`` of ``runs`` whose
    finished run was made with other settings than ``sig`` (see :func:`replaced`)."""
    found = []
    for method, run_dir in runs:
        why = replaced(osp.join(run_dir, 'result.json'), sig, method)
        if why:
            found.append((run_dir, why))
    return found


def refuse_replacing(found, work_dir: str) -> None:
    """Stop before anything trains when finished runs of other settings would be replaced.

    A run folder is named by method, target and seed (and a hash of the distillation options),
    not by ``--lr``, ``--iters``, ``--gfp-channels-per-step`` and the like, so a call with other
    settings in the same work dir would train again and overwrite the stored result.

    Args:
        found (list[tuple[str, str]]): ``(run folder, what differs)`` for each such run.
        work_dir (str): The work dir, named in the message.
    """
    if not found:
        return
    shown = '; '.join(f'{osp.basename(d)} ({why})' for d, why in found[:3])
    more = f' and {len(found) - 3} more' if len(found) > 3 else ''
    raise SystemExit(
        f'error: {len(found)} finished run(s) in {work_dir}/runs were made with other settings '
        f'and would be trained again and replaced: {shown}{more}. Give these settings a '
        '--work-dir of their own, or delete those run folders, or --force to train every run '
        'of this call again')


def save(path: str, res: dict) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(res, f, indent=1, default=str)
    os.replace(path + '.tmp', path)
