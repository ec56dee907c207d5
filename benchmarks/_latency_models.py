"""Models of the latency benchmarks: pruning variants, cost counters, one Fisher-guided prune.

Shared by ``benchmarks/latency.py`` (CPU) and ``benchmarks/gpu/pack.py`` (the GPU pack).
"""
import copy
import time

import torch
import torch.nn as nn

MODELS = ['retinanet_r50', 'fcos_r50', 'resnet50']
# How each compact variant is pruned: importance normalisation, width step, stopping metric.
VARIANTS = {
    'acts': dict(delta='acts', divisor=1, metric='flops'),
    'flops': dict(delta='flops', divisor=1, metric='flops'),
    'acts-d8': dict(delta='acts', divisor=8, metric='flops'),
    'flops-d8': dict(delta='flops', divisor=8, metric='flops'),
    'latency': dict(delta='latency', divisor=1, metric='latency'),
    'latency-auto': dict(delta='latency', divisor='auto', metric='latency'),
}


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


def make_pruner(model, groups, variant, table):
    """A FisherPruner for ``variant``; with a table, ``remaining()`` also predicts latency."""
    from mmgfp.core import FisherPruner
    v = VARIANTS[variant]
    return FisherPruner(model, groups, delta=v['delta'], divisor=v['divisor'],
                        latency_table=table)


def left(pruner, metric):
    """``pruner.remaining()[metric]`` without counting what is not asked for (parameters
    walk the whole model): checked after every selection."""
    if metric == 'latency':
        return pruner.predicted_latency() / pruner.full['latency']
    from mmgfp.core import count
    return count(pruner.groups, pruner.kept)[metric] / pruner.full[metric]


def prune(orig, groups, variant, name, args, seed, table=None):
    """A pruned deep copy of ``orig`` and what it took.

    Variants with ``metric='latency'`` prune until the table predicts ``--latency-target`` of
    the original's time; the others until ``--target`` of the FLOPs remain.
    """
    from mmgfp.apis.inputs import demo_batch, tensor_forward
    from mmgfp.apis.checking.check import rel_diff
    from mmgfp.core import apply_spec, make_spec
    model = copy.deepcopy(orig)
    model.train()
    pruner = make_pruner(model, groups, variant, table)
    metric = VARIANTS[variant]['metric']
    target = args.latency_target if metric == 'latency' else args.target
    size = (args.prune_det_size if is_detector(name) else args.prune_cls_size,) * 2
    bs = args.prune_det_batch if is_detector(name) else args.prune_cls_batch
    t0 = time.perf_counter()
    steps = iters = 0
    while left(pruner, metric) > target:
        batch = demo_batch(model, bs, size, seed=seed + iters)
        fisher_iteration(model, pruner, batch)
        iters += 1
        if not pruner.step(args.channels_per_step,
                           until=lambda: left(pruner, metric) <= target):
            break
        steps += 1
    t_prune = time.perf_counter() - t0
    rem = pruner.remaining()
    pruner.recorder.stop()
    spec = make_spec(pruner.masker)
    kept = {k: pruner.kept(k) for k in groups.groups}
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
                     'fisher_iters': iters, 'rel_diff': rel_diff(out, ref), 'spec': spec,
                     'kept': kept, 'channels_pruned': sum(len(r.units) * groups.groups[
                         r.key].block for r in pruner.history)}


def from_spec(orig, groups, variant, spec, table=None):
    """The compact model a stored channel spec gives, with the same info as :func:`prune`
    (nothing pruned here: ``prune_s`` 0, ``rel_diff`` not measured)."""
    from mmgfp.core import apply_spec, masks_from_spec
    pruner = make_pruner(copy.deepcopy(orig), groups, variant, table)
    masks_from_spec(pruner.masker, spec)
    kept = {k: pruner.kept(k) for k in groups.groups}
    compact = apply_spec(copy.deepcopy(orig), spec).eval()
    return compact, {'remaining': pruner.remaining(), 'prune_s': 0.0, 'steps': 0,
                     'fisher_iters': 0, 'rel_diff': float('nan'), 'spec': spec, 'kept': kept,
                     'channels_pruned': sum(g.channels - kept[k]
                                            for k, g in groups.groups.items())}
