"""Group Fisher importance against a brute-force reference with per-sample gradients.

Convention (``mmgfp/core/fisher.py``): for unit ``i`` of a group, with one mask ``m_i`` shared by
every consumer and every call of it, ``F_i = sum_n (dL_n/dm_i)^2`` -- no 1/2 or 1/N factor --
summed over iterations until ``reset``. ``end_iter(grad_scale)`` divides the per-sample gradients
by ``grad_scale`` before squaring, so a mean loss is matched with ``grad_scale = 1/N``.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from core_toys import NETS, groups_of, inputs, make, outputs
from mmgfp.core import FisherPruner

N = 4


class FisherNet(nn.Module):
    """A residual stream consumed by three layers, and a head shared by two levels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.q = nn.Conv2d(6, 5, 1)
        self.r = nn.Conv2d(5, 6, 3, padding=1)
        self.l1 = nn.Conv2d(6, 4, 1)
        self.l2 = nn.Conv2d(6, 4, 1)
        self.head = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        g = self.stem(x)
        g = g + self.r(torch.relu(self.q(torch.relu(g))))
        g = torch.relu(g)
        p1 = self.l1(g)
        p2 = self.l2(F.avg_pool2d(g, 2))
        return [self.head(torch.tanh(p1)), self.head(torch.tanh(p2))]


class RoINet(nn.Module):
    """A layer that sees two 'RoIs' per image, ordered image by image (batch 2N)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, padding=1)
        self.b = nn.Conv2d(5, 4, 1)
        self.head = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        f = torch.relu(self.b(torch.relu(self.a(x))))
        rois = torch.stack([f[:, :, :4], f[:, :, 4:]], 1).flatten(0, 1)  # (2N, C, 4, 8)
        return self.head(rois)


def per_sample_loss(out, targets):
    """(N,) losses; non-linear in the outputs so that gradients differ between samples."""
    total = 0
    for o, t in zip(outputs(out), targets):
        n = t.shape[0]
        o = o.reshape(n, -1, *o.shape[1:]) if o.shape[0] != n else o
        total = total + ((o - t)**2).flatten(1).sum(1) + o.flatten(1).sum(1)
    return total


def make_targets(model, x, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        outs = outputs(model(x))
    n = x.shape[0]
    return [torch.randn(n, *(o.reshape(n, -1, *o.shape[1:]).shape[1:] if o.shape[0] != n else
                             o.shape[1:]), generator=gen) for o in outs]


def reference_fisher(model, gs, x, targets, keep=None):
    """sum_n (dL_n/dm)^2 with one mask variable per group, at every consumer, per sample.

    Must run with no ChannelMasker hooks attached (see ``detached``).
    """
    keep = keep or {}
    assert not any(m._forward_pre_hooks for m in model.modules())
    mods = dict(model.named_modules())
    prunable = {g.key: g for g in gs.prunable}
    ref = {k: torch.zeros(g.units, dtype=torch.float64) for k, g in prunable.items()}
    for i in range(x.shape[0]):
        masks = {k: keep.get(k, torch.ones(g.units, dtype=torch.bool)).to(x.dtype)
                 .requires_grad_() for k, g in prunable.items()}
        handles = []
        for name, lc in gs.consumers.items():
            parts = []
            for key, n in lc.segs:
                if key in masks:
                    parts.append(masks[key].repeat_interleave(prunable[key].block))
                else:
                    parts.append(torch.ones(n, dtype=x.dtype))

            def hook(mod, args, _lc=lc, _parts=parts):
                m = torch.cat(_parts).repeat_interleave(_lc.inner)
                shape = [1] * args[0].dim()
                shape[_lc.ch_dim] = -1
                return (args[0] * m.view(shape), ) + tuple(args[1:])

            handles.append(mods[name].register_forward_pre_hook(hook))
        try:
            loss = per_sample_loss(model(x[i:i + 1]), [t[i:i + 1] for t in targets]).sum()
            keys = list(masks)
            grads = torch.autograd.grad(loss, [masks[k] for k in keys], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        for k, gr in zip(keys, grads):
            if gr is not None:
                ref[k] += gr.detach().to(torch.float64)**2
    return ref


def detached(pruner, fn, *args, **kw):
    pruner.masker.detach()
    try:
        return fn(*args, **kw)
    finally:
        pruner.masker.attach()


def record(pruner, model, x, targets, reduce='sum', grad_scale=None):
    rec = pruner.recorder
    rec.begin_iter(x.shape[0])
    model.zero_grad()
    losses = per_sample_loss(model(x), targets)
    loss = losses.sum() if reduce == 'sum' else losses.mean()
    loss.backward()
    if grad_scale is None:
        grad_scale = 1.0 if reduce == 'sum' else 1.0 / x.shape[0]
    rec.end_iter(grad_scale)


def assert_close(fisher, ref):
    assert set(fisher) == set(ref)
    for k in ref:
        assert ref[k].abs().max() > 0, k  # the reference is not vacuous
        torch.testing.assert_close(fisher[k], ref[k], rtol=1e-4, atol=1e-6 * float(ref[k].max()))


def _setup(model, x):
    torch.manual_seed(0)
    gs = groups_of(model, x)
    pruner = FisherPruner(model, gs)
    pruner.recorder.start()
    return gs, pruner


@pytest.fixture
def fisher_net():
    torch.manual_seed(0)
    model = FisherNet().eval()
    x = inputs(N, 0)
    return model, x, make_targets(model, x)


def test_fisher_net_groups(fisher_net):
    model, x, _ = fisher_net
    gs = groups_of(model, x)
    g = gs.groups[gs.producers['stem']]
    assert set(g.producers) == {'stem', 'r'} and set(g.consumers) == {'q', 'l1', 'l2'}
    h = gs.groups[gs.producers['l1']]
    assert set(h.producers) == {'l1', 'l2'} and h.consumers == ['head']
    assert len(gs.prunable) == 3


@pytest.mark.parametrize('reduce', ['sum', 'mean'])
def test_matches_per_sample_reference(fisher_net, reduce):
    model, x, targets = fisher_net
    gs, pruner = _setup(model, x)
    record(pruner, model, x, targets, reduce)
    ref = detached(pruner, reference_fisher, model, gs, x, targets)
    assert_close(pruner.recorder.fisher, ref)
    rec = pruner.recorder
    key_g, key_h = gs.producers['stem'], gs.producers['l1']
    assert rec.hits[key_g] == 3  # q, l1, l2
    assert rec.hits[key_h] == 2  # the head, once per level
    assert rec.iters == 1


def test_not_the_squared_batch_gradient(fisher_net):
    """Summing over samples before squaring would give another number: guard against it."""
    model, x, targets = fisher_net
    gs, pruner = _setup(model, x)
    record(pruner, model, x, targets)
    key = gs.producers['stem']
    pruner.masker.detach()
    masks = torch.ones(6, requires_grad=True)
    hs = [dict(model.named_modules())[n].register_forward_pre_hook(
        lambda m, a: (a[0] * masks.view(1, -1, 1, 1), )) for n in ('q', 'l1', 'l2')]
    loss = per_sample_loss(model(x), targets).sum()
    (g, ) = torch.autograd.grad(loss, [masks])
    for h in hs:
        h.remove()
    assert not torch.allclose(pruner.recorder.fisher[key], g.double()**2, rtol=1e-2)


def test_grad_scale_is_divided_out(fisher_net):
    model, x, targets = fisher_net
    gs, pruner = _setup(model, x)
    # an AMP-style scaled loss: gradients are 8x, so grad_scale=8 must recover the same Fisher
    rec = pruner.recorder
    rec.begin_iter(N)
    (per_sample_loss(model(x), targets).sum() * 8.0).backward()
    rec.end_iter(8.0)
    assert_close(rec.fisher, detached(pruner, reference_fisher, model, gs, x, targets))


def test_accumulates_over_iterations_and_resets(fisher_net):
    model, x, targets = fisher_net
    x2 = inputs(N, 7)
    t2 = make_targets(model, x2, seed=7)
    gs, pruner = _setup(model, x)
    record(pruner, model, x, targets)
    record(pruner, model, x2, t2)
    r1 = detached(pruner, reference_fisher, model, gs, x, targets)
    r2 = detached(pruner, reference_fisher, model, gs, x2, t2)
    assert_close(pruner.recorder.fisher, {k: r1[k] + r2[k] for k in r1})
    rec = pruner.recorder
    assert rec.iters == 2 and rec.hits[gs.producers['l1']] == 4
    rec.reset()
    assert all(not bool(v.any()) for v in rec.fisher.values())
    assert all(n == 0 for n in rec.hits.values()) and rec.iters == 0
    record(pruner, model, x2, t2)
    assert_close(rec.fisher, r2)


def test_pruned_units_get_zero_and_others_match(fisher_net):
    model, x, targets = fisher_net
    gs, pruner = _setup(model, x)
    key = gs.producers['stem']
    pruner.masker.prune(key, 2)
    pruner.masker.prune(key, 4)
    record(pruner, model, x, targets)
    keep = {key: pruner.masker.keep[key].clone()}
    ref = detached(pruner, reference_fisher, model, gs, x, targets, keep)
    f = pruner.recorder.fisher[key]
    assert f[2] == 0 and f[4] == 0
    assert ref[key][2] > 0  # the reference mask gradient itself is not zero there
    ref[key][[2, 4]] = 0
    assert_close(pruner.recorder.fisher, ref)


def test_forward_outside_an_iteration_and_after_stop_records_nothing(fisher_net):
    model, x, targets = fisher_net
    gs, pruner = _setup(model, x)
    rec = pruner.recorder
    per_sample_loss(model(x), targets).sum().backward()  # no begin_iter: e.g. validation
    assert all(n == 0 for n in rec.hits.values())
    assert all(not bool(v.any()) for v in rec.fisher.values())
    record(pruner, model, x, targets)
    snap = {k: v.clone() for k, v in rec.fisher.items()}
    rec.stop()
    rec.begin_iter(N)
    per_sample_loss(model(x), targets).sum().backward()
    rec.end_iter()
    for k in snap:
        assert torch.equal(rec.fisher[k], snap[k])
    with pytest.raises(ValueError):
        rec.begin_iter(0)


def test_state_dict_round_trip(fisher_net):
    model, x, targets = fisher_net
    gs, pruner = _setup(model, x)
    record(pruner, model, x, targets)
    state = pruner.recorder.state_dict()
    other = FisherPruner(model, gs)
    other.recorder.load_state_dict(state)
    for k, v in pruner.recorder.fisher.items():
        assert torch.equal(other.recorder.fisher[k], v)
    assert other.recorder.hits == pruner.recorder.hits and other.recorder.iters == 1
    # the saved state is a copy
    pruner.recorder.reset()
    assert other.recorder.fisher[gs.producers['stem']].abs().sum() > 0
    with pytest.raises(ValueError):
        other.recorder.load_state_dict({'fisher': {}, 'hits': {}, 'iters': 0})


@pytest.mark.parametrize('name', sorted(NETS))
def test_toy_nets_match_reference(name):
    """Blocks (grouped convs, GroupNorm), flattened Linear inputs, concatenations, BN (eval)."""
    model, x = make(name), inputs(N, 3)
    targets = make_targets(model, x, seed=3)
    gs, pruner = _setup(model, x)
    record(pruner, model, x, targets)
    ref = detached(pruner, reference_fisher, model, gs, x, targets)
    assert_close(pruner.recorder.fisher, ref)


def test_rois_are_folded_onto_their_images():
    torch.manual_seed(0)
    model, x = RoINet().eval(), inputs(N, 1)
    targets = make_targets(model, x, seed=1)
    gs, pruner = _setup(model, x)
    assert gs.num_samples == N and len(gs.prunable) == 2
    record(pruner, model, x, targets)
    assert_close(pruner.recorder.fisher, detached(pruner, reference_fisher, model, gs, x, targets))


def test_double_precision_model():
    torch.manual_seed(0)
    model = FisherNet().double().eval()
    x = inputs(N, 2).double()
    targets = [t.double() for t in make_targets(model, x, seed=2)]
    gs, pruner = _setup(model, x)
    record(pruner, model, x, targets, 'mean')
    ref = detached(pruner, reference_fisher, model, gs, x, targets)
    for k in ref:
        torch.testing.assert_close(pruner.recorder.fisher[k], ref[k], rtol=1e-9, atol=0)


def test_non_finite_iteration_is_left_out(fisher_net):
    """An iteration with inf/NaN gradients (fp16 overflow under AMP) adds nothing; the
    statistics stay what the finite iterations gave, and the count is saved."""
    model, x, targets = fisher_net
    gs, pruner = _setup(model, x)
    rec = pruner.recorder
    record(pruner, model, x, targets)
    before = {k: v.clone() for k, v in rec.fisher.items()}
    hits = dict(rec.hits)
    model.zero_grad()
    rec.begin_iter(x.shape[0])
    loss = per_sample_loss(model(x), targets).sum() * float('inf')
    loss.backward()
    assert rec.end_iter() is False
    assert rec.skipped == 1 and rec.iters == 1 and rec.hits == hits
    for k in before:
        assert torch.equal(rec.fisher[k], before[k]), k
    # the next finite iteration counts again, and the skip count survives a checkpoint
    record(pruner, model, x, targets)
    assert rec.iters == 2
    for k in before:
        torch.testing.assert_close(rec.fisher[k], 2 * before[k])
    state = rec.state_dict()
    rec.reset()
    rec.skipped = 0
    rec.load_state_dict(state)
    assert rec.skipped == 1 and rec.iters == 2


def test_record_from_ranks_by_part_of_the_loss(fisher_net):
    """``record_from(task, params)``: the Fisher terms are those of the task loss alone (the
    reference), the hits those of one backward, while the backward of task + extra that
    follows leaves every parameter gradient as a plain backward of the sum gives it."""
    model, x, targets = fisher_net
    gs, pruner = _setup(model, x)
    rec = pruner.recorder

    def extra(outs):  # another term (a distillation loss, say) that must not rank channels
        return sum((o.tanh() * 3.0).pow(2).sum() for o in outputs(outs))

    model.zero_grad()
    rec.begin_iter(N)
    outs = model(x)
    (per_sample_loss(outs, targets).sum() + extra(outs)).backward()
    rec.end_iter()
    both = {k: v.clone() for k, v in rec.fisher.items()}
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    rec.reset()

    model.zero_grad()
    rec.begin_iter(N)
    outs = model(x)
    task = per_sample_loss(outs, targets).sum()
    rec.record_from(task * 8.0, list(model.parameters()))  # scaled as AMP would scale it
    assert not rec.recording
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated yet
    with pytest.raises(RuntimeError, match='already taken'):
        rec.record_from(task, list(model.parameters()))
    (task + extra(outs)).backward()
    assert rec.end_iter(8.0)
    ref = detached(pruner, reference_fisher, model, gs, x, targets)
    assert_close(rec.fisher, ref)
    assert rec.hits[gs.producers['stem']] == 3 and rec.hits[gs.producers['l1']] == 2
    assert any(not torch.allclose(both[k], ref[k], rtol=1e-3) for k in ref)  # extra matters
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain_grads[n])


def test_record_from_outside_an_iteration_is_refused(fisher_net):
    model, x, targets = fisher_net
    gs, pruner = _setup(model, x)
    with pytest.raises(RuntimeError, match='begin_iter'):
        pruner.recorder.record_from(torch.zeros((), requires_grad=True),
                                    list(model.parameters()))


class _Checkpointed(nn.Module):
    """a -> b inside a reentrant checkpoint -> c."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        h = checkpoint(lambda t: self.b(torch.relu(t)), self.a(x), use_reentrant=True)
        return self.c(torch.relu(h))


def test_record_from_names_reentrant_checkpointing():
    """torch refuses to run autograd.grad through a reentrant checkpoint: the error says
    what to change."""
    torch.manual_seed(0)
    model, x = _Checkpointed(), inputs(N, 0)
    gs, pruner = _setup(model, x)
    rec = pruner.recorder
    rec.begin_iter(N)
    loss = model(x).pow(2).sum()
    with pytest.raises(RuntimeError, match="with_cp.*fisher='all'"):
        rec.record_from(loss, list(model.parameters()))
