"""Masking channels at their consumers must equal slicing them away (``apply_spec``)."""
import copy

import pytest
import torch
import torch.nn as nn

from core_toys import (NETS, groups_of, inputs, make, masked_and_compact, outputs, randomize,
                       random_masks, rel_diff)
from mmgfp.core import ChannelMasker, apply_spec, build_groups, make_spec

TOL = 1e-5


def _check(model, x, masker, spec_min_layers=1):
    ref, compact, spec = masked_and_compact(model, x, masker)
    assert len(spec['layers']) >= spec_min_layers
    with torch.no_grad():
        out = outputs(compact(x))
    assert len(out) == len(ref)
    for a, b in zip(out, ref):
        assert a.shape == b.shape
        assert rel_diff(a, b) < TOL, rel_diff(a, b)
    return compact, spec


def _check_shapes(model, compact, masker):
    """Every layer of a pruned group is smaller by exactly the pruned channels."""
    gs = masker.groups
    mods, cmods = dict(model.named_modules()), dict(compact.named_modules())
    n_checked = 0
    for name, key in gs.producers.items():
        if key not in masker.keep or bool(masker.keep[key].all()):
            continue
        kept = masker.num_kept(key)
        assert kept < gs.groups[key].channels
        w, cw = mods[name].weight, cmods[name].weight
        dim = 0 if not isinstance(mods[name], nn.modules.conv._ConvTransposeNd) else 1
        assert cw.shape[dim] == kept and w.shape[dim] == gs.groups[key].channels
        if mods[name].bias is not None:
            assert cmods[name].bias.shape == (kept, )
        n_checked += 1
    for name, lc in gs.consumers.items():
        if name in gs.passthrough:
            continue
        width = sum(masker.num_kept(k) for k, _ in lc.segs) * lc.inner
        m = cmods[name]
        cin = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            assert cin == width == m.weight.shape[0]
        else:
            assert cin == width and m.weight.shape[1] == width // gs.layers[name].groups
    for name, lc in gs.passthrough.items():
        width = sum(masker.num_kept(k) for k, _ in lc.segs)
        m = cmods[name]
        if isinstance(m, nn.modules.batchnorm._NormBase):
            assert m.num_features == width and m.running_mean.shape == (width, )
            assert m.weight.shape == (width, )
        elif isinstance(m, nn.GroupNorm):
            assert m.num_channels == width
            assert m.num_groups == width // (mods[name].num_channels // mods[name].num_groups)
        elif isinstance(m, nn.Conv2d):
            assert m.in_channels == m.out_channels == width == m.weight.shape[0]
            assert m.groups == width // (mods[name].in_channels // mods[name].groups)
    return n_checked


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('name', sorted(NETS))
def test_masked_equals_compact(name, seed):
    model, x = make(name, seed), inputs(3, seed)
    gs = groups_of(model, x)
    masker = ChannelMasker(model, gs)
    random_masks(masker, seed)
    pruned = [k for k, v in masker.keep.items() if not bool(v.all())]
    if name != 'groupnorm':
        assert len(pruned) == len(gs.prunable)
    assert pruned
    full_params = sum(p.numel() for p in model.parameters())
    compact, spec = _check(model, x, masker)
    assert _check_shapes(model, compact, masker) >= 1
    assert sum(p.numel() for p in compact.parameters()) < full_params
    # the original model is untouched
    assert sum(p.numel() for p in model.parameters()) == full_params


@pytest.mark.parametrize('name', sorted(NETS))
def test_unmasked_spec_is_identity(name):
    model, x = make(name), inputs()
    masker = ChannelMasker(model, groups_of(model, x))
    ref, compact, spec = masked_and_compact(model, x, masker)
    assert spec['layers'] == {}
    with torch.no_grad():
        for a, b in zip(outputs(compact(x)), ref):
            assert torch.equal(a, b)


def test_masked_channel_really_removed():
    """The masked model must not depend on a pruned channel's producer at all."""
    model, x = make('residual'), inputs()
    gs = groups_of(model, x)
    masker = ChannelMasker(model, gs)
    key = gs.producers['stem.0']
    keep = torch.ones(8, dtype=torch.bool)
    keep[[1, 5]] = False
    masker.set_keep(key, keep)
    masker.attach()
    with torch.no_grad():
        before = model(x)
        for p in ('stem.0', 'b2.0', 'short'):  # scramble the pruned output channels
            getattr(dict(model.named_modules())[p], 'weight')[[1, 5]] *= -7.0
        model.scale[:, [1, 5]] = 100.0
        after = model(x)
    masker.detach()
    assert rel_diff(after, before) < TOL
    with torch.no_grad():
        assert rel_diff(model(x), before) > 1e-3  # unmasked, the scrambled channels matter


def test_masked_equals_compact_with_prunable_groups_next_to_blocked_ones():
    from test_core_grouping import _Mix
    for how in ('reshape', 'shuffle_view', 'fft', 'custom'):
        torch.manual_seed(0)
        model, x = _Mix(how).eval(), inputs()
        gs = groups_of(model, x)
        masker = ChannelMasker(model, gs)
        assert list(masker.keep) == [gs.producers['b']]
        random_masks(masker, 1)
        _check(model, x, masker)


def test_torchvision_models_masked_equals_compact():
    tv = pytest.importorskip('torchvision')
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for seed, ctor in enumerate((tv.models.resnet18, tv.models.mobilenet_v2)):
        torch.manual_seed(seed)
        model = randomize(ctor(num_classes=10), seed)
        gs = build_groups(model, lambda m: m(x))
        masker = ChannelMasker(model, gs)
        random_masks(masker, seed, max_frac=0.5)
        compact, _ = _check(model, x, masker)
        assert _check_shapes(model, compact, masker) >= 5
        # and the compact model traces to the same structure with the kept widths
        gs2 = build_groups(compact, lambda m: m(x))
        assert len(gs2.prunable) == len(gs.prunable)


def test_apply_spec_twice_fails_cleanly_on_the_compact_model():
    from mmgfp.core import SpecError
    model, x = make('chain'), inputs()
    masker = ChannelMasker(model, groups_of(model, x))
    random_masks(masker, 0)
    spec = make_spec(masker)
    compact = apply_spec(copy.deepcopy(model), spec)
    shapes = {k: v.shape for k, v in compact.state_dict().items()}
    with pytest.raises(SpecError, match='another config'):
        apply_spec(compact, spec)
    assert {k: v.shape for k, v in compact.state_dict().items()} == shapes
