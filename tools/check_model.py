"""Check that mmgfp handles an architecture, before spending GPU days on it.

    python tools/check_model.py CONFIG [--ratio R] [--seed S] [--input-size H W] [--json PATH]
        [--latency [--latency-table TABLE.json] [--backend torch|onnxruntime]]

Builds the model of any mmdet/mmpretrain config (no weights needed), finds its channel groups,
masks a random fraction R of every prunable group, exports the compact model, rebuilds it from
the updated config and compares outputs. Exits 1 when the compact model is not equivalent or
does not rebuild.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Check grouping and compaction of a model')
    parser.add_argument('config', help='an mmdet/mmpretrain config (path or scope::path)')
    parser.add_argument('--ratio', type=float, default=0.5,
                        help='fraction of each prunable group to remove at random')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--input-size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help="demo image size (default: a classifier's test-pipeline size, "
                        '128x128 for detectors)')
    parser.add_argument('--json', help='also write the report as JSON here')
    parser.add_argument('--show-groups', action='store_true', help='print every group')
    parser.add_argument('--latency', action='store_true',
                        help='also time the compact model against the original on this CPU '
                             '(and show the prediction of --latency-table)')
    parser.add_argument('--latency-table', help='a table of tools/profile_latency.py for this '
                        'config; the timing uses its settings (implies --latency)')
    parser.add_argument('--backend', choices=['torch', 'onnxruntime'], default=None,
                        help="runtime to time in (--latency; default: the table's, else torch)")
    return parser.parse_args(argv)


def latency_report(args, cfg) -> dict:
    """Predicted and measured latency of the model pruned at random (``--latency``)."""
    from mmgfp.apis.latency.check import random_compact_latency
    from mmgfp.core import LatencyTableError
    try:
        rep = random_compact_latency(cfg, args.ratio, args.seed, args.latency_table,
                                     backend=args.backend)
    except (LatencyTableError, FileNotFoundError) as e:
        raise SystemExit(f'error: --latency-table: {e}')
    print(rep['text'])
    return rep


def _fmt(n: float) -> str:
    for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(n) >= scale:
            return f'{n / scale:.2f}{unit}'
    return f'{n:.0f}'


def format_report(rep: dict, show_groups: bool = False) -> str:
    lines = [f"model: {rep['original_class']} -> rebuilt {rep['rebuilt_class']}, input "
             f"{'x'.join(map(str, rep['input_size']))}",
             f"groups: {rep['num_groups']} ({rep['num_prunable_groups']} prunable)"]
    for key in ('flops', 'params', 'acts'):
        b, a = rep[f'{key}_before'], rep[f'{key}_after']
        lines.append(f'{key:>6}: {_fmt(b)} -> {_fmt(a)} ({a / max(b, 1e-12):.1%})')
    blocked = [g for g in rep['groups'] if not g['prunable']]
    if blocked:
        lines.append('not prunable:')
        for g in blocked:
            lines.append(f"  {g['key']} ({g['channels']} ch): {'; '.join(g['reasons'])}")
    if show_groups:
        lines.append('groups:')
        for g in rep['groups']:
            lines.append(f"  {g['key']}: {g['channels']} ch, block {g['block']}, producers "
                         f"{g['producers']}, consumers {g['consumers']}")
    if rep.get('replayed'):
        lines.append('decisions taken by the masked model and replayed in the compact one: ' +
                     ', '.join(f'{k} ({n}x)' for k, n in rep['replayed'].items()))
    lines.append(f"max relative output difference: {rep['verdict']}")
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import mmgfp  # noqa: F401
    from mmengine.config import Config
    from mmgfp.apis.checking.check import check_model, load_config
    cfg = load_config(args.config)
    try:
        rep = check_model(cfg, args.ratio, args.seed, args.input_size)
    except Exception as e:  # the rebuilt model does not load / build: report, exit 1
        print(f'error: {type(e).__name__}: {e}', file=sys.stderr)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump({'equivalent': False, 'error': f'{type(e).__name__}: {e}'}, f,
                          indent=1)
        return 1
    print(format_report(rep, args.show_groups))
    if args.latency or args.latency_table:
        rep['latency'] = latency_report(args, cfg)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rep, f, indent=1)
    return 0 if rep['equivalent'] else 1


if __name__ == '__main__':
    sys.exit(main())
