"""Channel grouping on toy nets: which channels are coupled, which cannot be pruned and why."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from core_toys import fwd, groups_of, inputs, make, randomize
from mmgfp.core import build_groups


def group_of(gs, producer):
    return gs.groups[gs.producers[producer]]


def segs(gs, layer):
    return [(k, n) for k, n in gs.consumers[layer].segs]


# -- plain chain ------------------------------------------------------------------------------
def test_chain_groups():
    gs = groups_of(make('chain'), inputs())
    assert set(gs.groups) == {'a.0', 'b.0', 'c'}
    a, b, c = gs.groups['a.0'], gs.groups['b.0'], gs.groups['c']
    assert (a.channels, a.block, a.units) == (8, 1, 8)
    assert a.producers == ['a.0'] and a.consumers == ['b.0'] and a.passthrough == ['a.1']
    assert (b.channels, b.producers, b.consumers, b.passthrough) == (12, ['b.0'], ['c'], ['b.1'])
    assert a.prunable and b.prunable and a.reasons == [] and b.reasons == []
    assert not c.prunable
    assert any('network output' in r for r in c.reasons)
    assert [g.key for g in gs.prunable] == ['a.0', 'b.0']
    assert gs.summary() == '3 channel groups, 2 prunable'
    assert gs.producers == {'a.0': 'a.0', 'b.0': 'b.0', 'c': 'c'}
    assert segs(gs, 'b.0') == [('a.0', 8)] and segs(gs, 'c') == [('b.0', 12)]
    assert 'a.0' not in gs.consumers  # reads the network input
    assert gs.layer_types['a.1'] == 'BatchNorm2d' and gs.layer_types['a.0'] == 'Conv2d'
    assert gs.num_samples == 2
    # one call per conv, spatial size per sample (b is strided)
    assert [(c.module, c.out_elems, c.kernel) for c in gs.calls] == [
        ('a.0', 64, 9), ('b.0', 16, 9), ('c', 16, 1)]


def test_keys_are_deterministic_and_named_after_a_producer():
    x = inputs()
    for name in ('residual', 'shared_head', 'concat'):
        g1 = groups_of(make(name), x)
        g2 = groups_of(make(name, seed=3), x)
        assert list(g1.groups) == list(g2.groups)
        for g in g1.groups.values():
            if g.producers:
                assert g.key in g.producers


def test_num_samples_override_scales_costs():
    model, x = make('chain'), inputs(4)
    gs = build_groups(model, fwd(x))
    assert gs.num_samples == 4 and gs.calls[0].out_elems == 64
    gs2 = build_groups(model, fwd(x), num_samples=2)  # e.g. two images, two crops each
    assert gs2.num_samples == 2 and gs2.calls[0].out_elems == 128


# -- residual ------------------------------------------------------------------------------
def test_residual_couples_both_branches():
    gs = groups_of(make('residual'), inputs())
    g = group_of(gs, 'stem.0')
    assert group_of(gs, 'b2.0') is g and group_of(gs, 'short') is g
    assert set(g.producers) == {'stem.0', 'b2.0', 'short'}
    assert set(g.consumers) == {'b1.0', 'short', 'head'}
    assert set(g.passthrough) == {'stem.1', 'b2.1'}
    assert g.params == ['scale']  # the layer-scale parameter is sliced with the group
    assert g.channels == 8 and g.prunable
    inner = group_of(gs, 'b1.0')
    assert inner is not g and inner.prunable and inner.consumers == ['b2.0']
    assert not group_of(gs, 'head').prunable
    assert len(gs.groups) == 3


def test_inplace_residual_add():
    class Block(nn.Module):

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            x = self.stem(x)
            y = self.bn(self.conv(x))
            y += x
            return self.out(F.relu(y, inplace=True))

    gs = groups_of(Block().eval(), inputs())
    g = group_of(gs, 'stem')
    assert group_of(gs, 'conv') is g and set(g.consumers) == {'conv', 'out'} and g.prunable


# -- concatenation ----------------------------------------------------------------------------
def test_concat_maps_segments_to_groups():
    gs = groups_of(make('concat'), inputs())
    a, b = group_of(gs, 'a.0'), group_of(gs, 'b.0')
    assert a is not b and a.prunable and b.prunable
    assert (a.channels, b.channels) == (6, 5)
    assert segs(gs, 'c.0') == [('a.0', 6), ('b.0', 5)]
    assert gs.consumers['c.0'].size == 11
    assert a.consumers == ['c.0'] and b.consumers == ['c.0']
    assert group_of(gs, 'c.0').consumers == ['d']


def test_concat_with_network_input():
    gs = groups_of(make('densecat'), inputs())
    (k0, n0), (k1, n1) = segs(gs, 'b')
    assert (n0, n1) == (3, 6) and k1 == 'a.0'
    inp = gs.groups[k0]
    assert not inp.prunable and inp.producers == []
    assert any('no layer produces' in r for r in inp.reasons)
    assert gs.groups['a.0'].prunable


def test_unseen_op_after_concat_blocks_both_segments():
    class Double(torch.autograd.Function):

        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 5, 1)
            self.c = nn.Conv2d(9, 2, 1)

        def forward(self, x):
            return self.c(Double.apply(torch.cat([self.a(x), self.b(x)], 1)))

    gs = groups_of(Net(), inputs())
    for p in ('a', 'b'):
        g = group_of(gs, p)
        assert not g.prunable
        assert any('DoubleBackward' in r for r in g.reasons), g.reasons


# -- depth-wise and grouped convs -------------------------------------------------------------
def test_depthwise_and_grouped_conv():
    gs = groups_of(make('depthwise'), inputs())
    a = group_of(gs, 'a.0')
    assert 'dw.0' not in gs.producers and 'dw.0' not in gs.consumers
    assert set(a.passthrough) == {'a.1', 'dw.0', 'dw.1'}
    assert a.consumers == ['pw.0'] and a.block == 1 and a.prunable
    assert [k for k, _ in gs.passthrough['dw.0'].segs] == ['a.0']
    p = group_of(gs, 'pw.0')
    assert set(p.passthrough) == {'pw.1', 'g.0', 'g.1'}
    assert p.consumers == ['c']
    assert (p.channels, p.block, p.units) == (12, 4, 3) and p.prunable
    assert gs.layers['dw.0'].groups == 8 and gs.layers['g.0'].groups == 3
    assert len(gs.groups) == 3


def test_grouped_conv_with_different_widths_is_unprunable():
    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.g = nn.Conv2d(8, 16, 3, padding=1, groups=2)
            self.c = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            return self.c(self.g(self.a(x)))

    gs = groups_of(Net(), inputs())
    for p in ('a', 'g'):
        g = group_of(gs, p)
        assert not g.prunable
        assert any('grouped conv whose input and output widths differ' in r for r in g.reasons)


def test_depthwise_after_concat_constrains_both_segments():
    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 6, 1)
            self.g = nn.Conv2d(10, 10, 3, padding=1, groups=5)  # blocks of 2
            self.bad = nn.Conv2d(3, 3, 1)
            self.h = nn.Conv2d(10, 10, 1, groups=2)  # blocks of 5 straddle 3 + 6 + 1
            self.c = nn.Conv2d(10, 2, 1)
            self.d = nn.Conv2d(10, 2, 1)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], 1)
            z = torch.cat([self.bad(x), self.b(x) + 0, x[:, :1]], 1)
            return self.c(self.g(y)), self.d(self.h(z))

    gs = groups_of(Net(), inputs())
    a, b = group_of(gs, 'a'), group_of(gs, 'b')
    assert a.block == 2 and a.units == 2
    # b also feeds h, whose blocks of 5 straddle the concatenated inputs
    assert not b.prunable
    assert any('straddle' in r for r in b.reasons), b.reasons
    assert a.prunable


# -- a layer used twice ---------------------------------------------------------------------
def test_shared_head_couples_its_inputs():
    gs = groups_of(make('shared_head'), inputs())
    g = group_of(gs, 'l1')
    assert group_of(gs, 'l2') is g
    assert set(g.producers) == {'l1', 'l2'} and g.consumers == ['head'] and g.prunable
    assert list(gs.consumers).count('head') == 1
    assert segs(gs, 'head') == [(g.key, 6)]
    assert [c.out_elems for c in gs.calls if c.module == 'head'] == [64, 16]
    assert set(group_of(gs, 'a.0').consumers) == {'down', 'l1'}
    assert group_of(gs, 'down').consumers == ['l2']
    assert not group_of(gs, 'head').prunable


def test_shared_layer_on_differently_laid_out_inputs_is_unprunable():
    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 2, 1)
            self.c = nn.Conv2d(3, 6, 1)
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.head(torch.cat([self.a(x), self.b(x)], 1)) + self.head(self.c(x))

    gs = groups_of(Net(), inputs())
    for p in ('a', 'b', 'c'):
        g = group_of(gs, p)
        assert not g.prunable
        assert any('shared layer head' in r for r in g.reasons), g.reasons


# -- linear heads ---------------------------------------------------------------------------
def test_linear_after_pooling_and_flatten():
    gs = groups_of(make('linear_head'), inputs())
    a, b = group_of(gs, 'a.0'), group_of(gs, 'b.0')
    assert set(a.consumers) == {'b.0', 'fc1'} and a.prunable
    assert b.consumers == ['fc2'] and b.prunable
    lc = gs.consumers['fc2']
    assert lc.inner == 16 and lc.segs == (('b.0', 6), ) and lc.size == 96 and lc.ch_dim == 1
    assert gs.consumers['fc1'].inner == 1
    out = group_of(gs, 'fc1')
    assert group_of(gs, 'fc2') is out and not out.prunable
    assert gs.layers['fc2'].kind == 'linear' and gs.layers['fc2'].in_channels == 96


# -- norms ------------------------------------------------------------------------------------
def test_group_norm_block_is_channels_per_group():
    gs = groups_of(make('groupnorm'), inputs())
    a, b = group_of(gs, 'a'), group_of(gs, 'b')
    assert (a.block, a.units, a.passthrough) == (2, 4, ['gn1'])
    assert (b.block, b.units, b.passthrough) == (6, 1, ['gn2'])  # one group: nothing to remove


def test_group_norm_straddling_concat_is_unprunable():
    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 1)
            self.b = nn.Conv2d(3, 5, 1)
            self.gn = nn.GroupNorm(4, 8)
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(self.gn(torch.cat([self.a(x), self.b(x)], 1)))

    gs = groups_of(Net(), inputs())
    for p in ('a', 'b'):
        g = group_of(gs, p)
        assert not g.prunable and any('straddle' in r for r in g.reasons), g.reasons


def test_layer_norm_over_channels_is_unprunable():
    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.ln = nn.LayerNorm([8, 8, 8])
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(self.ln(self.a(x)))

    gs = groups_of(Net(), inputs())
    g = group_of(gs, 'a')
    assert not g.prunable and any('normalises across channels' in r for r in g.reasons)


def test_softmax_over_channels_is_unprunable():
    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(3, 8, 1)
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(self.a(x).softmax(1) + self.b(x).softmax(-1))

    gs = groups_of(Net(), inputs())
    a, b = group_of(gs, 'a'), group_of(gs, 'b')
    assert not a.prunable and any("'softmax' mixes or reorders channels" in r for r in a.reasons)
    # softmax over a spatial axis is fine, but b is then added to untraced per-channel values
    assert not b.prunable
    assert any('per-channel tensor that is not a module parameter' in r for r in b.reasons)


# -- what the tracer must refuse ----------------------------------------------------------------
class _Mix(nn.Module):

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.c = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        if self.how == 'reshape':
            y = y.reshape(n, 2, c // 2 * h, w).reshape(n, c, h, w)
        elif self.how == 'view_channels_last':
            y = y.view(n, c * h * w).view(n, h, w, c).permute(0, 3, 1, 2)
        elif self.how == 'shuffle_view':
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        elif self.how == 'shuffle_fn':
            y = F.channel_shuffle(y, 2)
        elif self.how == 'shuffle_module':
            y = nn.ChannelShuffle(2)(y)
        elif self.how == 'fft':
            y = torch.fft.fft2(y).real
        elif self.how == 'custom':
            y = _Scale.apply(y)
        elif self.how == 'gather':
            y = y[:, torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])]
        elif self.how == 'strided':
            y = torch.cat([y[:, ::2], y[:, 1::2]], 1)
        return self.c(self.b(y))


class _Scale(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x):
        return x * 3

    @staticmethod
    def backward(ctx, g):
        return g * 3


def _blocked(how):
    gs = groups_of(_Mix(how), inputs())
    a = gs.groups[gs.producers['a']]
    assert not a.prunable
    assert gs.groups[gs.producers['b']].prunable  # after the op, channels are traced again
    return ' | '.join(a.reasons)


def test_reshape_mixing_channels_is_unprunable():
    assert 'mixes the channel axis' in _blocked('reshape')
    assert "'reshape' from (2, 8, 8, 8)" in _blocked('reshape')
    assert 'mixes the channel axis' in _blocked('view_channels_last')


def test_channel_shuffle_is_unprunable():
    assert "'view' from (2, 8, 8, 8) to (2, 2, 4, 8, 8)" in _blocked('shuffle_view')
    assert 'channel_shuffle' in _blocked('shuffle_fn')
    assert 'channel_shuffle' in _blocked('shuffle_module')


def test_unknown_op_is_named():
    assert "'fft_fft2', an op the tracer does not know" in _blocked('fft')


def test_custom_autograd_function_is_named():
    r = _blocked('custom')
    assert 'cannot see' in r and '_ScaleBackward' in r


def test_index_and_strided_slicing_are_unprunable():
    assert 'advanced indexing' in _blocked('gather')
    assert 'strided slicing' in _blocked('strided')


def test_channel_slicing_along_segments_is_followed():
    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 5, 1)
            self.c = nn.Conv2d(5, 2, 1)
            self.d = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], 1)
            p, q = y.split([4, 5], 1)
            return self.c(y[:, 4:]) + self.d(p) + self.c(q)

    gs = groups_of(Net(), inputs())
    assert segs(gs, 'c') == [('b', 5)] and segs(gs, 'd') == [('a', 4)]
    assert group_of(gs, 'a').prunable and group_of(gs, 'b').prunable


def test_slice_cutting_through_a_layer_is_unprunable():
    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.c = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.c(self.a(x)[:, :4])

    gs = groups_of(Net(), inputs())
    g = group_of(gs, 'a')
    assert not g.prunable and any('cuts through' in r for r in g.reasons)


def test_functional_conv_with_foreign_weight_is_unprunable():
    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.w = nn.Parameter(torch.randn(2, 8, 1, 1))

        def forward(self, x):
            return F.conv2d(self.a(x), self.w)

    gs = groups_of(Net(), inputs())
    g = group_of(gs, 'a')
    assert not g.prunable and any('not the parameter of a Conv module' in r for r in g.reasons)


def test_skip_patterns():
    model, x = make('chain'), inputs()
    # a.0's group is read by b.0, so 'b.*' matches a member of both groups
    gs = build_groups(model, fwd(x), skip=['b.*'])
    assert not gs.prunable
    assert gs.groups['a.0'].reasons == ['skipped by a user pattern']
    gs = build_groups(model, fwd(x), skip=['b.1'])  # the norm is a member of b.0's group only
    assert gs.groups['a.0'].prunable
    assert not gs.groups['b.0'].prunable
    assert 'skipped by a user pattern' in gs.groups['b.0'].reasons


# -- tracing leaves the model as it was ------------------------------------------------------
def test_trace_restores_state_and_rng():
    model = make('residual').train()
    model.drop = nn.Dropout(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = inputs(4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    gs = build_groups(model, lambda m: m.drop(m(x)))
    assert torch.equal(torch.rand(3), expected)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert model.training and len(gs.prunable) == 2
    # no hooks left behind
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_torchvision_resnet_and_mobilenet_groups():
    tv = __import__('pytest').importorskip('torchvision')
    x = torch.randn(1, 3, 32, 32)
    resnet = randomize(tv.models.resnet18(num_classes=10))
    gs = build_groups(resnet, fwd(x))
    stream = group_of(gs, 'conv1')
    # the stem and every block's conv2 of stage 1 write into one stream
    assert {'conv1', 'layer1.0.conv2', 'layer1.1.conv2'} <= set(stream.producers)
    assert group_of(gs, 'layer2.0.downsample.0') is group_of(gs, 'layer2.1.conv2')
    assert group_of(gs, 'layer1.0.conv1').producers == ['layer1.0.conv1']
    assert not group_of(gs, 'fc').prunable
    assert len(gs.prunable) == 12  # 8 inner block groups + 4 stage streams
    mb = randomize(tv.models.mobilenet_v2(num_classes=10))
    gs = build_groups(mb, fwd(x))
    g = group_of(gs, 'features.1.conv.1')  # the first block's projection (no residual)
    assert g.prunable
    dw = group_of(gs, 'features.2.conv.0.0')  # expansion conv, read by a depth-wise conv
    assert 'features.2.conv.1.0' in dw.passthrough and dw.prunable


def test_channels_last_tokens_and_linear():
    gs = groups_of(make('tokens'), inputs())
    a, f = group_of(gs, 'a.0'), group_of(gs, 'fc1')
    assert a.consumers == ['fc1'] and a.prunable
    assert gs.consumers['fc1'].ch_dim == 2 and gs.consumers['fc1'].inner == 1
    assert f.consumers == ['fc2'] and f.prunable and gs.consumers['fc2'].ch_dim == 2
    assert not group_of(gs, 'fc2').prunable
    assert [c.out_elems for c in gs.calls] == [64, 64, 64]


def test_conv_transpose_groups():
    gs = groups_of(make('deconv'), inputs())
    a, up = group_of(gs, 'a.0'), group_of(gs, 'up.0')
    assert a.consumers == ['up.0'] and up.passthrough == ['up.1'] and up.consumers == ['c']
    assert a.prunable and up.prunable and gs.layers['up.0'].kind == 'conv_transpose'


def test_fpn_groups():
    gs = groups_of(make('fpn'), inputs())
    lat = group_of(gs, 'lat2')
    assert group_of(gs, 'lat3') is lat  # top-down add through the upsampling
    assert set(lat.consumers) == {'out2', 'out3'} and lat.prunable
    outs = group_of(gs, 'out2')
    assert group_of(gs, 'out3') is outs and outs.consumers == ['head.0']  # shared head
    head = group_of(gs, 'head.0')
    assert head.block == 1 and head.passthrough == ['head.1'] and head.units == 5
    assert set(group_of(gs, 'c2.0').consumers) == {'c3.0', 'lat2'}


def test_shared_parameter_norm_and_prelu_couple_their_inputs():
    gs = groups_of(make('shared_params'), inputs())
    for p, q, params, norms in (('a', 'b', ['scale'], []), ('e', 'f', ['act.weight'], []),
                                ('g', 'h', [], ['bn'])):
        g = group_of(gs, p)
        assert group_of(gs, q) is g and g.prunable
        assert g.params == params and g.passthrough == norms
        assert set(g.consumers) == {'c' + p, 'c' + q}
    assert len(gs.prunable) == 3


def test_parameter_indexed_along_two_axes_is_unprunable():
    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(3, 8, 1)
            self.w = nn.Parameter(torch.rand(8, 8))
            self.c = nn.Conv2d(8, 2, 1)
            self.d = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = (self.a(x).mean(3) * self.w).unsqueeze(-1)  # channels meet w's dim 0
            z = self.b(x).mean(3).transpose(1, 2) * self.w  # channels meet w's dim 1
            return self.c(y) + self.d(z.transpose(1, 2).unsqueeze(-1))

    gs = groups_of(Net(), inputs())
    for p in ('a', 'b'):
        g = group_of(gs, p)
        assert not g.prunable
        assert 'parameter w is indexed by channels along different axes' in g.reasons
