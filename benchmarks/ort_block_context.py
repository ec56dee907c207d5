"""Does a conv block cost more in ONNX Runtime timed alone than inside a chain of blocks?

A latency table times every layer's block (conv + BN + ReLU) alone; ONNX Runtime's CPU provider
converts a lone block's input and output to and from its blocked memory layout, which a whole
model pays once. This script times a block alone and in a chain of five identical blocks (same
session settings as the tables: one intra-op thread, all graph optimisations), interleaved,
median of 15 rounds, and prints the ratio alone / chained per block::

    taskset -c 1 .venv/bin/python benchmarks/ort_block_context.py

Random weights, batch 1; the shapes are ResNet-50's (channels, feature size, kernel).

``--config CONFIG --input-size H W`` instead sums every timed layer's block at full width, as a
latency table times it (one thread, CPU time, median of 7 runs), alone and in context
(:meth:`mmgfp.apis.latency.runner.Backend.time_block`: less the layout conversions at the
block's edges), and prints both sums over the whole model's time (tensor path, median of 11)::

    taskset -c 1 .venv/bin/python benchmarks/ort_block_context.py \
        --config mmpretrain::resnet/resnet50_8xb32_in1k.py --input-size 224 224
"""
import argparse
import os.path as osp
import sys
import io
import statistics
import time
import warnings

import torch
import torch.nn as nn

CASES = [(64, 56, 3), (64, 56, 1), (128, 28, 3), (256, 14, 3), (512, 7, 3), (256, 56, 1)]


def session(model: nn.Module, x: torch.Tensor):
    """``fn()`` running ``model`` exported to ONNX in an ONNX Runtime CPU session."""
    import onnxruntime as ort
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model.eval(), (x, ), buf, dynamo=False, opset_version=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=['CPUExecutionProvider'])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feed)


def block(c: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c),
                         nn.ReLU())


def alone_and_chained(c: int, hw: int, k: int, rounds: int = 15, reps: int = 5):
    """Median seconds of one block alone and per block in a chain of five."""
    x = torch.randn(1, c, hw, hw)
    fns = {1: session(block(c, k), x),
           5: session(nn.Sequential(*[block(c, k) for _ in range(5)]), x)}
    for f in fns.values():
        for _ in range(reps):
            f()
    times = {n: [] for n in fns}
    for _ in range(rounds):
        for n, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            times[n].append((time.perf_counter() - t0) / reps / n)
    return statistics.median(times[1]), statistics.median(times[5])


def layers_and_model(config: str, size) -> None:
    """Print the blocks' sums (alone, in context) over the whole model's time."""
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from mmgfp.apis.checking.check import load_config
    from mmgfp.apis.latency.plan import capture_calls, plan_layers
    from mmgfp.apis.latency.profile import config_model, time_models
    from mmgfp.apis.latency.runner import Backend, LayerTimer, Timer
    from mmgfp.core.latency import timed_layers
    model, groups, fwd = config_model(load_config(config), 1, size)
    model.eval()
    run = Backend('onnxruntime', threads=1)
    layers = plan_layers(groups, capture_calls(model, fwd, timed_layers(groups)))
    timer, sums = Timer('cpu', 7, 2, run.clock), {'alone': 0.0, 'in context': 0.0}
    for name, layer in layers.items():
        lt = LayerTimer(layer, run, timer)
        full = [layer['axes'].get(k, layer['axes'].get('width')) for k in ('in', 'out')]
        sums['in context'] += lt(*full)
        run.time_block = lambda m, x, t: t(run.callable(m, x))  # alone: the whole run
        sums['alone'] += lt(*full, fresh=True)
        del run.time_block
    total = time_models({'full': model}, fwd, run, 11, 2)['full']
    print(f'{config} @{size}: whole model {total / 1e3:.1f} ms ({run.clock} clock); '
          f'its {len(layers)} timed layers sum to ' + ', '.join(
              f'{v / 1e3:.1f} ms = {v / total:.0%} {k}' for k, v in sums.items()))


def main():
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description='ONNX Runtime blocks alone and in context')
    p.add_argument('--config', help='sum the layers of this model against its whole time')
    p.add_argument('--input-size', type=int, nargs=2, default=[224, 224])
    args = p.parse_args()
    if args.config:
        return layers_and_model(args.config, tuple(args.input_size))
    print('| channels | feature | kernel | alone (us) | in a chain, per block (us) | alone / chained |')
    print('|---|---|---|---|---|---|')
    for c, hw, k in CASES:
        one, chained = alone_and_chained(c, hw, k)
        print(f'| {c} | {hw}x{hw} | {k}x{k} | {one * 1e6:.0f} | {chained * 1e6:.0f} | '
              f'{one / chained:.2f} |', flush=True)


if __name__ == '__main__':
    main()
