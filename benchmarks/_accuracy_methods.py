"""The methods of ``benchmarks/accuracy.py``: how each one reaches the FLOPs budget.

Every method ends with a physically smaller ``nn.Module`` (an mmdet detector whose layers have
the pruned sizes). FLOPs, activations and parameters are then taken from that module by one
function, :func:`measure` (mmgfp's cost model: the conv/linear calls traced on one 128x128
image), for every method alike, so the budgets are comparable.

* ``gfp``: FisherPruningHook prunes while an MMEngine Runner trains from the baseline weights;
  the final masks are then sliced away (:func:`mmgfp.core.apply_spec`).
* ``tp_prune_to``: Torch-Pruning 1.6.1's MetaPruner (group L1 magnitude, group Taylor) on a
  copy of the baseline, its pruning ratio searched until the FLOPs match the target.
* ``random_prune``: mmgfp's channel groups, units removed in random order until the target.
* ``thin_cfg`` / ``thin_search`` (in ``_accuracy_thin``): the same detector with every width
  scaled down.
"""
import copy
import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn


INPUT_SIZE = (128, 128)  # the digits canvases of the detectors; set_task() changes it
TASK = None  # the _accuracy_tasks.Task of the benchmarked config; set_task() sets it


def set_task(task, input_size: Sequence[int]) -> None:
    """Measure, prune and evaluate models of ``task`` (an ``_accuracy_tasks.Task``) at
    ``input_size`` (the config's own, ``mmgfp.apis.inputs.default_input_size``)."""
    global TASK, INPUT_SIZE
    TASK, INPUT_SIZE = task, tuple(input_size)


def task():
    """The task set by :func:`set_task` (detection when none was set)."""
    if TASK is None:
        from _accuracy_tasks import Detection
        set_task(Detection(), INPUT_SIZE)
    return TASK


# --------------------------------------------------------------------------- models, costs
def build(cfg, checkpoint: Optional[str] = None) -> nn.Module:
    """Build ``cfg.model`` and load ``checkpoint`` strictly.

    ``init_weights`` runs here, before loading, so that a Runner later given this module does
    not initialise it again (MMEngine's BaseModule initialises only once).
    """
    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.deploying.deploy import load_strict, read_checkpoint
    model = build_model(cfg, init=True)
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint)
        load_strict(model, ckpt.get('state_dict', ckpt), f'checkpoint {checkpoint}')
    return model


def measure(model: nn.Module, input_size: Optional[Sequence[int]] = None
            ) -> Dict[str, float]:
    """FLOPs (MACs) and activations per image by mmgfp's cost model, and parameters.

    Traced on a copy in eval mode (tensor path), so the model's BN statistics stay untouched.
    ``input_size`` defaults to the task's (:func:`set_task`).
    """
    input_size = input_size or INPUT_SIZE
    from mmgfp.apis.inputs import demo_batch, tensor_forward
    from mmgfp.core import build_groups, count
    m = copy.deepcopy(model).eval()
    gs = build_groups(m, tensor_forward(demo_batch(m, 1, input_size)))
    c = count(gs, lambda k: gs.groups[k].channels)
    return {'flops': float(c['flops']), 'acts': float(c['acts']),
            'params': float(sum(p.numel() for p in model.parameters()))}


def unwrap(model: nn.Module) -> nn.Module:
    from mmengine.model import is_model_wrapper
    return model.module if is_model_wrapper(model) else model


# --------------------------------------------------------------------------- runners
# Keys of a config that MMEngine's Runner takes as arguments (as Runner.from_cfg passes them).
RUNNER_KEYS = ('work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
               'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler',
               'val_evaluator', 'test_evaluator', 'default_hooks', 'custom_hooks',
               'load_from', 'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level',
               'visualizer', 'default_scope', 'randomness', 'experiment_name')


def runner(cfg, model: Optional[nn.Module] = None):
    """A Runner for ``cfg``; with ``model``, that module instead of building ``cfg.model``."""
    from mmengine.runner import Runner
    if model is None:
        return Runner.from_cfg(cfg)
    kwargs = {k: copy.deepcopy(cfg.get(k)) for k in RUNNER_KEYS if cfg.get(k) is not None}
    return Runner(model=model, **kwargs)


def scale_schedule(schedulers: List[dict], old_iters: int, new_iters: int) -> List[dict]:
    """The same LR schedule stretched from ``old_iters`` to ``new_iters`` iterations (a
    scheduler that ends with the training starts at the same fraction of it)."""
    out = []
    for s in copy.deepcopy(list(schedulers)):
        if s.get('end') == old_iters:
            s['end'] = new_iters
            s['begin'] = round(s.get('begin', 0) * new_iters / old_iters)
        if 'milestones' in s:
            s['milestones'] = [max(1, round(m * new_iters / old_iters)) for m in s['milestones']]
        if 'T_max' in s:
            s['T_max'] = max(1, round(s['T_max'] * new_iters / old_iters))
        out.append(s)
    return out


def iter_based(schedulers: List[dict]) -> List[dict]:
    """Epoch-based schedulers converted to iterations (``convert_to_iter_based``): the
    benchmark trains by iterations, where an epoch-based scheduler would never step."""
    out = copy.deepcopy(list(schedulers))
    for s in out:
        if s.get('by_epoch', True):
            s['convert_to_iter_based'] = True
    return out


def _named(base, work_dir: str, name: str, log_level: str):
    cfg = copy.deepcopy(base)
    cfg.work_dir = work_dir
    cfg.experiment_name = name
    cfg.log_level = log_level
    if cfg.get('visualizer') is not None:
        # mmdet's runtime names every visualizer 'visualizer': the instance (and its log dir)
        # of the first Runner in this process would be reused by all later ones
        cfg.visualizer.name = name
    return cfg


class Progress:
    """Print ``[accuracy] <label>: iter i/n, s/iter, ETA`` while a Runner trains or tests.

    MMEngine's own logs are silenced in the benchmark (tables stay readable), so long steps
    would show nothing for minutes. A line is printed every ``every`` seconds and at the end.
    Registered lazily as an MMEngine hook (``_progress_hook``) under a benchmark-only name.
    """
    every = 30.0  # seconds between lines; accuracy.py sets it from --progress

    def __init__(self, label: str):
        self.label = label
        self.t0 = self.last = time.perf_counter()

    def start(self) -> None:
        self.t0 = self.last = time.perf_counter()

    def tick(self, done: int, total: int, what: str) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < self.every:
            return
        self.last = now
        per = (now - self.t0) / max(1, done)
        eta = per * (total - done)
        print(f'[accuracy]   {self.label}: {what} {done}/{total}, {per:.2f} s/iter, '
              f'ETA {eta / 60:.1f} min', flush=True)


def _progress_hook() -> str:
    """The registered name of the hook that drives :class:`Progress` (registered once)."""
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS
    name = 'MMGFPAccuracyProgressHook'
    if HOOKS.get(name) is None:

        class _ProgressHook(Hook):
            priority = 'VERY_LOW'

            def __init__(self, label: str):
                self.progress = Progress(label)

            def before_train(self, runner):
                self.progress.start()

            def before_test(self, runner):
                self.progress.start()

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                self.progress.tick(runner.iter + 1, runner.max_iters, 'iter')

            def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                self.progress.tick(batch_idx + 1, len(runner.test_loop.dataloader), 'test batch')

        HOOKS.register_module(name=name, module=_ProgressHook)
    return name


def progress(label: str) -> dict:
    """A ``custom_hooks`` entry that prints progress lines for ``label``."""
    return dict(type=_progress_hook(), label=label)


def train_cfg(base, work_dir: str, iters: int, seed: int, name: str, log_level: str,
              schedule: Optional[List[dict]] = None, lr: Optional[float] = None):
    """``base`` set up to train ``iters`` iterations without validation or checkpoints."""
    cfg = _named(base, work_dir, name, log_level)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    if lr is not None:
        cfg.optim_wrapper.optimizer.lr = lr
    if schedule is not None:
        cfg.param_scheduler = schedule
    cfg.randomness = dict(seed=seed)
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.pop('visualization', None)  # draws nothing here; not a default hook
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=50)
    cfg.load_from = None
    cfg.resume = False
    cfg.custom_hooks = [progress(name.rsplit('_', 3)[0])]  # the run's name without its stamp
    return cfg


def finetune_schedule(iters: int) -> List[dict]:
    """The pruning configs' schedule: constant LR for the first half, then a cosine decay.

    Every pruning method gets exactly this schedule over the same iterations: GFP prunes during
    the constant part (configs/digits/*_gfp_*.py do the same), one-shot methods fine-tune.
    """
    hold = iters // 2
    return [dict(type='CosineAnnealingLR', by_epoch=False, begin=hold, end=iters,
                 T_max=max(1, iters - hold), eta_min=1e-5)]


def evaluate(model: nn.Module, base, work_dir: str, name: str, log_level: str) -> Dict:
    """The task's metric and its companion (e.g. bbox mAP and mAP@0.5) of ``model`` on the
    test split, by the config's test evaluator."""
    cfg = _named(base, work_dir, name, log_level)
    cfg.default_hooks = dict(checkpoint=None)
    cfg.custom_hooks = [progress(name.rsplit('_', 3)[0])]
    cfg.load_from = None
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler',
                'val_dataloader', 'val_cfg', 'val_evaluator', 'auto_scale_lr'):
        cfg[key] = None
    metrics = runner(cfg, model).test()
    if not metrics:  # CocoMetric returns nothing when no box passes the score threshold
        return task().empty()
    return task().read(metrics)


# --------------------------------------------------------------------------- GFP
def gfp(cfg, baseline: str, delta: str, target: float, interval: int,
        channels_per_step: int, target_metric: str = 'flops',
        latency_table: Optional[str] = None, divisor=1,
        distill: Optional[dict] = None) -> Tuple[nn.Module, Dict]:
    """Prune with FisherPruningHook while training ``cfg`` (from ``baseline``), then slice.

    ``target_metric='latency'`` stops at ``target`` of the time ``latency_table`` predicts
    (any ``delta``); ``divisor`` 1 is how the stored FLOPs-targeted runs were made (the hook's
    default is 'auto'). ``distill``: GFPDistillHook's arguments (``{}``: its defaults); it
    distils from the baseline while pruning and fine-tuning.

    Returns:
        tuple: The compact model and what the hook reports (pruning iterations, remaining).
    """
    import _accuracy_kd as K
    from mmgfp.core import apply_spec, make_spec
    from mmgfp.hooks.fisher_pruning_hook import FisherPruningHook
    from mmgfp.codebases import fix_compact
    cfg = copy.deepcopy(cfg)
    cfg.load_from = baseline
    kd = [dict(type='GFPDistillHook', **distill)] if distill is not None else []
    cfg.custom_hooks = [dict(type='FisherPruningHook', interval=interval, delta=delta,
                             target=target, target_metric=target_metric,
                             channels_per_step=channels_per_step, save_thresholds=(),
                             divisor=divisor, latency_table=latency_table)
                        ] + kd + list(cfg.custom_hooks)  # and the progress lines
    run = runner(cfg)
    run.train()
    hook = next(h for h in run.hooks if isinstance(h, FisherPruningHook))
    pruner = hook.pruner
    rem = pruner.remaining()
    info = {'pruning_iters': hook.steps * hook.interval,
            'target_reached': bool(rem[target_metric] <= target), 'hook_remaining': rem,
            'channels_pruned': sum(len(r.units) * pruner.groups.groups[r.key].block
                                   for r in pruner.history)}
    info.update(K.distilled(run))
    model = unwrap(run.model)
    spec = make_spec(pruner.masker)
    pruner.masker.detach()
    pruner.recorder.stop()
    apply_spec(model, spec)
    fix_compact(model)
    return model, info


# --------------------------------------------------------------------------- Torch-Pruning
def _example(model: nn.Module, input_size: Sequence[int]):
    from mmgfp.apis.inputs import demo_batch
    data = model.data_preprocessor(demo_batch(model, 1, input_size), False)
    return data['inputs'], data['data_samples']


def output_layers(model: nn.Module) -> List[nn.Module]:
    """Layers whose output channels are predictions (never pruned by any method): the
    task's (e.g. the prediction convs of an mmdet head, a segmentor's ``conv_seg``)."""
    return task().output_layers(model)


def taylor_gradients(model: nn.Module, batches: Sequence[dict]) -> None:
    """Leave in ``.grad`` the loss gradient summed over ``batches`` (for Taylor importance).

    The weights and BN statistics are restored afterwards: only the gradients remain.
    """
    from mmgfp.apis.inputs import loss_forward
    state = copy.deepcopy(model.state_dict())
    model.train()
    model.zero_grad()
    for batch in batches:
        loss, _ = model.parse_losses(loss_forward(batch)(model))
        loss.backward()
    model.load_state_dict(state)


def tp_prune(model: nn.Module, importance: str, ratio: float, global_pruning: bool,
             input_size: Optional[Sequence[int]] = None) -> nn.Module:
    """Prune ``model`` in place with Torch-Pruning's MetaPruner at channel ratio ``ratio``.

    Torch-Pruning traces the task's forward (:meth:`Task.tp_forward`: every layer the loss
    trains, e.g. a segmentor's auxiliary heads) at ``input_size`` (default: the task's).
    """
    import torch_pruning as tp
    imps = {'l1': lambda: tp.importance.GroupMagnitudeImportance(p=1),
            'taylor': lambda: tp.importance.GroupTaylorImportance()}
    if importance not in imps:
        raise ValueError(f'`importance` must be one of {sorted(imps)}, but got {importance!r}')
    model.eval()
    x, samples = _example(model, input_size or INPUT_SIZE)
    pruner = tp.pruner.MetaPruner(
        task().tp_forward(model, samples), x, importance=imps[importance](), pruning_ratio=ratio,
        global_pruning=global_pruning, ignored_layers=output_layers(model))
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def search(prune_at: Callable[[float], Tuple[float, object]], target: float, tol: float,
           start: float, max_trials: int, lo: float = 0.0, hi: float = 0.95):
    """Find ``x`` in (lo, hi) with ``prune_at(x)[0]`` (remaining FLOPs) within ``tol`` of target.

    Remaining FLOPs fall with ``x``; each step assumes they scale with ``(1 - x)**2`` locally
    (a channel ratio ``x`` shrinks both sides of most convs) and stays inside the bracket.

    Returns:
        tuple: ``(x, flops, result)`` of the closest trial, and the list of ``(x, flops)``.
    """
    best, trials, x = None, [], start
    for _ in range(max_trials):
        f, res = prune_at(x)
        trials.append((x, f))
        if best is None or abs(f - target) < abs(best[1] - target):
            best = (x, f, res)
        if abs(f - target) <= tol:
            break
        if f > target:
            lo = x
        else:
            hi = x
        nxt = 1 - (1 - x) * math.sqrt(target / f)
        x = nxt if lo < nxt < hi else (lo + hi) / 2
    return best, trials


def tp_prune_to(model: nn.Module, importance: str, target: float, full_flops: float,
                tol: float, global_pruning: bool, max_trials: int = 8,
                remaining: Optional[Callable[[nn.Module], float]] = None):
    """Copies of ``model`` pruned by Torch-Pruning until the FLOPs are ``target`` of the full.

    ``model`` keeps its weights (and, for Taylor, the gradients set by
    :func:`taylor_gradients`, copied to every trial: ``deepcopy`` drops ``.grad``).
    ``remaining(pruned)`` replaces the FLOPs fraction as what must reach ``target`` (e.g. the
    predicted latency fraction).
    """
    if remaining is None:
        def remaining(m):
            return measure(m)['flops'] / full_flops

    def prune_at(ratio):
        m = copy.deepcopy(model)
        for src, dst in zip(model.parameters(), m.parameters()):
            if src.grad is not None:
                dst.grad = src.grad.clone()
        tp_prune(m, importance, ratio, global_pruning)
        return remaining(m), m

    (ratio, flops, pruned), trials = search(prune_at, target, tol, 1 - math.sqrt(target),
                                            max_trials)
    return pruned, {'pruning_ratio': ratio, 'search': trials}


# --------------------------------------------------------------------------- random groups
def random_prune(model: nn.Module, target: float, seed: int,
                 input_size: Optional[Sequence[int]] = None) -> Dict:
    """Remove units of mmgfp's groups in random order until ``target`` of the FLOPs remains.

    Every unit of every prunable group is equally likely (each group keeps at least one), so
    wide groups lose about as large a fraction as narrow ones. Prunes ``model`` in place.
    """
    from mmgfp.apis.inputs import demo_batch, tensor_forward
    from mmgfp.core import FisherPruner, apply_spec, build_groups, count, make_spec
    from mmgfp.codebases import fix_compact
    model.eval()
    gs = build_groups(model, tensor_forward(demo_batch(model, 1, input_size or INPUT_SIZE)))
    pruner = FisherPruner(model, gs, 'flops')
    keep = pruner.masker.keep
    pool = [(k, u) for k in sorted(keep) for u in range(keep[k].numel())]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    full = pruner.full['flops']
    removed = 0
    for i in order.tolist():
        if count(gs, pruner.kept)['flops'] <= target * full:
            break
        key, unit = pool[i]
        if int(keep[key].sum()) > 1:
            pruner.masker.prune(key, unit)
            removed += gs.groups[key].block
    apply_spec(model, make_spec(pruner.masker))
    fix_compact(model)
    return {'channels_pruned': removed}
