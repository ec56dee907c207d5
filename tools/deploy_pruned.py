"""Make a pruned checkpoint physically smaller and write a config that builds it.

    python tools/deploy_pruned.py CONFIG CHECKPOINT --out-dir DIR

CONFIG is the config the checkpoint was trained with (with ``FisherPruningHook``); CHECKPOINT
one of its checkpoints (``pruned_flops_0.50.pth``, ``iter_N.pth``...). DIR receives
``compact.pth``, ``channels.json`` (the kept channels, readable) and ``<config>_compact.py``,
which mmdet's/mmpretrain's own ``tools/test.py``, ``init_detector``/``DetInferencer`` and
``tools/train.py`` (fine-tuning) use as is.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Deploy a pruned checkpoint as a compact model')
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='a checkpoint saved while or after pruning')
    parser.add_argument('--out-dir', required=True, help='where to write the compact model')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import mmgfp  # noqa: F401
    from mmgfp.apis.deploy import deploy
    from mmgfp.core.spec import SpecError
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise SystemExit(f'error: {what} {path} does not exist')
    try:
        return deploy(args.config, args.checkpoint, args.out_dir)
    except SpecError as e:
        raise SystemExit(f'error: {e}')


if __name__ == '__main__':
    main()
