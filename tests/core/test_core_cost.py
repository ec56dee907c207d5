"""FLOPs (multiply-accumulates), activations, parameters and per-unit costs."""
import copy

import pytest
import torch
import torch.nn as nn

from core_toys import NETS, groups_of, inputs, make, random_masks
from mmgfp.core import ChannelMasker, apply_spec, build_groups, count, count_params, make_spec
from mmgfp.core import unit_costs


class CostNet(nn.Module):
    """conv 3->8 (8x8) -> depth-wise 8 (stride 2, 4x4) -> point-wise 8->6 -> Linear(96, 5)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(96, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.a(x)))))).flatten(1))


def _cost_net():
    torch.manual_seed(0)
    model, x = CostNet().eval(), inputs(2)
    return model, x, groups_of(model, x)


def _kept(gs, **kept):
    return lambda k: kept.get(k, gs.groups[k].channels)


def test_cost_net_groups():
    _, _, gs = _cost_net()
    assert [g.key for g in gs.prunable] == ['a', 'pw']
    assert gs.groups['a'].passthrough == ['dw'] and gs.groups['a'].consumers == ['pw']
    assert gs.consumers['fc'].inner == 16


def test_count_by_hand():
    _, _, gs = _cost_net()
    full = count(gs, _kept(gs))
    #            a: 8x8 x 8 x 3 x 9     dw: 4x4 x 8 x 9   pw: 16 x 6 x 8   fc: 5 x 96
    assert full['flops'] == 64 * 8 * 27 + 16 * 8 * 9 + 16 * 6 * 8 + 5 * 96 == 16224
    assert full['acts'] == 64 * 8 + 16 * 8 + 16 * 6 + 5 == 741
    part = count(gs, _kept(gs, a=5, pw=4))
    assert part['flops'] == 64 * 5 * 27 + 16 * 5 * 9 + 16 * 4 * 5 + 5 * 64 == 10000
    assert part['acts'] == 64 * 5 + 16 * 5 + 16 * 4 + 5


def test_count_is_per_sample():
    model = CostNet().eval()
    g1 = groups_of(model, inputs(1))
    g4 = groups_of(model, inputs(4))
    assert count(g1, _kept(g1)) == count(g4, _kept(g4))


def test_count_chain_with_stride_by_hand():
    gs = groups_of(make('chain'), inputs())
    c = count(gs, _kept(gs))
    assert c['flops'] == 64 * 8 * 3 * 9 + 16 * 12 * 8 * 9 + 16 * 5 * 12
    assert c['acts'] == 64 * 8 + 16 * 12 + 16 * 5
    c = count(gs, _kept(gs, **{'a.0': 2, 'b.0': 3}))
    assert c['flops'] == 64 * 2 * 3 * 9 + 16 * 3 * 2 * 9 + 16 * 5 * 3


def test_unit_costs_by_hand():
    _, _, gs = _cost_net()
    acts = unit_costs(gs, _kept(gs), 'acts')
    assert acts == {'a': 64 + 16, 'pw': 16}
    flops = unit_costs(gs, _kept(gs), 'flops')
    # a: its own MACs (64 x 3 x 9), the depth-wise filter (16 x 9), pw's input (16 x 6)
    assert flops['a'] == 64 * 27 + 16 * 9 + 16 * 6 == 1968
    # pw: its own MACs (16 x 8) and fc's 16 inputs per channel (5 x 16)
    assert flops['pw'] == 16 * 8 + 5 * 16 == 208
    # with fewer channels kept elsewhere, the cross terms shrink
    flops = unit_costs(gs, _kept(gs, a=5, pw=4), 'flops')
    assert flops == {'a': 64 * 27 + 16 * 9 + 16 * 4, 'pw': 16 * 5 + 5 * 16}
    assert unit_costs(gs, _kept(gs, a=5, pw=4), 'acts') == acts
    with pytest.raises(ValueError, match='delta'):
        unit_costs(gs, _kept(gs), 'params')


def test_unit_costs_with_blocks_and_shared_head():
    gs = groups_of(make('depthwise'), inputs())
    acts = unit_costs(gs, _kept(gs), 'acts')
    # pw group: blocks of 4 channels through pw (4x4) and the grouped conv g (4x4)
    assert acts['pw.0'] == 2 * 16 * 4
    flops = unit_costs(gs, _kept(gs), 'flops')
    # pw: 16 x 4 x 8 (own), g: 16 x 4 x 4 x 9 (grouped, 4 inputs per group), c: 16 x 4 x 4
    assert flops['pw.0'] == 16 * 4 * 8 + 16 * 4 * 4 * 9 + 16 * 4 * 4
    gs = groups_of(make('shared_head'), inputs())
    key = gs.producers['l1']
    # l1 at 8x8 and l2 at 4x4; the head reads this group at both levels
    assert unit_costs(gs, _kept(gs), 'acts')[key] == 64 + 16
    assert unit_costs(gs, _kept(gs), 'flops')[key] == 64 * 8 + 16 * 8 + (64 + 16) * 4 * 9


def _self_loops(gs, key):
    """MACs of layers that both read and write ``key``: counted once per side by unit_costs."""
    return sum(c.out_elems * c.kernel for c in gs.calls
               if gs.producers.get(c.module) == key and c.module in gs.consumers and
               any(k == key for k, _ in gs.consumers[c.module].segs))


@pytest.mark.parametrize('name', sorted(NETS))
def test_unit_costs_are_marginal_counts(name):
    """Removing a unit saves its unit cost (up to the weights linking a layer to itself)."""
    gs = groups_of(make(name), inputs())
    masker = ChannelMasker(make(name), gs)
    random_masks(masker, 1, max_frac=0.4)
    kept = masker.num_kept
    now = count(gs, kept)
    for delta in ('acts', 'flops'):
        costs = unit_costs(gs, kept, delta)
        assert set(costs) == {g.key for g in gs.prunable}
        for key, cost in costs.items():
            block = gs.groups[key].block
            if kept(key) == block:
                continue  # a group never loses its last unit
            fewer = count(gs, lambda k: kept(k) - (block if k == key else 0))
            saved = now[delta] - fewer[delta]
            if delta == 'flops':
                saved += _self_loops(gs, key) * block * block
            assert cost == pytest.approx(saved), (key, delta)
            assert cost > 0


@pytest.mark.parametrize('name', sorted(NETS))
def test_acts_are_producer_output_elements(name):
    model, x = make(name), inputs(3)
    gs = groups_of(model, x)
    total = []
    hooks = [m.register_forward_hook(lambda m, i, o: total.append(o.numel() / x.shape[0]))
             for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert count(gs, _kept(gs))['acts'] == pytest.approx(sum(total))


def _hook_flops(model, x):
    """Conv/linear MACs per sample from forward hooks on the modules."""
    flops = []

    def hook(m, i, o):
        if isinstance(m, nn.ConvTranspose2d):  # every input position meets every tap
            k = m.weight[0, 0].numel()
            flops.append(i[0].numel() * (m.out_channels // m.groups) * k / x.shape[0])
        elif isinstance(m, nn.Conv2d):
            k = m.weight[0, 0].numel()
            flops.append(o.numel() * (m.in_channels // m.groups) * k / x.shape[0])
        else:
            flops.append(o.numel() * m.in_features / x.shape[0])

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sum(flops)


@pytest.mark.parametrize('name', sorted(NETS))
def test_masked_counts_match_the_compact_model(name):
    """count/count_params with masks == what the sliced model really has and does."""
    model, x = make(name), inputs()
    gs = groups_of(model, x)
    masker = ChannelMasker(model, gs)
    random_masks(masker, 2)
    kept = masker.num_kept
    compact = apply_spec(copy.deepcopy(model), make_spec(masker))
    gs2 = build_groups(compact, lambda m: m(x))
    full2 = count(gs2, lambda k: gs2.groups[k].channels)
    now = count(gs, kept)
    assert now == full2
    assert now['flops'] == pytest.approx(_hook_flops(compact, x))
    assert count(gs, _kept(gs))['flops'] == pytest.approx(_hook_flops(model, x))
    assert count_params(model, gs, kept) == sum(p.numel() for p in compact.parameters())
    assert count_params(model, gs, _kept(gs)) == sum(p.numel() for p in model.parameters())


def test_matches_mmengine_flop_analyzer():
    analysis = pytest.importorskip('mmengine.analysis')
    for name in ('chain', 'depthwise', 'linear_head', 'shared_head', 'concat', 'deconv',
                 'tokens'):
        model, x = make(name), inputs(1)
        gs = groups_of(model, x)
        masker = ChannelMasker(model, gs)
        random_masks(masker, 3)
        compact = apply_spec(copy.deepcopy(model), make_spec(masker))
        for net, kept in ((model, lambda k: gs.groups[k].channels), (compact, masker.num_kept)):
            fa = analysis.FlopAnalyzer(net, (x, ))
            fa.unsupported_ops_warnings(False)
            fa.uncalled_modules_warnings(False)
            by_module = fa.by_module()
            # mmengine counts one multiply-add as one flop; sum only the conv/linear layers
            theirs = sum(by_module[n] for n in gs.layers)
            assert count(gs, kept)['flops'] == pytest.approx(theirs), name


def test_mmengine_complexity_info_on_a_plain_conv_net():
    analysis = pytest.importorskip('mmengine.analysis')
    model, x, gs = _cost_net()
    info = analysis.get_model_complexity_info(model, inputs=(inputs(1), ), show_table=False,
                                              show_arch=False)
    assert info['flops'] == count(gs, _kept(gs))['flops']
    assert info['params'] == count_params(model, gs, _kept(gs))


def test_strided_conv_transpose_by_hand():
    """MACs of a transposed conv: every *input* position meets every kernel tap once."""
    gs = groups_of(make('deconv'), inputs())
    assert [(c.module, c.out_elems) for c in gs.calls] == [('a.0', 16), ('up.0', 64), ('c', 64)]
    c = count(gs, _kept(gs))
    #                 a: 4x4 x 8 x 3 x 9    up: 4x4 inputs x 8 x 6 x 2x2   c: 8x8 x 4 x 6
    assert c['flops'] == 16 * 8 * 27 + 16 * 8 * 6 * 4 + 64 * 4 * 6 == 8064
    assert c['acts'] == 16 * 8 + 64 * 6 + 64 * 4
    assert count(gs, _kept(gs, **{'a.0': 3, 'up.0': 2}))['flops'] == \
        16 * 3 * 27 + 16 * 3 * 2 * 4 + 64 * 4 * 2
    flops = unit_costs(gs, _kept(gs), 'flops')
    assert flops == {'a.0': 16 * 27 + 16 * 6 * 4, 'up.0': 16 * 8 * 4 + 64 * 4}
    assert unit_costs(gs, _kept(gs), 'acts') == {'a.0': 16, 'up.0': 64}
    assert gs.layers['up.0'].kernel == 4  # weight elements per channel pair, for count_params
