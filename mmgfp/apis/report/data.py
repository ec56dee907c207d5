"""Read a pruning run's logs and channel spec back into data, and write a small visual report.

A work dir holds one MMEngine run folder per start (``WORK_DIR/<timestamp>/``; ``resume`` makes
a new one). From each, the text log ``<timestamp>.log`` gives every pruning step of
:class:`~mmgfp.hooks.FisherPruningHook` (its setup line, ``pruned ...`` and ``remaining ...``
lines; a step happens every ``interval`` iterations, so its iteration follows from where the run
started) and ``vis_data/scalars.json`` the logged ``gfp_*`` scalars (full precision, every
``LoggerHook`` interval) and the validation metrics. Runs are merged by iteration: a later run
replaces what an earlier one logged after the iteration it started from. The channel spec
(``channels_final.json`` or ``pruned_<metric>_<thr>.json``) gives the channels kept per group
and layer. The plots and the page (and :func:`make_report`, which writes them) live in
:mod:`mmgfp.apis.report.render`, which imports this module and not the other way round.
"""
import glob
import json
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from mmgfp.core.spec import from_ranges, load_spec

METRICS = ('flops', 'acts', 'params')
PREFERRED_METRICS = ('coco/bbox_mAP', 'coco/segm_mAP', 'accuracy/top1', 'pascal_voc/mAP',
                     'coco/AP')  # coco/AP: mmpose's COCO keypoint AP
Series = List[Tuple[int, float]]

_SETUP = re.compile(r'FisherPruningHook: (\d+) channel groups, (\d+) prunable; '
                    r'delta=(\w+), target (\w+) ([\d.]+), every (\d+) iterations')
_PRUNED = re.compile(r'FisherPruningHook: pruned (\d+) unit\(s\) of (\S+) \(score [^)]*\), '
                     r'(\d+) channels left')
_REMAINING = re.compile(r'FisherPruningHook: remaining ((?:\w+ [-+.\deE]+(?:, )?)+)\s*$')
_FINISHED = re.compile(r'FisherPruningHook: pruning finished \(([^)]*)\)')
_SAVED = re.compile(r'FisherPruningHook: \w+ crossed [\d.]+, saved (\S+)\.pth')
_RESUMED = re.compile(r'resumed epoch: \d+, iter: (\d+)')
_TRAIN_ITER = re.compile(r'Iter\(train\) \[\s*(\d+)/(\d+)\]')
_TRAIN_EPOCH = re.compile(r'Epoch\(train\)\s*\[\s*\d+\]\[\s*\d+/(\d+)\]')
_SAVING = re.compile(r'Saving checkpoint at (\d+) (epochs|iterations)')


class ReportError(ValueError):
    """A work dir without the logs a pruning report needs."""


@dataclass
class Step:
    """One pruning step: the state after it and what it removed (group, units, left)."""
    iter: int
    remaining: Dict[str, float]
    pruned: List[Tuple[str, int, int]] = field(default_factory=list)


@dataclass
class PruningLog:
    """What the hook logged, for one run folder or merged over several.

    ``starts`` maps each run folder to the iteration it started from (0, or where it resumed);
    ``start``/``initial`` are the first run's. Series are (iteration, value) pairs.
    """
    starts: Dict[str, int] = field(default_factory=dict)
    start: int = 0
    setup: Optional[Dict] = None
    initial: Optional[Dict[str, float]] = None
    steps: List[Step] = field(default_factory=list)
    finished: Optional[str] = None
    saved: List[str] = field(default_factory=list)
    last_iter: int = 0
    max_iters: Optional[int] = None
    iters_per_epoch: Optional[int] = None
    scalars: Dict[str, Series] = field(default_factory=dict)
    metrics: Dict[str, Series] = field(default_factory=dict)

    def final(self) -> Dict[str, float]:
        """Remaining fractions at the end: the scalars' last value (full precision) when
        logged at or after the last step, else the last step's (4 decimals in the text log)."""
        last = self.steps[-1] if self.steps else None
        out = dict(last.remaining) if last else dict(self.initial or {})
        for k in METRICS:
            series = self.scalars.get(f'gfp_{k}')
            if series and (last is None or series[-1][0] >= last.iter):
                out[k] = series[-1][1]
        return out

    def remaining_at(self, it: int) -> Dict[str, float]:
        """Remaining fractions after iteration ``it`` (the last step at or before it)."""
        out = dict(self.initial or {})
        for s in self.steps:
            if s.iter <= it:
                out = dict(s.remaining)
        return out

    def units_pruned(self) -> int:
        return sum(n for s in self.steps for _, n, _ in s.pruned)


# -- parsing --------------------------------------------------------------------------------
def find_runs(work_dir: str) -> List[str]:
    """MMEngine run folders in ``work_dir`` (``<timestamp>/`` with a log or scalars), oldest
    first; ``work_dir`` itself when it is one."""
    if not osp.isdir(work_dir):
        raise ReportError(f'work dir {work_dir} does not exist')

    def is_run(d):
        return bool(glob.glob(osp.join(d, '*.log'))) or osp.isfile(
            osp.join(d, 'vis_data', 'scalars.json'))

    runs = sorted(d for d in glob.glob(osp.join(work_dir, '*')) if osp.isdir(d) and is_run(d))
    if not runs and is_run(work_dir):
        runs = [work_dir]
    return runs


def parse_text_log(path: str) -> PruningLog:
    """The hook's lines of one MMEngine text log (steps placed by the hook's interval)."""
    log = PruningLog()
    seen_setup = False
    pending: List[Tuple[str, int, int]] = []
    with open(path, errors='replace') as f:
        for line in f:
            if not any(w in line for w in ('FisherPruningHook', '(train)', 'resumed', 'Saving')):
                continue  # the config dump, val/test progress, other hooks
            m = _RESUMED.search(line)
            if m and not seen_setup:
                log.start = log.last_iter = int(m.group(1))
            elif _SETUP.search(line):
                m = _SETUP.search(line)
                log.setup = dict(groups=int(m.group(1)), prunable=int(m.group(2)),
                                 delta=m.group(3), target_metric=m.group(4),
                                 target=float(m.group(5)), interval=int(m.group(6)))
                seen_setup = True
            elif _PRUNED.search(line):
                m = _PRUNED.search(line)
                pending.append((m.group(2), int(m.group(1)), int(m.group(3))))
            elif _REMAINING.search(line) and seen_setup:
                rem = {k: float(v) for k, v in (p.split() for p in
                                                 _REMAINING.search(line).group(1).split(', '))}
                if log.initial is None:
                    log.initial = rem
                else:
                    log.steps.append(Step(_step_iter(log), rem, pending))
                pending = []
            elif _FINISHED.search(line):
                log.finished = _FINISHED.search(line).group(1)
            elif _SAVED.search(line):
                log.saved.append(_SAVED.search(line).group(1))
            elif _TRAIN_ITER.search(line):
                m = _TRAIN_ITER.search(line)
                log.last_iter = max(log.last_iter, int(m.group(1)))
                log.max_iters = int(m.group(2))
            elif _TRAIN_EPOCH.search(line):
                log.iters_per_epoch = int(_TRAIN_EPOCH.search(line).group(1))
            elif _SAVING.search(line):  # the end of an epoch the train lines may not show
                m = _SAVING.search(line)
                per = (log.iters_per_epoch or 0) if m.group(2) == 'epochs' else 1
                log.last_iter = max(log.last_iter, int(m.group(1)) * per)
    if log.steps:
        log.last_iter = max(log.last_iter, log.steps[-1].iter)
    return log


def _step_iter(log: PruningLog) -> int:
    """Iteration (1-based, as MMEngine logs it) of the next step: the hook prunes after every
    iteration divisible by ``interval`` until it is finished."""
    interval = log.setup['interval']
    if log.steps:
        return log.steps[-1].iter + interval
    return (log.start // interval + 1) * interval


def parse_scalars(path: str, iters_per_epoch: Optional[int] = None, start: int = 0
                  ) -> Tuple[Dict[str, Series], Dict[str, Series], int]:
    """``gfp_*`` training scalars, validation metrics and the last training iteration
    logged in a ``scalars.json``.

    Training entries carry ``step`` = iteration. Validation entries (no ``lr``/``loss``) carry
    the epoch when ``LoggerHook(log_metric_by_epoch=True)`` (the default): epoch-based runs map
    it to ``epoch * iters_per_epoch`` (or the epoch's last logged iteration); iter-based runs
    log epoch 0, so the iteration of the training entry just before is used, exact when the
    validation interval is a multiple of the logging interval (``start``, where the run
    resumed, before the first one).
    """
    scalars: Dict[str, Series] = {}
    metrics: Dict[str, Series] = {}
    last_train, epoch_end, by_epoch = start, {}, iters_per_epoch is not None
    for e in _json_lines(path):
        if any(k in e for k in ('lr', 'loss', 'gfp_flops')):
            last_train = e['step']
            if 'epoch' in e:
                by_epoch = True
                epoch_end[e['epoch']] = max(epoch_end.get(e['epoch'], 0), e['step'])
            for k, v in e.items():
                if k.startswith('gfp_') and _is_number(v):
                    scalars.setdefault(k, []).append((e['step'], float(v)))
            continue
        step = e['step']
        if not by_epoch:
            it = step if step > 0 else last_train
        elif step <= max(epoch_end, default=step):
            it = step * iters_per_epoch if iters_per_epoch else epoch_end.get(step, step)
        else:
            it = step  # LoggerHook(log_metric_by_epoch=False): the iteration itself
        for k, v in e.items():
            if '/' in k and _is_number(v):
                metrics.setdefault(k, []).append((it, float(v)))
    return scalars, metrics, last_train


def _json_lines(path: str):
    with open(path) as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if isinstance(entry, dict) and isinstance(entry.get('step'), int):
                yield entry


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_run(run_dir: str) -> PruningLog:
    name = osp.basename(osp.normpath(run_dir))
    logs = sorted(glob.glob(osp.join(run_dir, '*.log')))
    own = osp.join(run_dir, f'{name}.log')
    log = parse_text_log(own if osp.isfile(own) else logs[0]) if logs else PruningLog()
    log.starts = {name: log.start}
    scalars_path = osp.join(run_dir, 'vis_data', 'scalars.json')
    if osp.isfile(scalars_path):
        log.scalars, log.metrics, last = parse_scalars(scalars_path, log.iters_per_epoch,
                                                         log.start)
        log.last_iter = max([log.last_iter, last] + [p[0] for v in log.metrics.values()
                                                     for p in v])
    return log


def merge(logs: List[PruningLog]) -> PruningLog:
    """One history from runs in start order: each run replaces what earlier runs logged after
    the iteration it started from (a resumed run redoes those iterations)."""
    out = PruningLog()
    for log in logs:
        s = log.start
        out.starts.update(log.starts)
        out.steps = [st for st in out.steps if st.iter <= s] + log.steps
        for attr in ('scalars', 'metrics'):
            merged = {k: [p for p in v if p[0] <= s] for k, v in getattr(out, attr).items()}
            for k, v in getattr(log, attr).items():
                merged[k] = merged.get(k, []) + v
            setattr(out, attr, {k: v for k, v in merged.items() if v})
        if out.initial is None or s == 0:
            out.initial, out.start = log.initial, s
        out.setup = log.setup or out.setup
        out.finished = log.finished or (out.finished if s > 0 else None)
        kept = out.saved if s > 0 else []
        out.saved = kept + [x for x in log.saved if x not in kept]
        out.last_iter = max(log.last_iter, s if s > 0 else 0)
        out.max_iters = log.max_iters or out.max_iters
        out.iters_per_epoch = log.iters_per_epoch or out.iters_per_epoch
    return out


def load_log(work_dir: str) -> PruningLog:
    """The merged pruning history of ``work_dir``; :class:`ReportError` if it has none."""
    runs = find_runs(work_dir)
    logs = [parse_run(r) for r in runs]
    pruning = [log for log in logs if log.setup is not None]
    if not pruning:
        found = (f'found {len(runs)} run folder(s) ({", ".join(osp.basename(r) for r in runs)})'
                 ' but none has those lines') if runs else 'found no run folder'
        raise ReportError(
            f'{work_dir} has no mmgfp pruning logs: expected MMEngine run folders '
            f'{osp.join(work_dir, "<timestamp>", "<timestamp>.log")} with '
            f'"FisherPruningHook: ... channel groups" lines (written when a config with '
            f'FisherPruningHook trains with this work_dir); {found}. Pass the work dir of the '
            'pruning run.')
    return merge(pruning)


def find_spec(work_dir: str, spec: Optional[str] = None) -> Optional[str]:
    """``spec`` if given, else ``channels_final.json``, else the most pruned
    ``pruned_<metric>_<thr>.json`` in ``work_dir`` (in its parent when it is a run folder)."""
    if spec is not None:
        if not osp.isfile(spec):
            raise ReportError(f'channel spec {spec} does not exist')
        return spec
    dirs = [work_dir]
    if osp.isfile(osp.join(work_dir, osp.basename(osp.normpath(work_dir)) + '.log')):
        dirs.append(osp.dirname(osp.normpath(work_dir)))
    for d in dirs:
        final = osp.join(d, 'channels_final.json')
        if osp.isfile(final):
            return final
        saved = [p for p in glob.glob(osp.join(d, 'pruned_*_*.json')) if _threshold(p)]
        if saved:
            return min(saved, key=_threshold)
    return None


def _threshold(path: str) -> Optional[float]:
    m = re.search(r'^pruned_[a-z]+_(\d*\.?\d+)\.json$', osp.basename(path))
    return float(m.group(1)) if m else None


def channel_rows(spec: Dict) -> Tuple[List[Dict], List[Dict]]:
    """Per group (``key``, ``channels``, ``kept``, ``block``) and per pruned layer (``name``,
    ``type``, ``in``/``out`` as (kept, total) or None) rows of a channel spec."""
    spec = load_spec(spec)
    groups = [dict(key=k, channels=g['channels'], block=g['block'],
                   kept=len(from_ranges(g['kept'], g['channels'], k)))
              for k, g in spec['groups'].items()]
    layers = []
    for name, e in spec['layers'].items():
        row = dict(name=name, type=e['type'])
        for f in ('in', 'out'):
            size = e.get(f'{f}_channels')
            row[f] = (len(from_ranges(e[f], size, name)), size) if f in e else None
        layers.append(row)
    return groups, layers


def primary_metric(metrics: Dict[str, Series], metric: Optional[str] = None) -> Optional[str]:
    if metric is not None:
        if metric not in metrics:
            raise ReportError(f'metric {metric!r} is not in the logs; logged metrics: '
                              f'{sorted(metrics) or "none"}')
        return metric
    for m in PREFERRED_METRICS:
        if m in metrics:
            return m
    return sorted(metrics)[0] if metrics else None
