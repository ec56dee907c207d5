"""How much one model's CPU time changes from one built copy to the next (eager PyTorch).

Builds the model of ``--config`` ``--builds`` times in one process (each build a new instance,
random weights, eval mode) and times each on the same input, one after the other, printing
the median of ``--rounds`` runs per build::

    taskset -c 1 .venv/bin/python benchmarks/instance_spread.py \\
        --config mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py --builds 6 --rounds 40

Why: on MobileNetV2 the original model measured 25.5-34.0 ms from one benchmark run to the
next on an idle, pinned core while its compacts did not move (issue 18). If the spread is there
between builds in one process, it belongs to the instance, not to the process, and a ratio
timed on one instance carries it.
"""
import argparse
import statistics
import sys
import time

import torch

import _common as C


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', required=True, help='config path or mim name')
    p.add_argument('--builds', type=int, default=6)
    p.add_argument('--rounds', type=int, default=40, help='timed runs per build (median)')
    p.add_argument('--input-size', type=int, nargs=2, default=[224, 224])
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--randomize-norms', action='store_true',
                   help="random norm statistics on every build, as latency_prediction.py's "
                   'models have (mmgfp.apis.checking.check.randomize_norms, seed = build)')
    p.add_argument('--json', help='write the figures here')
    args = p.parse_args(argv)
    if args.builds < 2 or args.rounds < 1:
        p.error('--builds must be >= 2 and --rounds >= 1')
    C.quiet_logs()
    torch.set_num_threads(args.threads)
    from mmgfp.apis.checking.check import build_model, randomize_norms
    from mmgfp.apis.inputs import demo_batch, tensor_forward
    cfg = C.load_config(args.config)
    medians = []
    with torch.no_grad():
        for b in range(args.builds):
            model = build_model(cfg).eval()
            if args.randomize_norms:
                randomize_norms(model, b)
            if b == 0:
                fwd = tensor_forward(demo_batch(model, 1, args.input_size, seed=0))
            for _ in range(5):
                fwd(model)
            ts = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                fwd(model)
                ts.append((time.perf_counter() - t0) * 1e3)
            medians.append(statistics.median(ts))
            print(f'build {b + 1}/{args.builds}: median {medians[-1]:.2f} ms, min {min(ts):.2f}',
                  flush=True)
            del model
    print(C.env_line())
    print(f'{args.config}: {args.builds} builds in one process, medians {min(medians):.2f}-'
          f'{max(medians):.2f} ms (max/min {max(medians) / min(medians):.3f})')
    C.write_json(args.json, {'benchmark': 'instance_spread', 'args': vars(args),
                             'medians_ms': medians, 'env': C.environment()})
    return medians


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
