"""ChannelMasker API, masks changing while attached, training mode, vouched modules."""
import copy

import pytest
import torch
import torch.nn as nn

from core_toys import (NETS, groups_of, inputs, make, masked_and_compact, outputs, random_masks,
                       rel_diff)
from mmgfp.core import ChannelMasker, VouchedModule, apply_spec, make_spec


def _masker(name='chain'):
    model, x = make(name), inputs()
    return model, x, ChannelMasker(model, groups_of(model, x))


def test_keep_state_and_errors():
    model, x, m = _masker('depthwise')
    assert set(m.keep) == {'a.0', 'pw.0'}
    assert m.keep['pw.0'].tolist() == [True] * 3  # one entry per block of 4
    assert not m.pruned_anything
    m.prune('pw.0', 1)
    assert m.pruned_anything
    assert m.kept_units('pw.0').tolist() == [0, 2]
    assert m.kept_channels('pw.0').tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert m.num_kept('pw.0') == 8
    assert m.kept_channels('c').tolist() == [0, 1, 2, 3]  # unprunable: everything
    assert m.num_kept('c') == 4
    with pytest.raises(ValueError, match='already pruned'):
        m.prune('pw.0', 1)
    m.prune('pw.0', 0)
    with pytest.raises(ValueError, match='last channel'):
        m.prune('pw.0', 2)
    with pytest.raises(KeyError, match='not a prunable group'):
        m.set_keep('c', torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match='must have 8 units'):
        m.set_keep('a.0', torch.ones(7, dtype=torch.bool))
    with pytest.raises(ValueError, match='at least one kept'):
        m.set_keep('a.0', torch.zeros(8, dtype=torch.bool))
    state = m.state_dict()
    m.set_keep('a.0', [1, 0, 1, 0, 1, 0, 1, 0])
    assert m.num_kept('a.0') == 4
    m.load_state_dict(state)
    assert m.num_kept('a.0') == 8 and m.kept_units('pw.0').tolist() == [2]
    state['pw.0'][:] = True
    assert m.kept_units('pw.0').tolist() == [2]  # state_dict is a copy
    with pytest.raises(ValueError, match='do not match'):
        m.load_state_dict({'a.0': state['a.0']})
    with pytest.raises(ValueError, match='do not match'):
        m.load_state_dict({**state, 'zzz': torch.ones(1, dtype=torch.bool)})


def test_attach_is_idempotent_and_detach_removes_hooks():
    model, x, m = _masker()
    m.attach()
    m.attach()
    assert sum(len(mod._forward_pre_hooks) for mod in model.modules()) == 2  # b.0 and c
    m.detach()
    assert sum(len(mod._forward_pre_hooks) for mod in model.modules()) == 0


def test_masks_changed_while_attached_take_effect():
    model, x, m = _masker('residual')
    m.attach()
    with torch.no_grad():
        full = model(x)
    for seed in range(3):
        random_masks(m, seed)
        with torch.no_grad():
            y = model(x)
        m.detach()  # (a deepcopy of an attached model would copy the masking hooks too)
        compact = apply_spec(copy.deepcopy(model), make_spec(m))
        with torch.no_grad():
            assert rel_diff(compact(x), y) < 1e-5
            assert rel_diff(model(x), full) < 1e-6  # detached: the full model again
        m.attach()
    m.detach()


@pytest.mark.parametrize('name', sorted(NETS))
def test_train_mode_equivalence(name):
    """Batch statistics and running-stat updates of kept channels match the compact model."""
    model, x = make(name), inputs(4)
    gs = groups_of(model, x)
    m = ChannelMasker(model, gs)
    random_masks(m, 4)
    compact = apply_spec(copy.deepcopy(model), make_spec(m))
    model.train()
    compact.train()
    m.attach()
    ys = outputs(model(x))
    m.detach()
    yc = outputs(compact(x))
    for a, b in zip(yc, ys):
        assert rel_diff(a.detach(), b.detach()) < 1e-5
    # running statistics of the kept channels moved identically
    mods = dict(model.named_modules())
    for name_, mod in compact.named_modules():
        if isinstance(mod, nn.BatchNorm2d) and name_ in gs.passthrough:
            lc = gs.passthrough[name_]
            idx = torch.cat([m.kept_channels(k) + sum(n for _, n in lc.segs[:i])
                             for i, (k, _) in enumerate(lc.segs)])
            torch.testing.assert_close(mod.running_mean, mods[name_].running_mean[idx])
            torch.testing.assert_close(mod.running_var, mods[name_].running_var[idx])


def test_gradients_of_pruned_channels_are_zero():
    model, x, m = _masker('chain')
    keep = torch.ones(12, dtype=torch.bool)
    keep[[0, 7]] = False
    m.set_keep('b.0', keep)
    m.attach()
    model.train()
    model(x).square().mean().backward()
    m.detach()
    # c reads b.0's channels: its weights for the pruned inputs get no gradient
    g = model.c.weight.grad
    assert torch.all(g[:, [0, 7]] == 0) and torch.all(g[:, keep].abs().sum((0, 2, 3)) > 0)
    # b.0's own filters of pruned channels get none either (only c read them)
    assert torch.all(model.b[0].weight.grad[[0, 7]] == 0)


class _Twice(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


class ChannelwiseExt(nn.Module):
    """Stands for a C++-extension module that works channel by channel."""

    def forward(self, x):
        return _Twice.apply(torch.relu(x))


class VouchNet(nn.Module):

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.ext = ChannelwiseExt()
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(self.ext(self.a(x)))


def test_vouched_module(monkeypatch):
    torch.manual_seed(0)
    model, x = VouchNet().eval(), inputs()
    gs = groups_of(model, x)
    assert not gs.groups['a'].prunable
    assert any('_TwiceBackward' in r for r in gs.groups['a'].reasons)

    def vouch(tracer, module, args, output):
        tracer.set_layout(output, tracer.layout(args[0]))

    monkeypatch.setitem(VouchedModule.registry, ChannelwiseExt, vouch)
    gs = groups_of(model, x)
    assert gs.groups['a'].prunable and gs.groups['a'].consumers == ['c']
    m = ChannelMasker(model, gs)
    random_masks(m, 0)
    ref, compact, _ = masked_and_compact(model, x, m)
    with torch.no_grad():
        assert rel_diff(compact(x), ref[0]) < 1e-5
    # exact type only: a subclass may add layers the tracer must see
    sub = type('Sub', (ChannelwiseExt, ), {})
    model.ext = sub()
    assert not groups_of(model, x).groups['a'].prunable


def _run_masked(name, mask_on, seed=3):
    """Train-mode forward + backward with the recorder on, masks on the input or the weight."""
    from mmgfp.core import FisherRecorder
    model, x = make(name), inputs(3)
    m = ChannelMasker(model, groups_of(model, x), mask_on=mask_on)
    random_masks(m, seed)
    rec = FisherRecorder(m)
    rec.start()
    model.train()
    rec.begin_iter(x.shape[0])
    ys = outputs(model(x))
    sum((y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() for y in ys).backward()
    rec.end_iter()
    rec.stop()
    overridden = [n for n, mod in model.named_modules() if 'forward' in mod.__dict__]
    m.detach()
    assert not any('forward' in mod.__dict__ for mod in model.modules())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [y.detach() for y in ys], grads, rec.fisher, overridden, m


@pytest.mark.parametrize('name', sorted(NETS))
def test_mask_on_weight_equals_mask_on_input(name):
    """Outputs, every gradient, and the Fisher terms agree whichever side the mask is on."""
    y_in, g_in, f_in, over_in, _ = _run_masked(name, 'input')
    y_w, g_w, f_w, over_w, m = _run_masked(name, 'weight')
    assert over_in == []
    plain = [n for n in m._layers if type(dict(m.model.named_modules())[n])
             in (nn.Conv2d, nn.Linear)]
    assert set(over_w) <= set(plain) and (over_w or not plain)
    for a, b in zip(y_in, y_w):
        assert rel_diff(a, b) < 1e-5
    assert g_in.keys() == g_w.keys()
    for k in g_in:
        assert rel_diff(g_in[k], g_w[k]) < 1e-5, k
    for k in f_in:
        torch.testing.assert_close(f_w[k], f_in[k], rtol=1e-4, atol=1e-12 + 1e-6 * float(
            f_in[k].abs().max()))


def test_weight_mask_of_grouped_conv_matches_input_mask():
    conv = nn.Conv2d(8, 6, 3, padding=1, groups=2)
    x = torch.randn(2, 8, 5, 5)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1.])

    class _M(ChannelMasker):
        def __init__(self):  # just the mask arithmetic, no model
            self._wcache = {}

        def channel_mask(self, layer):
            return mask

    wm = _M().weight_mask('conv', conv)
    assert wm.shape == (6, 4, 1, 1)
    torch.testing.assert_close(conv._conv_forward(x, conv.weight * wm, conv.bias),
                               conv(x * mask.view(1, -1, 1, 1)))


def test_deepcopy_of_weight_masked_model_uses_its_own_weights():
    """An EMA-style deep copy of an attached model computes with the copy's weights."""
    model, x, m = _masker('chain')
    keep = torch.ones(12, dtype=torch.bool)
    keep[[2, 5]] = False
    m.set_keep('b.0', keep)
    m.mask_on = 'weight'
    m.attach()
    assert 'forward' in model.c.__dict__
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        y_twin = twin(x)
        y = model(x)
    m.detach()
    with torch.no_grad():
        twin_ref = copy.deepcopy(model)
        for p in twin_ref.parameters():
            p.mul_(0.5)
        compact = apply_spec(twin_ref, make_spec(m))
        assert rel_diff(compact(x), y_twin) < 1e-5
        assert rel_diff(y_twin, y) > 1e-2


def test_mask_on_is_checked():
    model, x = make('chain'), inputs()
    with pytest.raises(ValueError, match='mask_on must be one of'):
        ChannelMasker(model, groups_of(model, x), mask_on='both')


def test_a_forward_replaced_by_someone_else_keeps_its_input_mask():
    """A consumer whose forward another tool already replaced is not given the weight-masking
    forward, so its mask must stay on the input (else the replaced forward would ignore it)."""
    model, x, m = _masker('chain')
    keep = torch.ones(12, dtype=torch.bool)
    keep[[2, 5]] = False
    m.set_keep('b.0', keep)
    m.attach()
    with torch.no_grad():
        ref = model(x)  # the plain consumer, masked
    m.detach()
    model.c.forward = (lambda self, inp: type(self).forward(self, inp)).__get__(model.c)
    m.mask_on = 'weight'
    m.attach()
    assert model.c.__dict__['forward'].__func__ is not type(model.c).forward
    with torch.no_grad():
        assert rel_diff(model(x), ref) < 1e-6
    m.detach()
    assert 'forward' in model.c.__dict__  # the other tool's forward is left in place
