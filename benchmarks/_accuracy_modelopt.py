"""NVIDIA ModelOpt FastNAS as the ``modelopt`` method of ``benchmarks/accuracy_latency.py``.

The trained baseline goes through FastNAS (``_latency_modelopt.search``: widths in multiples of
32, a sensitivity map scored per width, then a threshold under a FLOPs constraint). FastNAS
knows FLOPs, not the latency table, so its FLOPs constraint ``p`` is searched (a secant step,
bisection inside the bracket, at most ``--modelopt-steps`` FastNAS calls) until the table
predicts ``--target`` for the exported compact (``LatencyTable.predict_module``, within
``--tol``; FastNAS cuts every width whose score does not move under any constraint, so
where that alone goes below the target the closest trial is kept). All FastNAS calls of a
run share one search checkpoint, so the sensitivity map (every score evaluation but a few)
is computed once; later calls only re-threshold it.

Scores (``--modelopt-score``), both on the first ``--modelopt-images`` images of the *train*
split through the test pipeline (the test split stays for the final evaluation):

* ``agreement`` (default): ``_latency_modelopt.OutputAgreement``, minus the relative squared
  error of the subnet's raw head outputs against the baseline's, one forward of the images;
* ``map``: bbox mAP of the subnet on those images (``CocoMetric`` on their ids), a forward
  plus NMS and COCO evaluation per call: slower per call, but the benchmark's own metric.

The searched widths go to ``RUN_DIR/modelopt.json`` with the search's statistics; a rerun of
the same run (same baseline, table, target, tolerance and score) rebuilds the compact from
them without searching.
"""
import hashlib
import json
import os.path as osp
from typing import Callable, List, Optional

SCORES = ('agreement', 'map')
DEFAULT_IMAGES = {'agreement': 16, 'map': 64}
DEFAULT_STEPS = 6
QUICK = dict(modelopt_images=4, modelopt_steps=4)


# ------------------------------------------------------------------------------ arguments
def add_args(p) -> None:
    """The ``modelopt`` method's options on the argument parser ``p``."""
    p.add_argument('--modelopt-score', choices=SCORES, default='agreement',
                   help='modelopt: FastNAS score on train images, output agreement with the '
                        'baseline (cheap) or their bbox mAP (default agreement)')
    p.add_argument('--modelopt-images', type=int, help='modelopt: train images the score uses '
                   f'(default {DEFAULT_IMAGES["agreement"]} for agreement, '
                   f'{DEFAULT_IMAGES["map"]} for map; {QUICK["modelopt_images"]} with --quick)')
    p.add_argument('--modelopt-steps', type=int, help='modelopt: FastNAS calls at most while '
                   f'its FLOPs constraint is searched (default {DEFAULT_STEPS}; '
                   f'{QUICK["modelopt_steps"]} with --quick)')


def check_args(p, args) -> None:
    """Fill the defaults; ``p.error`` names a bad value or a missing ModelOpt."""
    defaults = QUICK if args.quick else {}
    if args.modelopt_images is None:
        args.modelopt_images = defaults.get('modelopt_images',
                                            DEFAULT_IMAGES[args.modelopt_score])
    if args.modelopt_steps is None:
        args.modelopt_steps = defaults.get('modelopt_steps', DEFAULT_STEPS)
    for name in ('modelopt_images', 'modelopt_steps'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be a positive integer, got '
                    f'{getattr(args, name)}')
    if 'modelopt' in args.methods:
        import _latency_modelopt as LMO
        try:
            LMO.import_modelopt()
        except LMO.ModelOptMissing as e:
            p.error(f'--methods modelopt: {e}; or leave modelopt out of --methods')


def tag(args) -> str:
    """What the run's folder name carries of the options: ``agreement16``, ``map64``."""
    return f'{args.modelopt_score}{args.modelopt_images}'


# ------------------------------------------------------------------------------ scores
def score_batches(cfg, images: int):
    """``(batches, metainfo)``: the first ``images`` images of the train split through the
    test pipeline, in data batches of the test loader's size (unshuffled, no augmentation),
    and the data set's meta information (its classes)."""
    import copy

    from mmengine.runner import Runner
    loader = copy.deepcopy(cfg.test_dataloader)
    dataset = copy.deepcopy(cfg.train_dataloader.dataset)
    dataset.pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
    dataset.test_mode = True
    dataset.indices = images
    dataset.pop('filter_cfg', None)
    loader.dataset = dataset
    loader.sampler = dict(type='DefaultSampler', shuffle=False)
    loader.num_workers, loader.persistent_workers = 0, False
    built = Runner.build_dataloader(loader)
    batches = list(built)
    have = sum(len(b['inputs']) for b in batches)
    if have < images:
        raise ValueError(f'--modelopt-images {images}: the train split has only {have} '
                         'images; give fewer')
    return batches, built.dataset.metainfo


class MapScore:
    """FastNAS score: bbox mAP of the subnet (``net.model`` of a ``TensorNet``) on ``batches``
    (``CocoMetric`` of the train annotations, limited to these images); counts its calls."""

    def __init__(self, cfg, batches: list, metainfo: dict):
        from mmdet.evaluation import CocoMetric
        ds = cfg.train_dataloader.dataset
        ann = osp.join(ds.get('data_root', ''), ds.ann_file)
        self.metric = CocoMetric(ann_file=ann, metric='bbox')
        self.metric.dataset_meta = metainfo
        self.batches = batches
        self.calls = 0

    def __call__(self, net) -> float:
        import torch

        import _latency_modelopt as LMO
        self.calls += 1
        det = net.model.eval()
        ids = []
        with torch.no_grad():
            for batch in self.batches:
                outs = det.test_step(batch)
                ids += [s.img_id for s in outs]
                self.metric.process(batch, [o.to_dict() for o in outs])
        self.metric.img_ids = ids
        with LMO._quiet():
            res = self.metric.evaluate(len(ids))
        return float(res.get('coco/bbox_mAP', 0.0))  # nothing when no box passes score_thr


def scorer(model, cfg, args):
    """``(x, data_samples, score)`` of the run: FastNAS's traced input (the score images,
    preprocessed) and its score function (None: ``OutputAgreement`` on ``x``)."""
    import torch
    batches, metainfo = score_batches(cfg, args.modelopt_images)
    model.eval()
    data = [model.data_preprocessor(b, False) for b in batches]
    x = torch.cat([d['inputs'] for d in data])[:args.modelopt_images]
    samples = [s for d in data for s in d['data_samples']][:args.modelopt_images]
    if args.modelopt_score == 'agreement':
        return x, samples, None
    # with mAP the traced input only counts FLOPs: one image does
    return x[:1], samples[:1], MapScore(cfg, batches, metainfo)


# ------------------------------------------------------------------------------ search
def next_flops(trials: List[dict], target: float, lo: float, hi: float) -> float:
    """The next FLOPs constraint: the secant through the two trials closest to ``target``
    (the first step scales the FLOPs by target / predicted), bisection when it leaves the
    bracket ``(lo, hi)`` of constraints known to predict too little / too much."""
    near = sorted(trials, key=lambda t: abs(t['predicted'] - target))[:2]
    a = near[0]
    if len(near) == 2 and near[1]['predicted'] != a['predicted']:
        b = near[1]
        slope = (b['predicted'] - a['predicted']) / (b['flops_target'] - a['flops_target'])
        p = a['flops_target'] + (target - a['predicted']) / slope if slope > 0 else -1.0
    else:
        p = a['flops_target'] * target / a['predicted']
    return p if lo < p < hi else (lo + hi) / 2


def search_to(model, x, samples, score, predict: Callable,
              args, checkpoint: str):
    """FastNAS calls until ``predict(compact)`` is within ``args.tol`` of ``args.target``.

    Returns:
        tuple: The compact closest to the target, its subnet config and the statistics
        (``trials``: constraint, prediction, seconds and score calls of every call).
    """
    import _latency_modelopt as LMO
    trials, best, lo, hi = [], None, 0.0, 1.0
    p = args.target  # predicted time is about proportional to FLOPs on this CPU table
    for _ in range(args.modelopt_steps):
        compact, config, stats = LMO.search(model, x, samples, p, checkpoint, score)
        f = predict(compact)
        trials.append({'flops_target': p, 'predicted': f, 'search_s': stats['search_s'],
                       'score_calls': stats['score_calls']})
        print(f'[accuracy_latency]   modelopt: FLOPs constraint {100 * p:.1f}% -> predicted '
              f'latency {100 * f:.1f}% ({stats["search_s"]:.0f} s, {stats["score_calls"]} '
              'score calls)', flush=True)
        if best is None or abs(f - args.target) < abs(best[0] - args.target):
            best = (f, compact, config, stats)
        if abs(f - args.target) <= args.tol:
            break
        lo, hi = (p, hi) if f < args.target else (lo, p)
        p = next_flops(trials, args.target, lo, hi)
        if any(abs(p - t['flops_target']) < 1e-3 for t in trials):
            break  # FastNAS's widths move in steps of 32: nothing new between these two
    f, compact, config, stats = best
    stats = dict(stats, search_s=sum(t['search_s'] for t in trials),
                 score_calls=sum(t['score_calls'] for t in trials), trials=trials,
                 flops_target=next(t['flops_target'] for t in trials if t['predicted'] == f))
    return compact, config, stats


def prune_to(model, cfg, predict: Callable, args, run_dir: str,
             key: dict):
    """The ``modelopt`` compact of the baseline ``model`` at ``args.target`` of the predicted
    latency, searched, or rebuilt from ``run_dir/modelopt.json`` when that was searched with
    the same ``key`` (baseline, table, target, tolerance, score). Returns it and its info."""
    import _latency_modelopt as LMO
    path = osp.join(run_dir, 'modelopt.json')
    key = json.loads(json.dumps(dict(key, score=args.modelopt_score,  # as stored: no tuples
                                     images=args.modelopt_images, steps=args.modelopt_steps)))
    x, samples, score = scorer(model, cfg, args)
    stored = _stored(path, key)
    if stored is not None:
        print(f'[accuracy_latency]   modelopt: widths from {path} (not searched again)')
        compact = LMO.rebuild(model, x, samples, stored['subnet_config'])
        stats = {k: v for k, v in stored.items() if k != 'subnet_config'}
        return compact, {'modelopt': dict(stats, rebuilt=True)}
    # FastNAS's checkpoint keeps the sensitivity map, valid for one baseline and score only
    scored = {k: key[k] for k in ('baseline', 'score', 'images', 'quick')}
    sha = hashlib.sha1(json.dumps(scored, sort_keys=True).encode()).hexdigest()[:8]
    compact, config, stats = search_to(model, x, samples, score, predict, args,
                                       osp.join(run_dir, f'modelopt_search_{sha}.pth'))
    stats.update(key=key, score_input=f'{len(x)}x{tuple(x.shape[1:])}')
    LMO.save(path, config, stats)
    return compact, {'modelopt': dict(stats, modelopt=LMO.version(), rebuilt=False)}


def _stored(path: str, key: dict) -> Optional[dict]:
    if not osp.isfile(path):
        return None
    with open(path) as f:
        stored = json.load(f)
    return stored if stored.get('key') == key and 'subnet_config' in stored else None
