"""The latency profiler on toy nets (CPU, a few widths, fast) and its sampling helpers.

No assertion here depends on how fast this machine is: shapes, keys, grids, the cache, what
the standalone blocks contain, and the sampling logic on synthetic time functions.
"""
import json
import math
import os
import os.path as osp
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'core'))
from core_toys import groups_of, inputs, make  # noqa: E402
from mmgfp.apis.latency.profile import (CpuShare, axis_points, build_block,  # noqa: E402
                                        capture_calls, compare_latency, measure_latency,
                                        probe_align,
                                        profile_latency, refine)
from mmgfp.apis.latency.runner import steady_allocator  # noqa: E402
from mmgfp.core import FisherPruner, LatencyTable  # noqa: E402
from mmgfp.core.grouping import layer_io as _io  # noqa: E402
from mmgfp.core.latency import timed_layers  # noqa: E402

FAST = dict(points=3, rounds=1, warmup=0, threads=1, progress=False)


def _profile(name, **kw):
    model, x = make(name), inputs(1)
    gs = groups_of(model, x)
    calls = []

    def fwd(m):
        calls.append(1)
        return m(x)

    table = profile_latency(model, fwd, gs, input_size=(8, 8), config=name, **{**FAST, **kw})
    return model, gs, table, calls


@pytest.mark.parametrize('name', ['chain', 'residual', 'depthwise', 'fpn', 'linear_head'])
def test_profile_covers_every_prunable_layer_at_full_width(name):
    model, gs, table, _ = _profile(name)
    assert sorted(table.layers) == sorted(timed_layers(gs))
    full = lambda k: gs.groups[k].channels  # noqa: E731
    for lname, layer in table.layers.items():
        cin, cout, _ = _io(gs, lname, full)
        if lname in gs.passthrough:
            assert layer.entry['width'][-1] == cout and len(layer.entry['us']) == len(
                layer.entry['width'])
        else:
            assert (layer.entry['in'][-1], layer.entry['out'][-1]) == (cin, cout)
            assert len(layer.entry['us']) == len(layer.entry['in'])
        flat = [t for row in layer.entry['us'] for t in (row if isinstance(row, list) else [row])]
        assert all(t > 0 for t in flat) and json.loads(json.dumps(layer.entry))
        assert layer.out_elems > 0  # output elements per channel (batch 1, 8x8 or less)
    assert 0 <= table.scaled_remainder <= 1  # calibrated on a half-width copy
    table.check_groups(gs)  # what FisherPruner checks
    # the prediction is exact at full width (the remainder is what layers do not explain)
    assert table.predict(gs, full) == pytest.approx(table.total_us)
    assert table.key['model'] == type(model).__name__ and table.key['threads'] == 1
    assert table.key['input_size'] == [8, 8] and table.key['device'].startswith('cpu: ')
    pruner = FisherPruner(model, gs, delta='latency', divisor='auto', latency_table=table)
    assert pruner.remaining()['latency'] == 1.0


def test_grid_axes_follow_what_can_be_pruned():
    _, gs, table, _ = _profile('chain')
    # a: input is the image (3 channels, never pruned); c: output is the network's
    assert table.layers['a.0'].entry['in'] == [3] and len(table.layers['a.0'].entry['out']) > 1
    assert table.layers['c'].entry['out'] == [5] and len(table.layers['c'].entry['in']) > 1
    _, gs, table, _ = _profile('depthwise')
    # pw.0's group has blocks of 4 (the grouped conv g): every sampled width is a multiple
    assert all(w % 4 == 0 for w in table.layers['pw.0'].entry['out'])
    assert all(w % 4 == 0 for w in table.layers['g.0'].entry['width'])


def test_the_table_is_cached_by_key(tmp_path, capsys):
    out = str(tmp_path / 'chain.json')
    _, gs, first, calls = _profile('chain', out=out)
    assert calls and osp.isfile(out)
    _, _, again, calls = _profile('chain', out=out)
    assert calls == [] and again.to_dict() == first.to_dict()  # reused, nothing ran
    _, _, _, calls = _profile('chain', out=out, force=True)
    assert calls
    capsys.readouterr()
    _, _, other, calls = _profile('chain', out=out, batch=4)  # another key: measured again
    assert calls and other.key['batch'] == 4 and LatencyTable.load(out).key['batch'] == 4
    # said even with progress=False (FAST): the stored file is replaced
    assert 'does not fit' in capsys.readouterr().err
    _, _, _, calls = _profile('residual', out=out)  # another model's layers: measured again
    assert calls and 'stem.0' in LatencyTable.load(out).layers


def test_a_cached_table_fits_its_config_however_it_is_named(tmp_path, capsys):
    """tools/profile_latency.py run from the repository root names a config
    'configs/digits/x.py', a benchmark the same one by its absolute path: one table."""
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    model, x = make('chain'), inputs(1)
    gs = groups_of(model, x)
    out = str(tmp_path / 'chain.json')
    calls = []

    def fwd(m):
        calls.append(1)
        return m(x)

    first = profile_latency(model, fwd, gs, input_size=(8, 8), config='configs/digits/x.py',
                            out=out, **FAST)
    assert calls and first.key['config'] == 'digits/x.py'  # stored relative to configs/
    with open(out) as f:
        assert json.load(f)['key']['config'] == 'digits/x.py'
    calls.clear()
    for same in (osp.join(root, 'configs', 'digits', 'x.py'), 'digits/x.py'):
        again = profile_latency(model, fwd, gs, input_size=(8, 8), config=same, out=out,
                                **FAST)
        assert calls == [] and again.to_dict() == first.to_dict()  # reused, nothing ran
    capsys.readouterr()
    other = profile_latency(model, fwd, gs, input_size=(8, 8), config='configs/digits/y.py',
                            out=out, **FAST)
    assert calls and other.key['config'] == 'digits/y.py'  # another config: measured again
    assert "config: table 'digits/x.py', asked 'digits/y.py'" in capsys.readouterr().err


def test_capture_finds_calls_norm_and_activation():
    model, x = make('fpn'), inputs(2)
    calls = capture_calls(model, lambda m: m(x), ['c2.0', 'head.0', 'lat2'])
    assert dict(calls['head.0'].shapes) == {(2, 6, 8, 8): 1, (2, 6, 4, 4): 1}  # shared head
    assert isinstance(calls['c2.0'].norm, nn.BatchNorm2d) and isinstance(
        calls['c2.0'].act, nn.ReLU)
    assert isinstance(calls['head.0'].norm, nn.GroupNorm) and isinstance(
        calls['head.0'].act, nn.ReLU)
    assert calls['lat2'].norm is None and calls['lat2'].act is None
    assert calls['head.0'].out_elems == 2 * 8 * 8 + 2 * 4 * 4  # both calls, per channel
    block = build_block(calls['head.0'], 4, 5, depthwise=False)
    conv, gn, act = block
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4, 5, (3, 3))
    assert (gn.num_groups, gn.num_channels) == (5, 5) and isinstance(act, nn.ReLU)
    model, x = make('depthwise'), inputs(2)
    calls = capture_calls(model, lambda m: m(x), ['dw.0', 'g.0'])
    dw = build_block(calls['dw.0'], 6, 6, depthwise=True)[0]
    assert (dw.groups, dw.stride) == (6, (2, 2))
    assert build_block(calls['g.0'], 8, 8, depthwise=True)[0].groups == 2  # 4 per group


def test_calibration_times_a_half_width_copy(monkeypatch):
    """The model and its half-width copy, timed together, give the total and the ratio."""
    import mmgfp.apis.latency.profile as L
    from mmgfp.apis.latency.runner import Backend
    model, x = make('chain'), inputs(1)
    gs = groups_of(model, x)
    seen = {}

    def fake_times(models, fwd, run, rounds, warmup):
        seen['widths'] = [(m.a[0].out_channels, m.b[0].out_channels)
                          for m in (models['thin'], models['quarter'])]
        return {'full': 100.0, 'thin': 69.4, 'quarter': 50.0}

    monkeypatch.setattr(L, 'time_models', fake_times)
    total, cal = L.calibrate(model, lambda m: m(x), gs, Backend(), 1, 0, log=print)
    assert seen['widths'] == [(4, 6), (2, 3)]  # every prunable group at half / a quarter
    assert total == 100.0 and cal['ratio'] == pytest.approx(0.694) and cal['thin'] == {
        'a.0': [3, 4], 'b.0': [4, 6], 'c': [6, 5]}
    assert cal['ratio_quarter'] == 0.5 and cal['quarter']['b.0'] == [2, 3]
    monkeypatch.setattr(L, 'half_width_copy', lambda m, g: 1 / 0)
    monkeypatch.setattr(L, 'time_models', lambda models, *a: {'full': 90.0})
    assert L.calibrate(model, lambda m: m(x), gs, Backend(), 1, 0, log=print) == (90.0, None)


def test_axis_points_and_refinement():
    assert axis_points(64, 8, 4) == [16, 32, 48, 64]
    assert axis_points(12, 4, 5) == [4, 8, 12]
    assert axis_points(7, 1, 1) == [7]

    def linear(w):
        return 2.0 * w

    assert refine(linear, [16, 32, 48, 64], 8, 0.05, 20) == [16, 32, 48, 64]

    def stairs(w):  # time steps every 32 channels
        return float(math.ceil(w / 32) * 32)

    pts = refine(stairs, [16, 48, 64], 8, 0.05, 20)
    assert 32 in pts and pts[0] == 16 and pts[-1] == 64
    assert refine(stairs, [16, 48, 64], 8, 0.05, 3) == [16, 48, 64]  # at most 3 points


def test_probe_align_finds_spikes_off_aligned_widths():
    def smooth(w):
        return float(w)

    def spiky(w):  # widths that are not a multiple of 8 cost 40% more
        return w * (1.0 if w % 8 == 0 else 1.4)

    def overhead(w):  # a fixed cost per call and a linear one: no alignment
        return 500.0 + w

    def vector_blocks(w):  # CPU-like: channels are computed in blocks of 16
        return 100.0 + 16 * math.ceil(w / 16)

    assert probe_align(smooth, 256, 1, 0.1) == 1
    assert probe_align(overhead, 64, 1, 0.1) == 1
    assert probe_align(vector_blocks, 256, 1, 0.01) == 16
    assert probe_align(spiky, 256, 1, 0.1) == 8
    assert probe_align(spiky, 12, 1, 0.1) == 1  # too narrow to probe
    assert probe_align(spiky, 256, 8, 0.1) == 1  # blocks of 8 never leave the alignment
    readings = iter([300.0])  # one slow reading of 255 channels, then ordinary ones

    def noisy(w):
        return next(readings, None) or float(w) if w == 255 else float(w)

    assert probe_align(noisy, 256, 1, 0.1, again=smooth) == 1  # not confirmed: noise
    assert probe_align(spiky, 256, 1, 0.1, again=spiky) == 8


def test_measure_and_compare_latency():
    x = inputs(1)
    models = {'chain': make('chain'), 'residual': make('residual')}
    got = compare_latency(models, lambda m: m(x), rounds=2, warmup=1, threads=1)
    assert set(got) == {'chain', 'residual'} and all(v > 0 for v in got.values())
    assert measure_latency(models['chain'], lambda m: m(x), rounds=2) > 0


@pytest.mark.parametrize('kw,match', [
    (dict(dtype='int8'), "`dtype` must be one of"),
    (dict(device='tpu'), "`device` must be 'cpu' or 'cuda"),
])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        _profile('chain', **kw)


def test_the_table_says_what_else_ran_while_profiling(tmp_path, capsys):
    out = str(tmp_path / 'chain.json')
    _profile('chain', out=out, progress=True)
    prof = LatencyTable.load(out).profiled
    assert set(prof) == {'other_cpus', 'cpus', 'threads', 'seconds', 'allocator'}
    assert prof['allocator'] == steady_allocator()  # what the timing ran with
    assert prof['threads'] == 1 and prof['cpus'] == len(os.sched_getaffinity(0))
    assert prof['other_cpus'] <= prof['cpus'] and prof['seconds'] >= 0  # 0.0: under 50 ms
    assert 'other processes kept' in capsys.readouterr().err


def test_cpu_share_counts_another_process_not_this_one(monkeypatch):
    from mmgfp.apis.latency import runner
    # the arithmetic: 3 busy CPU-seconds over 2 s of wall time, 1 of them this process's own
    clock = iter([10.0, 12.0])
    own = iter([5.0, 6.0])
    busy = iter([100.0, 103.0])
    monkeypatch.setattr(runner.time, 'perf_counter', lambda: next(clock))
    monkeypatch.setattr(runner.time, 'process_time', lambda: next(own))
    monkeypatch.setattr(runner, '_busy_seconds', lambda cpus: next(busy))
    with CpuShare(1) as share:
        pass
    assert share.result == {'other_cpus': 1.0, 'cpus': len(os.sched_getaffinity(0)),
                            'threads': 1, 'seconds': 2.0, 'allocator': steady_allocator()}
    monkeypatch.undo()
    # on this machine: a child spinning for 1.5 s while this process waits counts as others,
    # whatever else runs here (busy CPUs are busy either way)
    spin = 'import time\nt = time.time()\nwhile time.time() - t < 1.5:\n    pass'
    with CpuShare(1) as shared:
        subprocess.run([sys.executable, '-c', spin], check=True)
    assert shared.result['other_cpus'] >= 0.6


GLIBC_AS_IS = platform.libc_ver()[0] == 'glibc' and not any(
    k in os.environ for k in ('LD_PRELOAD', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_',
                              'MMGFP_STEADY_ALLOCATOR'))


def _allocator_in_a_fresh_process(**env):
    code = 'from mmgfp.apis.latency.runner import steady_allocator; print(steady_allocator())'
    return subprocess.run([sys.executable, '-c', code], env=dict(os.environ, **env),
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not GLIBC_AS_IS, reason="glibc's own malloc, no allocator settings given")
def test_timing_fixes_glibc_allocator_once():
    """glibc's thresholds are set once per process and said in what is recorded; settings
    of the environment and a preloaded allocator are left alone, and say so."""
    text = steady_allocator()
    assert text.startswith('glibc ') and 'mmap threshold 32 MiB' in text and \
        'trim threshold 1 GiB' in text
    assert steady_allocator() is text
    assert _allocator_in_a_fresh_process(MMGFP_STEADY_ALLOCATOR='0') == \
        'unchanged (MMGFP_STEADY_ALLOCATOR=0)'
    assert _allocator_in_a_fresh_process(MALLOC_TRIM_THRESHOLD_='4096') == \
        'unchanged (MALLOC_TRIM_THRESHOLD_=4096 given)'


@pytest.mark.skipif(not GLIBC_AS_IS, reason="glibc's own malloc, no allocator settings given")
def test_compare_latency_counts_page_faults_per_run():
    """A forward that maps fresh memory on every run (128 MiB, every page written, then
    unmapped) faults on every run; one that reuses its memory does not. Page counts: at least
    one fault per 4 MiB, also with transparent huge pages.

    The memory is mapped with ``mmap`` itself, not allocated as a tensor: glibc serves even
    a 128 MiB request from the top of its heap when earlier tests of the process left that
    much free there (the trim threshold of 1 GiB keeps it), and then nothing faults."""
    import mmap
    keep = torch.zeros(1 << 10)

    def fresh():
        m = mmap.mmap(-1, 128 << 20)
        for offset in range(0, 128 << 20, 4096):
            m[offset] = 1
        m.close()

    def forward(m):
        return m()

    # what made the tensor version of this test fail inside the suite: a heap whose top
    # already holds 800 MiB, freed
    heap = [torch.ones(1 << 20) for _ in range(200)]
    del heap
    faults = {}
    compare_latency({'fresh': fresh, 'reused': lambda: keep.add_(1)}, forward, rounds=3,
                    warmup=1, faults=faults)
    assert faults['fresh'] >= 32 and faults['reused'] < faults['fresh']
