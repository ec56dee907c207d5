"""The setup of ``benchmarks/accuracy.py``: the baseline config, checked before anything trains.

The kind of model (the task's), the train/val/test data sets (they load, their first image
exists), the test evaluator (it builds and gives the task's metric), an epoch-based schedule
rewritten in iterations, and ``--quick``'s tiny data: a clear error names what to fix.
"""
import copy
import os.path as osp
from typing import List


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
    import math
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
    cfg.param_scheduler = epochs_to_iters(cfg.get('param_scheduler') or [], epoch)
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


def few_images(cfg, n: int) -> None:
    """``--train-images N``: the training data set keeps its first ``n`` images (MMEngine's
    ``indices``, applied after its own filters). A wrapper data set (repeat, concat) has no
    such option: the error says so."""
    ds = cfg.train_dataloader.dataset
    if 'dataset' in ds or 'datasets' in ds:
        raise SystemExit(f'error: --train-images needs a plain training data set, and '
                         f'{ds.get("type")!r} wraps others: set `indices` '
                         'in the config instead')
    ds.indices = int(n)


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


def epochs_to_iters(schedulers: List[dict], epoch_len: int) -> List[dict]:
    """Epoch-based schedulers rewritten in iterations of ``epoch_len`` per epoch (begin, end,
    T_max, milestones), so that :func:`scale_schedule` can stretch them. A scheduler that
    stepped once per epoch now steps every iteration (a smooth version of the same curve)."""
    out = []
    for s in copy.deepcopy(list(schedulers)):
        if s.get('by_epoch', True):
            for k in ('begin', 'end', 'T_max'):
                if isinstance(s.get(k), int):
                    s[k] = s[k] * epoch_len
            if 'milestones' in s:
                s['milestones'] = [m * epoch_len for m in s['milestones']]
            s['by_epoch'] = False
            s.pop('convert_to_iter_based', None)
        out.append(s)
    return out
