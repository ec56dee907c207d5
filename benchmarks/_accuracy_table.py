"""The tables and plot of ``benchmarks/accuracy.py``: means and stds over seeds per method."""
import os
import os.path as osp
import statistics

import _accuracy_kd as K
import _common as C

METHODS = ['gfp_acts', 'gfp_acts_kd', 'gfp_flops', 'gfp_flops_kd', 'tp_l1', 'tp_l1_kd', 'tp_taylor',
           'random', 'thin', 'unpruned', 'unpruned_kd']
# trained once per seed at the full FLOPs, whatever the targets
UNPRUNED = ('unpruned', 'unpruned_kd')
LABELS = {'baseline': 'baseline (unpruned)', 'gfp_acts': 'GFP (acts)',
          'gfp_acts_kd': 'GFP (acts) + distillation',
          'gfp_flops': 'GFP (flops)', 'gfp_flops_kd': 'GFP (flops) + distillation',
          'tp_l1': 'TP group L1',
          'tp_l1_kd': 'TP group L1 + distillation', 'tp_taylor': 'TP group Taylor',
          'random': 'random groups', 'thin': 'thin RetinaNet (scratch)',
          'unpruned': 'unpruned, same budget',
          'unpruned_kd': 'unpruned, same budget + distillation'}
# not in accuracy.py's default --methods: run only when named
OPT_IN = ('gfp_flops_kd', 'unpruned_kd')
# matplotlib's ten cycle colours in the order the methods came (so plots made before keep
# theirs), then one more for gfp_flops_kd (C10 would repeat C0); the markers likewise
_ORDER = [m for m in METHODS if m != 'gfp_flops_kd'] + ['gfp_flops_kd']
COLOURS = dict(zip(_ORDER, [f'C{i}' for i in range(10)] + ['darkgoldenrod']))
MARKERS = dict(zip(_ORDER, 'ohsD*^vXPdp'))


def _mean_std(xs):
    # nan when any value is (e.g. a classifier's top-5 with topk=(1,)): statistics.stdev
    # raises on NaNs
    if not xs or any(x != x for x in xs):
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
            kd = r['kd']
            text = K.recipe(kd['losses'], kd.get('during'), kd.get('fisher'),
                            kd.get('task_weight'), kd.get('unlabeled'), kd.get('pseudo'))
            label += f' ({text})'
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


def curve_end(rows: list, method: str) -> dict:
    """The row a pruned method's curve ends at, at 100% of the FLOPs: the unpruned model with
    the same training budget where it was measured, for a distilled method (``*_kd``) the
    unpruned model given the same teacher where that was measured; else the baseline
    (``rows[0]``)."""
    measured = {r['method']: r for r in rows if r['method'] in UNPRUNED and r['n']}
    order = ('unpruned_kd', 'unpruned') if K.is_kd(method) else ('unpruned',)
    return next((measured[m] for m in order if m in measured), rows[0])


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
    ax = axes[0]
    ax.plot([100.0], [base[key]], 'k*', ms=12, label=LABELS['baseline'])
    for i, method in enumerate(methods):
        rs = sorted((r for r in rows if r['method'] == method and r['n']),
                    key=lambda r: r['flops'])
        colour = COLOURS[method]
        if len(rs) > 1 and method not in UNPRUNED:
            # through the targets and on to the unpruned model, except for the thin networks:
            # their full-width counterpart (trained from scratch as long) is not measured
            tail = [] if method == 'thin' else [(100.0, curve_end(rows, method)[key])]
            pts = [(100 * r['flops'], r[key]) for r in rs] + tail
            ax.plot([p[0] for p in pts], [p[1] for p in pts], '-', color=colour, alpha=0.5)
        ax.errorbar([100 * r['flops'] for r in rs], [r[key] for r in rs],
                    yerr=[_err(r[key + '_std']) for r in rs],
                    fmt=MARKERS[method], color=colour, capsize=3, label=LABELS[method])
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
            colour = COLOURS[method]
            ax.errorbar([x], [r[key]], yerr=[_err(r[key + '_std'])],
                        fmt=MARKERS[method], color=colour, capsize=4, ms=8)
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
