"""PNG plots and the markdown page of a pruning report (data from :mod:`mmgfp.apis.report.data`),
and :func:`make_report`, which writes them for a work dir.

Figures are drawn on matplotlib's Agg canvas without pyplot: nothing global changes in the
calling process (no backend switch, no open-figure registry).
"""
import os
import os.path as osp
import re
from typing import Dict, List, Optional

from mmgfp.core.spec import SpecError
from mmgfp.apis.report.data import (METRICS, PruningLog, ReportError, channel_rows, find_spec,
                                    load_log, primary_metric)

LABELS = {'flops': 'FLOPs', 'acts': 'activations', 'params': 'parameters'}
COLORS = {'flops': 'tab:blue', 'acts': 'tab:orange', 'params': 'tab:green'}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, format='png')
    return path


def plot_progress(log: PruningLog, path: str, metric: Optional[str] = None) -> str:
    """FLOPs/activations/parameters remaining vs iteration; ``metric`` on a second axis."""
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    end = max(log.last_iter, log.steps[-1].iter if log.steps else 0)
    final = log.final()
    for k in METRICS:
        if k not in (log.initial or {}):
            continue
        xs = [log.start] + [s.iter for s in log.steps] + [end]
        ys = [log.initial[k]] + [s.remaining[k] for s in log.steps] + [final[k]]
        ax.step(xs, ys, where='post', color=COLORS[k], label=f'{LABELS[k]} remaining')
    if log.setup:
        ax.axhline(log.setup['target'], ls='--', lw=1, color='gray',
                   label=f"target ({LABELS.get(log.setup['target_metric'], '?')})")
    if log.finished and log.steps:
        ax.axvline(log.steps[-1].iter, ls=':', lw=1, color='black',
                   label=f'pruning finished ({log.finished})')
    ax.set_ylim(0, 1.05)
    ax.set_xlabel('iteration')
    ax.set_ylabel('fraction of the unpruned model')
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if metric is not None and log.metrics.get(metric):
        ax2 = ax.twinx()
        xs, ys = zip(*log.metrics[metric])
        ax2.plot(xs, ys, 'o-', color='tab:red', ms=4, label=f'{metric} (val)')
        ax2.set_ylabel(metric)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc='lower left', fontsize=8)
    ax.set_title(f'Pruning progress ({log.units_pruned()} units in {len(log.steps)} steps)')
    return _save(fig, path)


def plot_metric_vs_flops(log: PruningLog, path: str, metric: str) -> str:
    """Validation ``metric`` against the FLOPs remaining when it was measured."""
    fig = _figure(5.5, 4.0)
    ax = fig.add_subplot()
    points = [(log.remaining_at(it).get('flops', 1.0), v, it) for it, v in log.metrics[metric]]
    ax.plot([p[0] for p in points], [p[1] for p in points], 'o-', color='tab:red', ms=4)
    for x, y, it in (points[0], points[-1]) if len(points) > 1 else points:
        ax.annotate(f'iter {it}', (x, y), textcoords='offset points', xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel('FLOPs remaining (fraction of the unpruned model)')
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.set_title(f'{metric} vs FLOPs')
    return _save(fig, path)


def _short(name: str, limit: int = 42) -> str:
    return name if len(name) <= limit else '...' + name[-(limit - 3):]


def plot_channels(groups: List[Dict], path: str) -> str:
    """Horizontal bars per group: original channels (light) and kept channels (dark)."""
    n = len(groups)
    fig = _figure(7.5, max(2.5, 0.19 * n + 1.2))
    ax = fig.add_subplot()
    y = list(range(n))
    ax.barh(y, [g['channels'] for g in groups], color='lightgray', label='original')
    ax.barh(y, [g['kept'] for g in groups], color='tab:blue', label='kept')
    ax.set_yticks(y, [_short(g['key']) for g in groups], fontsize=7 if n > 20 else 9)
    ax.invert_yaxis()
    for i, g in enumerate(groups):
        ax.text(g['channels'], i, f" {g['kept']}/{g['channels']}", va='center', fontsize=6)
    ax.set_xlim(0, max(g['channels'] for g in groups) * 1.15)
    ax.set_xlabel('channels')
    ax.legend(loc='upper left', bbox_to_anchor=(1.0, 1.0), fontsize=8)
    kept, total = sum(g['kept'] for g in groups), sum(g['channels'] for g in groups)
    ax.set_title(f'Channels kept per group (named by its first layer): {kept}/{total}')
    return _save(fig, path)


# -- markdown -------------------------------------------------------------------------------
def _natural(name: str):
    """Sort key that puts ``layer2`` before ``layer10`` (model order for mmdet/mmpretrain)."""
    return [(0, int(t), '') if t.isdigit() else (1, 0, t) for t in re.split(r'(\d+)', name)]


def _pct(v: float) -> str:
    return f'{100 * v:.2f}%'


def _summary(log: PruningLog, work_dir: str, spec_path: Optional[str],
             groups: List[Dict]) -> List[str]:
    runs = ', '.join(f'`{r}` (' + (f'resumed at iter {s}' if s else 'from iter 0') + ')'
                     for r, s in log.starts.items())
    if spec_path and not osp.relpath(spec_path, work_dir).startswith('..'):
        spec_path = osp.relpath(spec_path, work_dir)
    setup = log.setup
    rows = [('runs', runs),
            ('groups', f"{setup['groups']} channel groups, {setup['prunable']} prunable"),
            ('setup', f"delta={setup['delta']}, target {setup['target_metric']} "
                      f"{setup['target']:.2f}, a step every {setup['interval']} iterations"),
            ('iterations', f'{log.last_iter}' + (f' of {log.max_iters}' if log.max_iters
                                                 else '')),
            ('pruning steps', f'{len(log.steps)} ({log.units_pruned()} units removed); ' +
             (f'finished: {log.finished}' if log.finished else 'not finished'))]
    final = log.final()
    rows += [(f'{LABELS[k]} remaining', _pct(final[k])) for k in METRICS if k in final]
    rows.append(('checkpoints saved', ', '.join(f'`{s}.pth`' for s in log.saved) or 'none'))
    if spec_path:
        kept, total = sum(g['kept'] for g in groups), sum(g['channels'] for g in groups)
        pruned = sum(g['kept'] < g['channels'] for g in groups)
        rows.append(('channel spec', f'`{spec_path}`: {pruned} of {len(groups)} groups '
                                     f'pruned, {kept} of {total} channels kept'))
    else:
        rows.append(('channel spec', 'none found (no `channels_final.json` or '
                                     '`pruned_*.json`; pass `--spec`)'))
    rows.append(('metrics', ', '.join(f'`{m}`' for m in sorted(log.metrics)) or
                 'none logged (no validation in the run, or no `vis_data/scalars.json`)'))
    return ['| | |', '|---|---|'] + [f'| {k} | {v} |' for k, v in rows]


def _metric_table(log: PruningLog) -> List[str]:
    lines = ['| metric | first | best | last | FLOPs remaining at last |', '|---|---|---|---|---|']
    for m in sorted(log.metrics):
        s = log.metrics[m]
        best = max(s, key=lambda p: p[1])
        cell = [f'{v:.4f} (iter {it})' for it, v in (s[0], best, s[-1])]
        flops = log.remaining_at(s[-1][0]).get('flops')
        lines.append(f"| `{m}` | {' | '.join(cell)} | "
                     f"{_pct(flops) if flops is not None else '-'} |")
    return lines


def _channel_tables(groups: List[Dict], layers: List[Dict]) -> List[str]:
    lines = ['## Channels per group', '', '| group (first layer) | channels | kept | kept % |',
             '|---|---|---|---|']
    lines += [f"| `{g['key']}` | {g['channels']} | {g['kept']} | "
              f"{100 * g['kept'] / g['channels']:.1f}% |" for g in groups]
    if layers:
        lines += ['', '<details><summary>Pruned layers (' + str(len(layers)) +
                  ')</summary>', '', '| layer | type | in kept | out kept |', '|---|---|---|---|']

        def cell(v):
            return f'{v[0]}/{v[1]}' if v else '-'
        lines += [f"| `{r['name']}` | {r['type']} | {cell(r['in'])} | {cell(r['out'])} |"
                  for r in sorted(layers, key=lambda r: _natural(r['name']))]
        lines += ['', '</details>']
    return lines


def render(log: PruningLog, work_dir: str, spec_path: Optional[str], groups: List[Dict],
           layers: List[Dict], metric: Optional[str], images: Dict[str, str]) -> str:
    """The markdown page; ``images`` maps plot names to paths relative to the page."""
    lines = [f'# Pruning report: `{osp.basename(osp.normpath(work_dir))}`', '']
    lines += _summary(log, work_dir, spec_path, groups) + ['']
    lines += [f"![remaining FLOPs, activations and parameters over iterations]"
              f"({images['progress']})", '']
    if log.metrics:
        lines += ['## Validation metrics', ''] + _metric_table(log) + ['']
        if 'metric_vs_flops' in images:
            lines += [f"![{metric} vs FLOPs remaining]({images['metric_vs_flops']})", '']
    if groups:
        lines += [f"![channels kept per group]({images['channels']})", '']
        lines += _channel_tables(groups, layers) + ['']
    return '\n'.join(lines)


def make_report(work_dir: str, out_dir: Optional[str] = None, spec: Optional[str] = None,
                metric: Optional[str] = None) -> Dict:
    """Write ``report.md`` and its PNGs for the pruning run in ``work_dir``.

    Args:
        work_dir (str): The run's work dir (or one ``<timestamp>`` folder of it).
        out_dir (str, optional): Where to write. Defaults to ``WORK_DIR/report``.
        spec (str, optional): Channel spec for the per-group chart. Defaults to the work dir's
            ``channels_final.json``, else its most pruned ``pruned_*.json``.
        metric (str, optional): Validation metric to plot. Defaults to the first of
            ``coco/bbox_mAP``, ``coco/segm_mAP``, ``accuracy/top1``, ``pascal_voc/mAP`` logged.

    Returns:
        dict: ``report`` (markdown path), ``images`` (name -> PNG path), ``log``
        (:class:`PruningLog`), ``spec`` (path or None), ``groups``/``layers`` (rows).
    """
    log = load_log(work_dir)
    spec_path = find_spec(work_dir, spec)
    try:
        groups, layers = channel_rows(spec_path) if spec_path else ([], [])
    except SpecError as e:
        raise ReportError(f'channel spec {spec_path}: {e}') from None
    name = primary_metric(log.metrics, metric)
    out_dir = out_dir or osp.join(work_dir, 'report')
    os.makedirs(out_dir, exist_ok=True)
    images = {'progress': plot_progress(log, osp.join(out_dir, 'progress.png'), name)}
    if name is not None:
        images['metric_vs_flops'] = plot_metric_vs_flops(
            log, osp.join(out_dir, 'metric_vs_flops.png'), name)
    if groups:
        images['channels'] = plot_channels(groups, osp.join(out_dir, 'channels.png'))
    path = osp.join(out_dir, 'report.md')
    text = render(log, work_dir, spec_path, groups, layers, name,
                  {k: osp.relpath(v, out_dir) for k, v in images.items()})
    with open(path, 'w') as f:
        f.write(text)
    return dict(report=path, images=images, log=log, spec=spec_path, groups=groups,
                layers=layers, metric=name)
