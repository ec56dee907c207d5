"""Write a small visual report of a pruning run from its logs and channel spec.

    python tools/report.py WORK_DIR [--out DIR] [--spec PATH] [--metric NAME]

WORK_DIR is the work dir a config with ``FisherPruningHook`` trained in (all its
``<timestamp>/`` run folders are read and merged by iteration, so resumed runs count once).
DIR (default ``WORK_DIR/report``) receives ``report.md`` with a summary table, the validation
metrics and the channels kept per group, plus ``progress.png`` (FLOPs/activations/parameters
remaining vs iteration, the validation metric on a second axis), ``metric_vs_flops.png`` (when a
metric was logged) and ``channels.png`` (original vs kept channels per group, from PATH or the
work dir's ``channels_final.json`` / most pruned ``pruned_*.json``).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Plot and summarise a pruning run')
    parser.add_argument('work_dir', help='the work dir of a run with FisherPruningHook')
    parser.add_argument('--out', help='output folder (default: WORK_DIR/report)')
    parser.add_argument('--spec', help='channel spec JSON for the channels chart (default: '
                                       'channels_final.json or the most pruned pruned_*.json)')
    parser.add_argument('--metric', help='validation metric to plot (default: coco/bbox_mAP, '
                                         'accuracy/top1, ... whichever was logged)')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from mmgfp.apis.report.data import ReportError
    from mmgfp.apis.report.render import make_report
    try:
        out = make_report(args.work_dir, args.out, args.spec, args.metric)
    except ReportError as e:
        raise SystemExit(f'error: {e}')
    log = out['log']
    final = log.final()
    print(f"{len(log.steps)} pruning steps over {log.last_iter} iterations; remaining: " +
          ', '.join(f'{k} {v:.4f}' for k, v in final.items()))
    print(f"wrote {out['report']}")
    for path in out['images'].values():
        print(f'wrote {path}')
    return out


if __name__ == '__main__':
    main()
