"""Make a pruned checkpoint physically smaller and write a config that builds it.

    python tools/deploy_pruned.py CONFIG CHECKPOINT --out-dir DIR
    python tools/deploy_pruned.py CONFIG CHECKPOINT --out-dir DIR --measure \
        [--latency-table TABLE.json] [--device cpu] [--batch N] [--input-size H W]
        [--backend torch|onnxruntime]

CONFIG is the config the checkpoint was trained with (with ``FisherPruningHook``); CHECKPOINT
one of its checkpoints (``pruned_flops_0.50.pth``, ``iter_N.pth``...). DIR receives
``compact.pth``, ``channels.json`` (the kept channels, readable) and ``<config>_compact.py``,
which mmdet's/mmpretrain's own ``tools/test.py``, ``init_detector``/``DetInferencer`` and
``tools/train.py`` (fine-tuning) use as is.

``--measure`` then times the compact model against the original (the checkpoint's weights in
the config's model) on this device, interleaved, in ``mode='tensor'``; with ``--latency-table``
(``tools/profile_latency.py``) it also prints the table's predicted latency of both, measured
with the table's settings (dtype, batch, input size, threads). ``--backend onnxruntime`` exports
both models' tensor path to ONNX and times them in ONNX Runtime (the default is the table's
runtime, else eager PyTorch); a table from another machine or runtime is named in a warning.
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
    parser.add_argument('--measure', action='store_true',
                        help='time the compact model against the original on this device')
    parser.add_argument('--latency-table', help='a table of tools/profile_latency.py: show its '
                        'prediction and measure with its settings (implies --measure)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (--measure)")
    parser.add_argument('--batch', type=int, help='batch size (--measure; default: the '
                        "table's, else 1)")
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                        help="input size (--measure; default: the table's, else 320x320 for "
                             'detectors, 224x224 for classifiers)')
    parser.add_argument('--threads', type=int, help='CPU threads while timing (--measure)')
    parser.add_argument('--backend', choices=['torch', 'onnxruntime'], default=None,
                        help="runtime to time in (--measure; default: the table's, else torch)")
    parser.add_argument('--rounds', type=int, default=10,
                        help='interleaved timing rounds, median (--measure)')
    args = parser.parse_args(argv)
    if args.latency_table:
        args.measure = True
    if args.rounds < 1 or (args.batch is not None and args.batch < 1):
        parser.error(f'--rounds and --batch must be positive, got {args.rounds} and '
                     f'{args.batch}')
    if args.latency_table and not osp.isfile(args.latency_table):
        parser.error(f'--latency-table {args.latency_table} does not exist; make it with '
                     'tools/profile_latency.py')
    return args


def measure(args, written):
    """Print (and return) the latency report of the deployed compact model."""
    from mmgfp.apis.latency.check import deployed_latency
    if written.get('pruned') != 'yes':
        print('--measure: nothing was pruned, the compact model is the original')
        return None
    rep = deployed_latency(args.config, args.checkpoint, written, args.latency_table,
                           device=args.device, batch=args.batch, input_size=args.input_size,
                           threads=args.threads, rounds=args.rounds, backend=args.backend)
    print(rep['text'])
    return rep


def main(argv=None):
    args = parse_args(argv)
    import mmgfp  # noqa: F401
    from mmgfp.apis.deploying.deploy import deploy
    from mmgfp.core.spec import SpecError
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise SystemExit(f'error: {what} {path} does not exist')
    from mmgfp.core import LatencyTableError
    try:
        written = deploy(args.config, args.checkpoint, args.out_dir)
        if args.measure:
            written['latency'] = measure(args, written)
        return written
    except (SpecError, LatencyTableError) as e:
        raise SystemExit(f'error: {e}')


if __name__ == '__main__':
    main()
