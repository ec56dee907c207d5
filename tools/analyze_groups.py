"""Print (or dump as JSON) the channel groups mmgfp finds in a model.

    python tools/analyze_groups.py CONFIG [--input-size H W] [--json PATH]
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Show the coupled channel groups of a model')
    parser.add_argument('config', help='an mmdet/mmpretrain config (path or scope::path)')
    parser.add_argument('--input-size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help="demo image size (default: a classifier's test-pipeline size, "
                        '128x128 for detectors)')
    parser.add_argument('--json', help='write the groups as JSON here')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import mmgfp  # noqa: F401
    from mmengine.config import Config
    from mmgfp.apis.checking.check import analyze, group_table, load_config
    try:
        found = analyze(load_config(args.config), args.input_size)
    except (ValueError, FileNotFoundError) as e:  # a wrong input size or config: say which
        print(f'error: {e}', file=sys.stderr)
        return 1
    gs = found['groups']
    table = group_table(gs)
    print(gs.summary())
    for g in table:
        state = 'prunable' if g['prunable'] else 'FIXED: ' + '; '.join(g['reasons'])
        print(f"- {g['key']}: {g['channels']} channels (block {g['block']}), {state}")
        print(f"    producers:   {', '.join(g['producers']) or '-'}")
        print(f"    consumers:   {', '.join(g['consumers']) or '-'}")
        if g['passthrough']:
            print(f"    passthrough: {', '.join(g['passthrough'])}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'summary': gs.summary(), 'groups': table}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
