"""The distillation options of ``benchmarks/accuracy.py``: which GFPDistillHook a ``*_kd`` run gets.

``--kd-weight W`` (the default CWD term on the neck with weight ``W``), ``--kd-losses JSON`` (a
JSON list of GFPDistillHook ``losses`` entries), ``--kd-during {all,pruning,finetuning}`` (the
hook's ``during``), ``--kd-fisher {all,task}`` (the hook's ``fisher``), ``--kd-task-weight
W`` (the hook's ``task_weight``) and ``--kd-unlabeled {rest,pool:N}`` (the hook's
``unlabeled_dataloader``: the training images ``--train-images`` leaves out, or ``N`` more digits
canvases generated with another seed, without their labels) and ``--kd-pseudo THR`` (the hook's
``pseudo_labels``: the teacher's detections scoring at least ``THR`` label those images) choose the recipe; with none of them a ``*_kd`` run gets the
hook's defaults. Each option enters a run's stored signature only when given, and only for ``*_kd``
runs, so runs stored before the option existed, and runs of the other methods, still match.
"""
import copy
import hashlib
import json
from typing import Dict, List, Optional

KD_KEYS = ('kd_weight', 'kd_losses', 'kd_during', 'kd_fisher', 'kd_task_weight', 'kd_unlabeled',
           'kd_pseudo')
# hashed into a run's name only when given, so runs stored before them keep their names
LATE_KEYS = ('kd_fisher', 'kd_task_weight', 'kd_unlabeled', 'kd_pseudo')
POOL_SEED = 1  # the digits training set is generated with seed 0
DURING = ('all', 'pruning', 'finetuning')
FISHER = ('all', 'task')


def add_args(p, unlabeled: bool = False) -> None:
    """The distillation options on the argument parser ``p`` (``--kd-unlabeled`` with
    ``unlabeled``: it needs ``--train-images``)."""
    p.add_argument('--kd-weight', type=float, help="*_kd: weight of the CWD term on the "
                   "neck (default: GFPDistillHook's)")
    p.add_argument('--kd-losses', metavar='JSON', help='*_kd: GFPDistillHook `losses` as a '
                   'JSON list, e.g. \'[{"module": "bbox_head", "type": "sigmoid_kl", '
                   '"output": 0}]\' (default: the hook\'s defaults)')
    p.add_argument('--kd-during', choices=DURING, help="*_kd: GFPDistillHook's `during` "
                   '(default: the hook\'s)')
    p.add_argument('--kd-fisher', choices=FISHER, help="gfp_*_kd: GFPDistillHook's `fisher`, "
                   'which loss ranks the channels while the teacher teaches during pruning '
                   "(default: the hook's, all; tp_*_kd and unpruned_kd do not prune and "
                   'ignore it, but it names their runs, so that they pair with gfp_*_kd)')
    p.add_argument('--kd-task-weight', type=float, help="*_kd: GFPDistillHook's `task_weight`, "
                   'the weight of the task losses while the teacher teaches (0: the teacher '
                   'alone; default: the hook\'s, 1)')
    if unlabeled:
        p.add_argument('--kd-unlabeled', metavar='{rest,pool:N}',
                       help='*_kd: the teacher also teaches on images without labels '
                       "(GFPDistillHook's `unlabeled_dataloader`), their labels unused "
                       "(LoadAnnotations, where the pipeline has it, taken out): 'rest', the "
                       "training images after the first --train-images N; "
                       "'pool:N', N more canvases of a generated digits training set, drawn "
                       f'with seed {POOL_SEED} into a data root of their own')
        p.add_argument('--kd-pseudo', type=float, metavar='THR',
                       help="*_kd with --kd-unlabeled: GFPDistillHook's `pseudo_labels`: the "
                       "teacher's detections scoring at least THR become the labels of those "
                       "images, and the student trains on them with its own loss (detectors)")


def parse_losses(text: str) -> List[dict]:
    """GFPDistillHook ``losses`` from JSON text.

    Raises:
        ValueError: The text is no JSON, or no non-empty list of objects naming a "module".
    """
    try:
        losses = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'is not valid JSON ({e}): give a list such as '
                         '\'[{"module": "neck", "type": "cwd"}]\'') from None
    if not isinstance(losses, list) or not losses or \
            not all(isinstance(x, dict) and isinstance(x.get('module'), str) for x in losses):
        raise ValueError(f'must be a non-empty JSON list of objects with a "module" name, got '
                         f'{text}')
    return losses


def check_args(p, args) -> None:
    """Parse ``--kd-losses`` into a list of dicts (``p.error`` names what is wrong)."""
    unlabeled = getattr(args, 'kd_unlabeled', None)
    if unlabeled is not None and pool_size(unlabeled) is None and unlabeled != 'rest':
        p.error(f"--kd-unlabeled is 'rest' or 'pool:N' (N > 0 images), got {unlabeled!r}")
    pseudo = getattr(args, 'kd_pseudo', None)
    if pseudo is not None and (unlabeled is None or not 0 < pseudo <= 1):
        p.error('--kd-pseudo THR (0 < THR <= 1) labels the images of --kd-unlabeled with the '
                "teacher's detections: give --kd-unlabeled too" if unlabeled is None else
                f'--kd-pseudo is a score threshold in (0, 1], got {pseudo}')
    if unlabeled == 'rest' and getattr(args, 'train_images', None) is None:
        p.error('--kd-unlabeled rest distils on the training images that --train-images N '
                'leaves out: give --train-images')
    if 'unpruned_kd' in (getattr(args, 'methods', None) or ()) and args.kd_during == 'pruning':
        p.error("--kd-during pruning: unpruned_kd prunes nothing, so its teacher would never "
                'teach; leave unpruned_kd out of --methods, or give another --kd-during')
    if args.kd_losses is None:
        return
    if args.kd_weight is not None:
        p.error('--kd-weight sets the weight of the default CWD term; with --kd-losses give '
                'each entry its "weight" instead')
    try:
        args.kd_losses = parse_losses(args.kd_losses)
    except ValueError as e:
        p.error(f'--kd-losses {e}')


def is_kd(method: str) -> bool:
    return method.endswith('_kd')


def hook_args(method: str, args) -> Optional[dict]:
    """GFPDistillHook's arguments for ``method`` (None: no distillation; ``{}``: defaults)."""
    if not is_kd(method):
        return None
    out = {}
    if args.kd_losses is not None:
        out['losses'] = [dict(x) for x in args.kd_losses]
    elif args.kd_weight is not None:
        out['losses'] = [dict(module='neck', type='cwd', weight=args.kd_weight, tau=1.0)]
    if getattr(args, 'kd_fisher', None) is not None and method != 'unpruned_kd':
        out['fisher'] = args.kd_fisher  # nothing is ranked in unpruned_kd
    return dict(out, **_shared_args(args))


def _shared_args(args) -> dict:
    """The hook's arguments every ``*_kd`` method takes alike, pruned in place or sliced:
    ``during``, ``task_weight`` and ``unlabeled_dataloader``, where given."""
    out = {}
    if args.kd_during is not None:
        out['during'] = args.kd_during
    if getattr(args, 'kd_task_weight', None) is not None:
        out['task_weight'] = args.kd_task_weight
    if getattr(args, 'kd_unlabeled', None) is not None:
        out['unlabeled_dataloader'] = copy.deepcopy(args.unlabeled_dataloader)
    if getattr(args, 'kd_pseudo', None) is not None:
        out['pseudo_labels'] = dict(score_thr=args.kd_pseudo)
    return out


def pool_size(text: str) -> Optional[int]:
    """N of ``'pool:N'`` (None: not of that form, or N < 1)."""
    head, _, n = text.partition(':')
    return int(n) if head == 'pool' and n.isdigit() and int(n) > 0 else None


def unlabeled_loader(cfg, how: str, train_images: Optional[int]) -> dict:
    """GFPDistillHook's ``unlabeled_dataloader`` for ``--kd-unlabeled HOW``."""
    if how == 'rest':
        return unlabeled_rest(cfg, train_images)
    return unlabeled_pool(cfg, pool_size(how))


def _without_labels(ds: dict) -> dict:
    ds['pipeline'] = [t for t in ds['pipeline'] if 'LoadAnnotations' not in str(t.get('type'))]
    return ds


def unlabeled_pool(cfg, n: int) -> dict:
    """``--kd-unlabeled pool:N``: a data loader config of ``n`` more canvases of the
    generated digits training set (same generator, seed :data:`POOL_SEED`, no validation
    canvases to speak of), in a data root of their own next to the training set's, with the
    annotations not loaded.

    Raises:
        SystemExit: The training set is not a generated digits set.
    """
    ds = copy.deepcopy(cfg.train_dataloader.dataset)
    if not str(ds.get('type', '')).startswith('Digits'):
        raise SystemExit(f'error: --kd-unlabeled pool:N generates more digits canvases, but the '
                         f'training set is {ds.get("type")!r}: use rest with --train-images')
    ds.pop('indices', None)
    root = str(ds.get('data_root') or 'data/digits_det/').rstrip('/')
    ds['data_root'] = f'{root}_pool{n}_s{POOL_SEED}/'
    ds['generate_cfg'] = dict(ds.get('generate_cfg') or {}, num_train=n, num_val=1,
                              seed=POOL_SEED)
    return dict(dataset=_without_labels(ds))


def unlabeled_rest(cfg, n: int) -> dict:
    """``--kd-unlabeled rest``: a data loader config (for GFPDistillHook's
    ``unlabeled_dataloader``) of the training images after the first ``n``, with the
    pipeline's annotation loading taken out, so their batches carry no labels.

    Raises:
        SystemExit: The training set wraps others or sets ``indices`` already, or has no
            images after the first ``n``.
    """
    from mmengine.registry import DATASETS, DefaultScope
    ds = copy.deepcopy(cfg.train_dataloader.dataset)
    if 'dataset' in ds or 'datasets' in ds or ds.get('indices') is not None:
        raise SystemExit(f'error: --kd-unlabeled rest needs a plain training data set without '
                         f'`indices`, and {ds.get("type")!r} '
                         + ('wraps others' if 'indices' not in ds else 'sets them'))
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        total = len(DATASETS.build(copy.deepcopy(ds)))
    if total <= n:
        raise SystemExit(f'error: --kd-unlabeled rest: the training set has {total} images, '
                         f'none after the first {n} (--train-images)')
    ds['indices'] = list(range(n, total))
    return dict(dataset=_without_labels(ds))


def check_hook(args, task, base) -> None:
    """Build the hooks of the ``*_kd`` methods once, so a bad option fails before any
    training (``task`` and the baseline config ``base`` for ``tp_*_kd``).

    Raises:
        SystemExit: Naming the option and the hook's complaint.
    """
    from mmgfp.hooks.distill_hook import GFPDistillHook
    if getattr(args, 'kd_pseudo', None) is not None and task.scope != 'mmdet' and \
            any(is_kd(m) for m in args.methods):
        raise SystemExit(f"error: --kd-pseudo labels images with the teacher's detections, "
                         f'which mmgfp does for MMDetection detectors, not {task.scope} models: '
                         'leave it out (the --kd-losses terms teach on the images without '
                         'labels)')
    hooks = [hook_args(m, args) for m in args.methods if is_kd(m) and not is_sliced(m)][:1]
    if any(is_sliced(m) for m in args.methods):
        hook = sliced_hook(args, task, 'baseline.pth', base)
        hook.pop('type')
        hooks.append(hook)
    for kwargs in hooks:
        try:
            GFPDistillHook(**kwargs)
        except (TypeError, ValueError) as e:
            raise SystemExit(f'error: --kd-losses / --kd-during / --kd-weight / --kd-fisher / '
                             f'--kd-task-weight / --kd-unlabeled / --kd-pseudo: GFPDistillHook '
                             f'refuses {kwargs}: {e}') from None


def is_sliced(method: str) -> bool:
    """Whether ``method`` distils into a student Torch-Pruning sliced (``tp_*_kd``)."""
    return is_kd(method) and method.startswith('tp_')


def add_signature(sig: dict, args) -> dict:
    """``sig`` with the distillation options that were given (a copy)."""
    sig = dict(sig)
    for k in KD_KEYS:
        if getattr(args, k, None) is not None:
            sig[k] = getattr(args, k)
    return sig


def run_name(method: str, target: float, seed: int, args, prefix: str = 't') -> str:
    """The folder of one run under ``WORK_DIR/runs``: ``gfp_acts_kd_t30_s0`` (``prefix``
    before the target's percent: ``lat`` in the equal-latency benchmark).

    A ``*_kd`` run made with distillation options gets a short hash of them in its name
    (``gfp_acts_kd-3f2a9c1e_t30_s0``), so runs of different recipes in one work dir do not
    overwrite each other; runs without options keep the names stored runs already have.
    """
    tag = ''
    given = {k: getattr(args, k, None) for k in KD_KEYS
             if k not in LATE_KEYS or getattr(args, k, None) is not None}
    if is_kd(method) and any(v is not None for v in given.values()):
        text = json.dumps(given, sort_keys=True)
        tag = '-' + hashlib.sha1(text.encode()).hexdigest()[:8]
    return f'{method}{tag}_{prefix}{round(target * 100)}_s{seed}'


def run_signature(sig: dict, method: str) -> dict:
    """What a stored run of ``method`` must match: ``sig`` without the distillation options
    unless ``method`` distils."""
    if is_kd(method):
        return dict(sig)
    return {k: v for k, v in sig.items() if k not in KD_KEYS}


def recipe(losses: Optional[List[dict]], during: Optional[str] = None,
           fisher: Optional[str] = None, task_weight: Optional[float] = None,
           unlabeled: Optional[int] = None, pseudo: Optional[dict] = None) -> str:
    """A short text for a table: ``cwd neck w1 tau1; finetuning`` (``; Fisher: task loss``
    when the channels are ranked by the task loss alone, ``; task x0`` when the task losses
    are weighted other than 1, ``; +900 unlabelled`` with images without labels, ``;
    pseudo labels >= 0.5`` when the teacher's detections label them)."""
    if not losses:
        return ''
    parts = []
    for x in losses:
        extra = ''.join(f' {k}{x[k]}' for k in sorted(x)
                        if k not in ('module', 'type', 'weight', 'tau') and x[k] is not None)
        parts.append(f"{x.get('type', 'cwd')} {x['module']} w{x.get('weight', 1.0):g} "
                     f"tau{x.get('tau', 1.0):g}{extra}")
    return (', '.join(parts) + (f'; {during}' if during else '') +
            ('; Fisher: task loss' if fisher == 'task' else '') +
            (f'; task x{task_weight:g}' if task_weight not in (None, 1.0) else '') +
            (f'; +{unlabeled} unlabelled' if unlabeled else '') +
            (f"; pseudo labels >= {pseudo['score_thr']:g}" if pseudo else ''))


# --------------------------------------------------------------------- a sliced student
def sliced_losses(args, task) -> List[dict]:
    """The losses a sliced (Torch-Pruning) student distils with: ``--kd-losses``, else the
    task's output loss (``Task.sliced_kd_losses``).

    Raises:
        SystemExit: For ``cwd`` (a sliced student's feature maps have fewer channels than the
            teacher's, and which of the teacher's they match is not known), or a task without
            an output loss of its own and no ``--kd-losses``.
    """
    if args.kd_weight is not None:
        raise SystemExit('error: --kd-weight sets the weight of the CWD term on the neck, which '
                         'a sliced student (tp_*_kd) cannot use: give --kd-losses with an '
                         'output loss instead')
    losses = args.kd_losses if args.kd_losses is not None else task.sliced_kd_losses
    if losses is None:
        raise SystemExit(f'error: tp_*_kd on {task.scope} needs --kd-losses: an output loss '
                         '(type kl, sigmoid_kl or mse on the head) that a sliced student can '
                         'compare with the unpruned teacher')
    cwd = [x for x in losses if x.get('type', 'cwd') in ('cwd', 'fg_mse')]
    if cwd:
        what = ', '.join(f"{x.get('type', 'cwd')} on {x['module']!r}" for x in cwd)
        raise SystemExit(f'error: tp_*_kd: {what} needs the teacher\'s channels, but '
                         'Torch-Pruning sliced the student and its maps have fewer. Distil '
                         'outputs instead, e.g. --kd-losses \'[{"module": "bbox_head", '
                         '"type": "sigmoid_kl", "output": 0}]\' (a detector) or '
                         '\'[{"module": "head", "type": "kl", "tau": 4}]\' (a classifier)')
    return [dict(x) for x in losses]


def sliced_hook(args, task, baseline: str, base) -> dict:
    """The GFPDistillHook entry of a ``tp_*_kd`` fine-tuning run: the teacher is the unpruned
    model built from the baseline config (``teacher_cfg``) with the baseline checkpoint."""
    return dict(type='GFPDistillHook', losses=sliced_losses(args, task), teacher=baseline,
                teacher_cfg=dict(model=base.model.to_dict(),
                                 default_scope=base.get('default_scope') or task.scope),
                **_shared_args(args))


def distilled(run) -> Dict:
    """``{'kd': {'losses': ..., 'during': ..., 'fisher': ..., 'task_weight': ...}}``: what the
    run's GFPDistillHook distilled (the hook's defaults resolved), or ``{}`` without one."""
    from mmgfp.hooks.distill_hook import GFPDistillHook
    hook = next((h for h in run.hooks if isinstance(h, GFPDistillHook)), None)
    if hook is None:
        return {}
    unlabeled = getattr(hook, '_unlabeled', None)
    return {'kd': {'losses': copy.deepcopy(hook.losses),
                   'during': getattr(hook, 'during', None),
                   'fisher': getattr(hook, 'fisher', None),
                   'task_weight': getattr(hook, 'task_weight', None),
                   'unlabeled': None if unlabeled is None else len(unlabeled.loader.dataset),
                   'pseudo': copy.deepcopy(getattr(hook, 'pseudo', None))}}
