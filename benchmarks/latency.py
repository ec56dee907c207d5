"""CPU latency of compact (physically pruned) models against the originals, at ~50% FLOPs.

Run from the repository root::

    .venv/bin/python benchmarks/latency.py                  # all three models, about 10 min
    .venv/bin/python benchmarks/latency.py --models resnet50 --json latency.json

For each model (random initialisation, no pretrained weights) and each importance
normalisation, ``delta='acts'`` and ``delta='flops'``:

1. trace the groups once (``build_groups`` on the loss path of a random demo batch at the
   *pruning* input size);
2. prune with :class:`mmgfp.core.FisherPruner` as the hook would: one real Fisher iteration
   (masks attached, recorder started, loss forward + backward on a fresh random batch) before
   every bulk step ``pruner.step(--channels-per-step)``, until ``remaining()['flops'] <= 0.5``;
   The norm layers get random affine parameters and statistics first (``randomize_norms``):
   a fresh ResNet zero-initialises the last BN of each residual block, which gives every inner
   channel exactly zero Fisher, so both deltas would prune the same, arbitrary, channels;
3. ``make_spec`` + ``apply_spec`` on a deep copy gives the compact model; its tensor-mode output
   is checked against the masked model's (relative difference, should be ~1e-6).

Then the original and both compact models run ``tensor_forward`` (``mode='tensor'``: the raw
network outputs, no NMS/post-processing) in eval mode under ``torch.no_grad`` at the
*latency* input size, for batch 1 and 8, interleaved (every round times each model once, in
rotating order) after warm-up; the median over rounds is reported.

FLOPs (multiply-accumulates), activations (output elements of conv/linear layers) and
parameters of the compact models are counted independently at the latency input size with
forward hooks (not with mmgfp's own counters), and mmgfp's ``remaining()`` at the pruning input
size is shown next to them. Pruning at a smaller input size than the latency one keeps the
script fast; the ratios barely depend on it (every feature map scales alike).
"""
import argparse
import copy
import sys
import time

import torch
import torch.nn as nn

import _common as C

MODELS = ['retinanet_r50', 'fcos_r50', 'resnet50']


def is_detector(name):
    return name != 'resnet50'


class Counter:
    """MACs, output elements of conv/linear layers, per sample, via forward hooks."""

    def __init__(self, model):
        self.macs = self.acts = 0
        self.handles = [m.register_forward_hook(self.hook) for m in model.modules()
                        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]

    def hook(self, m, inputs, out):
        if isinstance(m, nn.Linear):
            self.macs += out.numel() * m.in_features
        else:
            k = 1
            for d in m.kernel_size:
                k *= d
            if isinstance(m, nn.modules.conv._ConvTransposeNd):  # per *input* position
                x = inputs[0]
                self.macs += x.numel() * m.out_channels // m.groups * k
            else:
                self.macs += out.numel() * (m.in_channels // m.groups) * k
        self.acts += out.numel()

    def close(self):
        for h in self.handles:
            h.remove()


def costs(model, batch):
    from mmgfp.apis.inputs import tensor_forward
    cnt = Counter(model)
    with torch.no_grad():
        tensor_forward(batch)(model)
    cnt.close()
    n = len(batch['inputs'])
    return {'flops': cnt.macs / n, 'acts': cnt.acts / n,
            'params': sum(p.numel() for p in model.parameters())}


def fisher_iteration(model, pruner, batch):
    rec = pruner.recorder
    rec.start()
    rec.begin_iter(len(batch['inputs']))
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    loss.backward()
    rec.end_iter()
    model.zero_grad(set_to_none=True)


def prune(orig, groups, delta, name, args, seed):
    """A pruned deep copy of ``orig`` and its spec, with what it took."""
    from mmgfp.apis.inputs import demo_batch, tensor_forward
    from mmgfp.apis.check import rel_diff
    from mmgfp.core import FisherPruner, apply_spec, make_spec
    model = copy.deepcopy(orig)
    model.train()
    pruner = FisherPruner(model, groups, delta=delta)
    size = (args.prune_det_size if is_detector(name) else args.prune_cls_size,) * 2
    bs = args.prune_det_batch if is_detector(name) else args.prune_cls_batch
    t0 = time.perf_counter()
    steps = iters = 0
    while pruner.remaining()['flops'] > args.target:
        batch = demo_batch(model, bs, size, seed=seed + iters)
        fisher_iteration(model, pruner, batch)
        iters += 1
        if not pruner.step(args.channels_per_step):
            break
        steps += 1
    t_prune = time.perf_counter() - t0
    rem = pruner.remaining()
    pruner.recorder.stop()
    spec = make_spec(pruner.masker)
    # equivalence: masked model vs compact model, eval, tensor outputs, latency input size
    model.eval()
    lat_size = (args.det_size if is_detector(name) else args.cls_size,) * 2
    check = demo_batch(model, 1, lat_size, seed=seed + 999)
    pruner.masker.attach()
    with torch.no_grad():
        ref = tensor_forward(check)(model)
    pruner.masker.detach()  # the hooks must not travel with the deep copy
    compact = apply_spec(copy.deepcopy(model), spec)
    compact.eval()
    with torch.no_grad():
        out = tensor_forward(check)(compact)
    return compact, {'remaining': rem, 'prune_s': t_prune, 'steps': steps,
                     'fisher_iters': iters, 'rel_diff': rel_diff(out, ref),
                     'channels_pruned': sum(len(r.units) * groups.groups[r.key].block
                                            for r in pruner.history)}


def latency(models, batch, warmup, rounds, guard):
    from mmgfp.apis.inputs import tensor_forward
    fwd = tensor_forward(batch)
    names = list(models)
    for _ in range(warmup):
        for n in names:
            with torch.no_grad():
                fwd(models[n])
    times = {n: [] for n in names}

    def one_round(order):
        got = {}
        for n in order:
            with torch.no_grad():
                got[n] = C.timed(lambda: fwd(models[n]))
        return got

    for r in range(rounds):
        k = r % len(names)
        got = guard.run(lambda: one_round(names[k:] + names[:k]))
        for n, t in got.items():
            times[n].append(t)
    return {n: C.median(t) for n, t in times.items()}, times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=MODELS, choices=MODELS)
    p.add_argument('--deltas', nargs='+', default=['acts', 'flops'], choices=['acts', 'flops'])
    p.add_argument('--target', type=float, default=0.5, help='FLOPs fraction to keep')
    p.add_argument('--channels-per-step', type=int, default=32,
                   help='selections per pruning step (one Fisher iteration before each)')
    p.add_argument('--det-size', type=int, default=320, help='detector latency input side')
    p.add_argument('--cls-size', type=int, default=224, help='classifier latency input side')
    p.add_argument('--prune-det-size', type=int, default=128)
    p.add_argument('--prune-det-batch', type=int, default=2)
    p.add_argument('--prune-cls-size', type=int, default=128)
    p.add_argument('--prune-cls-batch', type=int, default=4)
    p.add_argument('--batches', nargs='+', type=int, default=[1, 8])
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--rounds', type=int, default=5, help='timed forwards per model (median)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--max-foreign', type=float, default=0.2,
                   help='discard and redo timing rounds during which other processes used '
                        'more than this many cores')
    p.add_argument('--max-wait', type=float, default=1800,
                   help='seconds to spend waiting out contention in total')
    p.add_argument('--wait-idle', type=float, default=0, metavar='SECONDS',
                   help='first wait up to this long for other processes to go quiet')
    p.add_argument('--json', help='write the results here')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    C.quiet_logs()
    from mmgfp.apis.check import build_model, randomize_norms
    from mmgfp.apis.inputs import demo_batch, loss_forward
    from mmgfp.core import build_groups

    if not getattr(args, 'worker', False):
        print('[wait] ' + C.wait_idle(args.wait_idle), flush=True)
    monitor = C.CpuMonitor()
    rows, details = [], []
    guard = C.Guard(args.max_foreign, args.max_wait)
    t_start = time.perf_counter()
    for name in args.models:
        torch.manual_seed(args.seed)
        orig = build_model(C.load_config(name))
        # Random init zeroes the last BN gamma of every residual block (zero_init_residual):
        # the inner channels would then all get exactly zero Fisher and tie, whatever `delta`.
        randomize_norms(orig, args.seed)
        det = is_detector(name)
        psize = (args.prune_det_size if det else args.prune_cls_size,) * 2
        lsize = (args.det_size if det else args.cls_size,) * 2
        orig.train()
        t0 = time.perf_counter()
        groups = build_groups(orig, loss_forward(demo_batch(orig, 2, psize, seed=args.seed)))
        t_groups = time.perf_counter() - t0
        print(f'[latency] {name}: {groups.summary()} ({t_groups:.1f} s)', flush=True)
        variants = {'original': orig}
        info = {}
        for delta in args.deltas:
            compact, info[delta] = prune(orig, groups, delta, name, args, args.seed + 1)
            variants[f'compact ({delta})'] = compact
            i = info[delta]
            print(f'[latency] {name} delta={delta}: {i["steps"]} steps of '
                  f'{args.channels_per_step}, {i["channels_pruned"]} channels, '
                  f'{i["prune_s"]:.0f} s, remaining {fmt_rem(i["remaining"])}, '
                  f'compact vs masked rel diff {i["rel_diff"]:.1e}', flush=True)
        for m in variants.values():
            m.eval()
        cost_batch = demo_batch(orig, 1, lsize, seed=args.seed)
        cost = {k: costs(m, cost_batch) for k, m in variants.items()}
        for bs in args.batches:
            batch = demo_batch(orig, bs, lsize, seed=args.seed + bs)
            med, raw = latency(variants, batch, args.warmup, args.rounds, guard)
            for k in variants:
                delta = k[len('compact ('):-1] if k != 'original' else None
                row = {'model': name, 'input': f'{lsize[0]}x{lsize[1]}', 'batch': bs,
                       'variant': k, 'latency_ms': med[k] * 1e3,
                       'latency_ratio': med[k] / med['original'],
                       'flops_ratio': cost[k]['flops'] / cost['original']['flops'],
                       'acts_ratio': cost[k]['acts'] / cost['original']['acts'],
                       'params_ratio': cost[k]['params'] / cost['original']['params'],
                       'gflops': cost[k]['flops'] / 1e9, 'mparams': cost[k]['params'] / 1e6,
                       'times_ms': [t * 1e3 for t in raw[k]]}
                if delta:
                    rem = info[delta]['remaining']
                    row.update(mmgfp_flops=rem['flops'], mmgfp_acts=rem['acts'],
                               mmgfp_params=rem['params'], rel_diff=info[delta]['rel_diff'])
                rows.append(row)
            print(f'[latency] {name} batch {bs}: ' + ', '.join(
                f'{k} {v * 1e3:.1f} ms' for k, v in med.items()), flush=True)
        details.append({'model': name, 'groups': groups.summary(), 'build_groups_s': t_groups,
                        'prune_input': f'{psize[0]}x{psize[1]}',
                        **{f'prune_{d}': {k: v for k, v in i.items()} for d, i in info.items()}})
        del variants, orig
    total = time.perf_counter() - t_start

    print(f'\nCPU latency of compact models pruned to <= {args.target:.0%} FLOPs, tensor-mode '
          f'forward (no post-processing), eval, no_grad, {args.threads} threads, median of '
          f'{args.rounds} interleaved rounds after {args.warmup} warm-up')
    print(C.env_line())
    print(C.table(rows, ['model', 'input', 'batch', 'variant', 'latency_ms', 'latency_ratio',
                         'flops_ratio', 'acts_ratio', 'params_ratio', 'gflops', 'mparams'],
                  ['model', 'input', 'batch', 'variant', 'latency (ms)', 'latency ratio',
                   'FLOPs ratio', 'acts ratio', 'params ratio', 'GMACs/img', 'params (M)']))
    print('\nPruning runs (FisherPruner on random data; ratios as mmgfp counts them at the '
          'pruning input size; rel diff = compact vs masked model outputs)')
    prow = []
    for d in details:
        for delta in args.deltas:
            i = d[f'prune_{delta}']
            prow.append({'model': d['model'], 'delta': delta, 'prune_input': d['prune_input'],
                         'groups': d['groups'], 'steps': i['steps'],
                         'channels': i['channels_pruned'], 'prune_s': i['prune_s'],
                         'flops': i['remaining']['flops'], 'acts': i['remaining']['acts'],
                         'params': i['remaining']['params'], 'rel_diff': f'{i["rel_diff"]:.1e}'})
    print(C.table(prow, ['model', 'delta', 'prune_input', 'groups', 'steps', 'channels',
                         'prune_s', 'flops', 'acts', 'params', 'rel_diff'],
                  ['model', 'delta', 'pruning input', 'groups', 'steps', 'channels pruned',
                   'pruning time (s)', 'FLOPs left', 'acts left', 'params left',
                   'rel diff']))
    print('latency rounds: ' + guard.summary())
    print(f'total time {total:.0f} s; ' + monitor.report())
    C.write_json(args.json, {'benchmark': 'latency', 'args': vars(args), 'rows': rows,
                             'pruning': details, 'total_s': total, 'guard': guard.state(),
                             'foreign_cores': monitor.foreign_cores()})
    return rows


def fmt_rem(rem):
    return ', '.join(f'{k} {v:.3f}' for k, v in rem.items())


if __name__ == '__main__':
    sys.exit(0 if main() is not None else 1)
