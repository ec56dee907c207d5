"""Latency tables (lookup, checks, I/O) and latency as the pruning cost, on hand-written tables.

Most tests use ``Chain`` from core_toys with a table whose times are bilinear in the channel
counts, so interpolation is exact and every expected figure can be worked out by hand::

    x (3) -> a: conv 3->8 [a.0] -> b: conv 8->12 [b.0] -> c: conv 12->5 -> out
    t_a = 1.0 * out,  t_b = 0.1 * in * out,  t_c = 0.5 * in     (us)
"""
import json
import os.path as osp

import pytest
import torch

from core_toys import groups_of, inputs, make
from mmgfp.core import FisherPruner, LatencyTable, LatencyTableError, unit_costs
from mmgfp.core.latency import CONFIGS_DIR, FORMAT, config_name

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# one config of the repository, as a user may give it (its file need not exist)
SAME_CONFIG = ['configs/digits/x.py', './configs/digits/x.py', 'configs//digits/./x.py',
               osp.join(ROOT, 'configs', 'digits', 'x.py'), 'digits/x.py']

KEY = {'device': 'cpu: test', 'torch': '2.0', 'dtype': 'fp32', 'channels_last': False,
       'batch': 1, 'threads': 1, 'input_size': [8, 8], 'model': 'Chain', 'config': 'toy'}


def grid(f, ins, outs):
    return {'in': list(ins), 'out': list(outs), 'us': [[f(i, o) for o in outs] for i in ins]}


def chain_table(total=100.0, a_align=1, b_align=1, b=None, c=None):
    layers = {'a.0': dict(grid(lambda i, o: 1.0 * o, [3], [1, 4, 8]), align=a_align),
              'b.0': dict(b or grid(lambda i, o: 0.1 * i * o, [1, 4, 8], [1, 6, 12]),
                          align=b_align),
              'c': c or grid(lambda i, o: 0.5 * i, [1, 6, 12], [5])}
    return {'format': FORMAT, 'key': dict(KEY), 'total_us': total, 'layers': layers}


def chain(table=None, **kw):
    model, x = make('chain'), inputs()
    gs = groups_of(model, x)
    return model, gs, FisherPruner(model, gs, latency_table=table or chain_table(), **kw)


def widths(gs, **kept):
    """Group key -> kept channels: those given (``a=6`` for 'a.0'), full width elsewhere."""
    given = {f'{k}.0': v for k, v in kept.items()}
    return lambda key: given.get(key, gs.groups[key].channels)


def fake_stats(pruner, values):
    rec = pruner.recorder
    for k, f in rec.fisher.items():
        f.copy_(torch.as_tensor(values[k], dtype=torch.float64))
        rec.hits[k] = 1
    rec.iters = 1


# -- lookup ------------------------------------------------------------------------------------
def test_bilinear_interpolation_and_extrapolation():
    t = LatencyTable(KEY, 10.0, {
        'l': {'in': [4, 8], 'out': [2, 4, 8], 'us': [[1, 2, 6], [3, 5, 9]]},
        'dw': {'width': [4, 16], 'us': [2.0, 8.0], 'align': 4}})
    assert t.time('l', 4, 4) == 2 and t.time('l', 8, 8) == 9  # sampled points
    assert t.time('l', 4, 3) == pytest.approx(1.5)  # along out
    assert t.time('l', 6, 4) == pytest.approx(3.5)  # along in
    assert t.time('l', 6, 6) == pytest.approx((4 + 7) / 2)  # both: (in4: 4, in8: 7)
    # below the smallest point: the first segment's slope, never below zero
    assert t.time('l', 4, 1) == pytest.approx(0.5)
    assert t.time('l', 2, 2) == pytest.approx(0.0)  # 1 - (3 - 1) / 4 * 2 = 0
    assert t.time('l', 1, 2) == 0.0  # would be negative
    assert t.time('dw', 0, 10) == pytest.approx(5.0) and t.time('dw', 0, 2) == 1.0
    assert t.align('dw') == 4 and t.align('l') == 1


def test_lookup_outside_the_profiled_model_is_an_error():
    t = LatencyTable(KEY, 10.0, {'l': {'in': [3], 'out': [2, 8], 'us': [[1, 4]]}})
    with pytest.raises(LatencyTableError, match=r"'l' was profiled at out channels \[2, 8\], "
                       r'but 9 were asked for.*profile_latency'):
        t.time('l', 3, 9)
    with pytest.raises(LatencyTableError, match=r'profiled at in channels \[3\], but 4'):
        t.time('l', 4, 8)
    with pytest.raises(LatencyTableError, match="no entry for module 'm'.*profile_latency"):
        t.time('m', 3, 8)


@pytest.mark.parametrize('layers,match', [
    ({'l': {'in': [4], 'us': [[1]]}}, 'needs "in" and "out"'),
    ({'l': {'in': [4, 2], 'out': [1], 'us': [[1], [2]]}}, 'strictly increasing'),
    ({'l': {'in': [4, 8], 'out': [1, 2], 'us': [[1, 2]]}}, r'shape \[2, 2\]'),
    ({'l': {'width': [0, 2], 'us': [1, 2]}}, 'positive channel counts'),
    ({'l': {'width': [2], 'us': [1], 'align': 0}}, '`align` must be >= 1'),
])
def test_malformed_tables_are_refused(layers, match):
    with pytest.raises(LatencyTableError, match=match):
        LatencyTable(KEY, 1.0, layers)


def test_save_load_round_trip_and_bad_files(tmp_path):
    d = chain_table()
    path = str(tmp_path / 't.json')
    LatencyTable.from_dict(d).save(path)
    assert json.load(open(path)) == d
    assert LatencyTable.load(path).to_dict() == d
    with pytest.raises(FileNotFoundError, match='profile_latency'):
        LatencyTable.load(str(tmp_path / 'missing.json'))
    (tmp_path / 'spec.json').write_text(json.dumps({'format': 'mmgfp.channel_spec'}))
    with pytest.raises(LatencyTableError, match='not a latency table'):
        LatencyTable.load(str(tmp_path / 'spec.json'))
    with pytest.raises(LatencyTableError, match="lacks 'total_us'"):
        LatencyTable.from_dict({'format': FORMAT, 'key': {}, 'layers': {}})


def test_key_matching():
    t = LatencyTable.from_dict(chain_table())
    assert t.matches({'device': 'cpu: test', 'input_size': (8, 8)})  # list vs tuple: same
    assert not t.matches({'dtype': 'fp16'})
    t.check_key({'batch': 1, 'threads': 1})
    with pytest.raises(LatencyTableError, match=r"dtype: table 'fp32', asked 'fp16', batch: "
                       r'table 1, asked 8.*profile_latency'):
        t.check_key({'dtype': 'fp16', 'batch': 8, 'threads': 1})


def test_config_name_is_the_path_inside_configs(monkeypatch):
    assert CONFIGS_DIR == osp.join(ROOT, 'configs') and osp.isdir(CONFIGS_DIR)
    assert {config_name(c) for c in SAME_CONFIG} == {'digits/x.py'}
    # relative paths are the working directory's; 'configs/...' is the repository's anywhere
    monkeypatch.chdir(osp.join(ROOT, 'tools'))
    assert config_name('../configs/digits/x.py') == 'digits/x.py'
    assert config_name('configs/digits/x.py') == 'digits/x.py'
    monkeypatch.chdir(osp.join(ROOT, 'configs'))
    assert config_name('digits/x.py') == config_name('./digits/x.py') == 'digits/x.py'


@pytest.mark.parametrize('config', [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',  # a config of an installed package
    '/elsewhere/configs/digits/x.py',  # not the repository's configs folder
    osp.join(ROOT, 'tools', 'x.py'), 'toy', 'fcos_r50', '', None])
def test_config_name_leaves_other_names(config):
    assert config_name(config) == config


def test_config_name_only_normalises_other_paths():
    assert config_name('a//b/./c.py') == 'a/b/c.py'
    assert config_name('/elsewhere/x/../y.py') == '/elsewhere/y.py'
    assert config_name(osp.join(ROOT, 'configs')) == osp.join(ROOT, 'configs')  # the folder


@pytest.mark.parametrize('stored', SAME_CONFIG)
def test_a_config_matches_however_it_is_written(stored):
    d = chain_table()
    d['key'] = dict(d['key'], config=stored)
    t = LatencyTable.from_dict(d)
    assert t.key['config'] == stored  # the key is kept as it was stored
    for asked in SAME_CONFIG:
        assert t.matches({'config': asked, 'batch': 1}), (stored, asked)
    assert t.mismatches({'config': 'digits/y.py'}) == {'config': (stored, 'digits/y.py')}
    with pytest.raises(LatencyTableError, match=r"config: table '.*x\.py', asked "
                       r"'configs/digits/y\.py'"):
        t.check_key({'config': 'configs/digits/y.py'})
    for other in ('mmdet::digits/x.py', 'other/digits/x.py', '/elsewhere/configs/digits/x.py'):
        assert not t.matches({'config': other}), (stored, other)


def test_a_key_from_before_the_runtime_was_recorded_is_an_eager_table():
    """Tables profiled before keys named their runtime (no backend fields) fit an eager key
    with the same torch, and never an ONNX Runtime one."""
    d = chain_table()
    d['key'] = dict(d['key'], torch='2.14.1')
    t = LatencyTable.from_dict(d)
    assert 'backend' not in t.key
    t.check_key({'backend': 'torch', 'backend_version': '2.14.1', 'provider': None})
    assert t.mismatches({'backend_version': '2.15.0'}) == {'backend_version': ('2.14.1',
                                                                               '2.15.0')}
    with pytest.raises(LatencyTableError, match="backend: table 'torch', asked 'onnxruntime'"):
        t.check_key({'backend': 'onnxruntime', 'backend_version': '1.32', 'provider': 'CPU'})


def test_table_of_another_model_is_refused():
    d = chain_table()
    del d['layers']['b.0']
    with pytest.raises(LatencyTableError, match="no entry for module 'b.0'"):
        chain(d)
    d = chain_table(b=grid(lambda i, o: 1.0, [1, 8], [1, 16]))
    with pytest.raises(LatencyTableError, match=r"'b.0' at full width \(8, 16\), but the "
                       r'model has \(8, 12\)'):
        chain(d)


# -- latency as the cost ------------------------------------------------------------------------
def test_predict_and_unit_costs_by_hand():
    _, gs, pruner = chain()
    table = pruner.table
    full = widths(gs)
    assert table.predict(gs, full) == pytest.approx(100.0)
    # a.0 8->6, b.0 12->9: a saves 2, b 0.1*(8*12-6*9)=4.2, c 0.5*3=1.5
    assert table.predict(gs, widths(gs, a=6, b=9)) == pytest.approx(100 - 7.7)
    # one channel of a.0: a saves 1, b 0.1*12; of b.0: b saves 0.1*8, c 0.5
    costs = unit_costs(gs, full, 'latency', table)
    assert costs == pytest.approx({'a.0': 2.2, 'b.0': 1.3})
    # a 3-unit step of b.0 saves 0.1*8*3 + 0.5*3 = 3.9, i.e. 1.3 per unit (bilinear times)
    assert unit_costs(gs, full, 'latency', table, {'b.0': 3}) == pytest.approx(
        {'a.0': 2.2, 'b.0': 1.3})
    # after a.0 went to 4: b.0's units are cheaper (0.1*4 + 0.5), a.0's too (1 + 0.1*12)
    assert unit_costs(gs, widths(gs, a=4), 'latency', table) == pytest.approx(
        {'a.0': 2.2, 'b.0': 0.9})
    with pytest.raises(ValueError, match='needs a latency table'):
        unit_costs(gs, full, 'latency')
    assert pruner.remaining()['latency'] == 1.0
    assert pruner.predicted_latency() == pytest.approx(100.0)


def test_predict_module_reads_the_widths_of_a_compact_model():
    """A model pruned by any tool: the table is read at its modules' own widths."""
    model, gs, pruner = chain()
    table = pruner.table
    assert table.predict_module(model) == pytest.approx(100.0)
    # slice a.0 8->6 and b.0 12->9 by hand, as another tool would
    a, b, c = model.a[0], model.b[0], model.c
    model.a[0] = torch.nn.Conv2d(a.in_channels, 6, a.kernel_size, padding=a.padding)
    model.b[0] = torch.nn.Conv2d(6, 9, b.kernel_size, padding=b.padding)
    model.c = torch.nn.Conv2d(9, c.out_channels, c.kernel_size, padding=c.padding)
    assert table.predict_module(model) == pytest.approx(
        table.predict(gs, widths(gs, a=6, b=9)))  # 100 - 7.7, as by hand above
    model.c = torch.nn.Identity()
    with pytest.raises(LatencyTableError, match=r"times module 'c', but the model has "
                       r'Identity.*profile_latency'):
        table.predict_module(model)
    model.c = torch.nn.Conv2d(13, 5, 1)
    with pytest.raises(LatencyTableError, match=r"'c' was profiled at in channels"):
        table.predict_module(model)


def test_scaled_remainder_shrinks_with_the_output_elements():
    """A table whose remainder is half fixed, half scaling with the layers' outputs."""
    d = chain_table()
    for name, elems in (('a.0', 10), ('b.0', 5), ('c', 2)):
        d['layers'][name]['out_elems'] = elems
    d['scaled_remainder'] = 0.5
    model, gs, pruner = chain(d)
    table = pruner.table
    # layers at full width: a 8, b 0.1*8*12 = 9.6, c 0.5*12 = 6 -> remainder 100 - 23.6
    assert table.remainder_us == pytest.approx(76.4)
    assert table.predict(gs, widths(gs)) == pytest.approx(100.0)
    # a 8->6, b 12->9: layers save 7.7 (above); outputs 10*8+5*12+2*5 = 150 elements lose
    # 10*2 + 5*3 = 35, so the scaled half of the remainder (38.2) loses 35/150 of itself
    expected = 100 - 7.7 - 38.2 * 35 / 150
    assert table.predict(gs, widths(gs, a=6, b=9)) == pytest.approx(expected)
    # one channel of a.0: 2.2 in the layers, 38.2 * 10/150 in the remainder
    assert table.saved(gs, widths(gs), 'a.0', 1) == pytest.approx(2.2 + 38.2 * 10 / 150)
    assert unit_costs(gs, widths(gs), 'latency', table)['a.0'] == pytest.approx(
        2.2 + 38.2 * 10 / 150)
    a, b, c = model.a[0], model.b[0], model.c  # the same widths as a compact module
    model.a[0] = torch.nn.Conv2d(a.in_channels, 6, a.kernel_size, padding=a.padding)
    model.b[0] = torch.nn.Conv2d(6, 9, b.kernel_size, padding=b.padding)
    model.c = torch.nn.Conv2d(9, c.out_channels, c.kernel_size, padding=c.padding)
    assert table.predict_module(model) == pytest.approx(expected)
    assert LatencyTable.from_dict(table.to_dict()).to_dict() == d
    for bad in (1.5, -0.1, 'half'):
        with pytest.raises(LatencyTableError, match='scaled_remainder` must lie in'):
            LatencyTable.from_dict(dict(d, scaled_remainder=bad))
    d['layers']['c']['out_elems'] = -1
    with pytest.raises(LatencyTableError, match="'c': `out_elems` must be a number >= 0"):
        LatencyTable.from_dict(d)


def test_latency_delta_picks_lowest_importance_per_time_saved():
    _, gs, pruner = chain(delta='latency')
    fake_stats(pruner, {'a.0': [1.0] * 8, 'b.0': [1.0] * 12})
    rec = pruner.select()  # equal importance: a.0 saves more time per channel (2.2 vs 1.3)
    assert rec.key == 'a.0' and rec.score == pytest.approx(1 / 2.2)
    fake_stats(pruner, {'a.0': [2.0] * 8, 'b.0': [1.0] + [3.0] * 11})
    rec = pruner.select()  # 2/2.2 > 1/1.3
    assert (rec.key, rec.units) == ('b.0', [0]) and rec.score == pytest.approx(1 / 1.3)
    pruner.step()
    assert pruner.remaining()['latency'] == pytest.approx((100 - 1.3) / 100)


def test_divisor_auto_follows_the_table_alignment():
    _, gs, pruner = chain(chain_table(a_align=4, b_align=8), delta='latency', divisor='auto')
    assert pruner.divisors == {'a.0': 4, 'b.0': 8}
    seen = []
    for it in range(20):
        fake_stats(pruner, {'a.0': [1.0] * 8, 'b.0': [1.0] * 12})
        recs = pruner.step()
        if not recs:
            break
        seen.append((recs[0].key, len(recs[0].units)))
    # b.0 12 -> 8 in one removal (to a multiple of 8), then stops: 8 - 8 = 0; a.0 8 -> 4
    assert sorted(seen) == [('a.0', 4), ('b.0', 4)]
    assert (pruner.kept('a.0'), pruner.kept('b.0')) == (4, 8)
    # an integer divisor still applies to every group alike
    _, _, fixed = chain(divisor=4)
    assert fixed.divisors == {'a.0': 4, 'b.0': 4}


def test_a_step_that_saves_no_time_grows_until_it_does():
    # b's time is flat from 8 to 12 output channels (a staircase) and c ignores its input
    flat = {'in': [1, 4, 8], 'out': [1, 8, 12],
            'us': [[0.1 * i * o for o in (1, 8, 8)] for i in (1, 4, 8)]}
    c = grid(lambda i, o: 2.0, [1, 6, 12], [5])
    _, gs, pruner = chain(chain_table(b=flat, c=c), delta='latency')
    assert unit_costs(gs, pruner.kept, 'latency', pruner.table)['b.0'] == 0.0
    fisher_b = [float(v) for v in range(12, 0, -1)]
    fake_stats(pruner, {'a.0': [100.0] * 8, 'b.0': fisher_b})
    rec = pruner.select()
    # 12 -> 8 saves nothing; 12 -> 7 saves 0.1*8*(8-7) = 0.8: five units go together
    assert rec.key == 'b.0' and sorted(rec.units) == [7, 8, 9, 10, 11]
    assert rec.score == pytest.approx((1 + 2 + 3 + 4 + 5) / 0.8)


def test_removal_that_costs_time_is_never_chosen():
    # a spike: 11 output channels of b take longer than 12, and nothing below helps in reach
    spiky = {'in': [1, 4, 8], 'out': [1, 11, 12], 'us': [[50.0, 50.0, 1.0]] * 3}
    c = grid(lambda i, o: 2.0, [1, 6, 12], [5])
    _, gs, pruner = chain(chain_table(b=spiky, c=c), delta='latency')
    assert unit_costs(gs, pruner.kept, 'latency', pruner.table)['b.0'] < 0
    fake_stats(pruner, {'a.0': [100.0] * 8, 'b.0': [0.0] * 12})
    assert pruner.select().key == 'a.0'  # b.0 is free of importance, but would cost time


def test_target_metric_latency_stops_at_the_target():
    _, gs, pruner = chain(delta='latency')
    history = [pruner.remaining()['latency']]
    for it in range(50):
        gen = torch.Generator().manual_seed(it)
        fake_stats(pruner, {'a.0': torch.rand(8, generator=gen).tolist(),
                            'b.0': torch.rand(12, generator=gen).tolist()})
        recs = pruner.step(3, until=lambda: pruner.remaining()['latency'] <= 0.8)
        history.append(pruner.remaining()['latency'])
        if history[-1] <= 0.8:
            break
    assert history[-1] <= 0.8 < history[-2]
    assert all(b < a for a, b in zip(history, history[1:]))
    kept = {k: pruner.kept(k) for k in ('a.0', 'b.0')}
    a, b = kept['a.0'], kept['b.0']
    expected = 100 - (8 - a) - 0.1 * (8 * 12 - a * b) - 0.5 * (12 - b)
    assert pruner.predicted_latency() == pytest.approx(expected)
    assert len(recs) >= 1


def test_constructor_needs_a_table_for_latency():
    model, x = make('chain'), inputs()
    gs = groups_of(model, x)
    for kw, what in ((dict(delta='latency'), "delta='latency'"),
                     (dict(divisor='auto'), "divisor='auto'")):
        with pytest.raises(ValueError, match=f"{what} needs `latency_table`.*profile_latency"):
            FisherPruner(model, gs, **kw)
    with pytest.raises(ValueError, match="`divisor` must be a positive integer or 'auto'"):
        FisherPruner(model, gs, divisor='8')
    with pytest.raises(ValueError, match='predicted_latency'):
        FisherPruner(model, gs).predicted_latency()
    assert 'latency' not in FisherPruner(model, gs).remaining()


def test_table_from_a_path(tmp_path):
    path = str(tmp_path / 'chain.json')
    LatencyTable.from_dict(chain_table()).save(path)
    _, _, pruner = chain(path, delta='latency')
    assert pruner.table.key == KEY and pruner.remaining()['latency'] == 1.0
