"""Collect stored runs of ``benchmarks/accuracy.py`` from several work dirs into one table.

``accuracy.py --stored-only`` tabulates the runs of one work dir made with one set of options.
Comparisons of distillation recipes keep each recipe in its own work dir (or under its own
run folder), sometimes with another baseline argument (``--baseline PATH`` against
``--baseline-iters N``, which are different signatures); this script reads their
``result.json`` files as they are and prints one row per label: mean ± std over seeds, the
per-seed values, and the per-seed difference to a reference row (paired by seed).

Usage (one ``LABEL=GLOB`` per row; the glob matches run folders)::

    python benchmarks/accuracy_collect.py --ref gfp_acts \\
        unpruned='work_dirs/accuracy_b2000/runs/unpruned_t100_s*' \\
        gfp_acts='work_dirs/accuracy_b2000/runs/gfp_acts_t30_s*' \\
        --json benchmarks/results/accuracy_kd_b2000.json

Nothing is recomputed: every figure is a stored run's.
"""
import argparse
import glob
import json
import os.path as osp
import sys

from _accuracy_table import _mean_std


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('rows', nargs='+', metavar='LABEL=GLOB',
                   help='a row: its label and a glob of run folders (each with result.json)')
    p.add_argument('--ref', help='label of the row the paired differences are taken to')
    p.add_argument('--metric', default='mAP', help="result key to tabulate ('mAP', 'top1', "
                   "'mIoU', 'AP'; default mAP)")
    p.add_argument('--json', help='write the rows (with every run) here')
    args = p.parse_args(argv)
    rows = []
    for item in args.rows:
        label, sep, pattern = item.partition('=')
        if not sep or not label or not pattern:
            p.error(f'a row is LABEL=GLOB, got {item!r}')
        rows.append((label, pattern))
    if args.ref is not None and args.ref not in {label for label, _ in rows}:
        p.error(f'--ref {args.ref!r} is not one of the row labels')
    args.rows = rows
    return args


def load(pattern: str, metric: str) -> list:
    """The stored runs whose folders match ``pattern`` (errors and missing files skipped)."""
    runs = []
    for folder in sorted(glob.glob(pattern)):
        path = osp.join(folder, 'result.json')
        if not osp.isfile(path):
            continue
        with open(path) as f:
            r = json.load(f)
        if 'error' in r or metric not in r:
            continue
        r['folder'] = folder
        runs.append(r)
    return runs


def row(label: str, runs: list, metric: str, ref: dict = None) -> dict:
    by_seed = {r['seed']: r[metric] for r in runs}
    vals = [by_seed[s] for s in sorted(by_seed)]
    mean, std = _mean_std(vals)
    out = {'label': label, 'n': len(vals), 'seeds': sorted(by_seed), metric: vals,
           'mean': mean, 'std': std, 'flops': _mean_std([r['flops'] for r in runs])[0],
           'kd': next((r['info']['kd'] for r in runs if 'kd' in r.get('info', {})), None),
           'runs': [r['folder'] for r in runs]}
    if ref is not None:
        out['paired'] = {s: round(by_seed[s] - ref[s], 4) for s in sorted(by_seed) if s in ref}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    loaded = {label: load(pattern, args.metric) for label, pattern in args.rows}
    ref = {r['seed']: r[args.metric] for r in loaded.get(args.ref, [])} if args.ref else None
    rows = [row(label, loaded[label], args.metric, None if label == args.ref else ref)
            for label, _ in args.rows]
    print(f'| row | FLOPs % | {args.metric} (mean ± std) | per seed | minus {args.ref} '
          '(paired) |\n|---|---|---|---|---|')
    for r in rows:
        std = '' if r['std'] != r['std'] else f" ± {r['std']:.3f}"
        per = ' / '.join(f'{v:.3f}' for v in r[args.metric]) or 'no runs'
        paired = ' / '.join(f'{d:+.3f}' for d in r.get('paired', {}).values())
        print(f"| {r['label']} | {100 * r['flops']:.1f} | {r['mean']:.3f}{std} | "
              f"{per} (seeds {r['seeds']}) | {paired} |")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'benchmark': 'accuracy_collect', 'argv': sys.argv[1:], 'rows': rows},
                      f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
