"""ONNX Runtime table entries timed in context: a block's layout conversions at its graph's
edges (which a model's neighbours spare it) come out of its time, read from ONNX Runtime's
node profile. Toy nets at 8x8 and synthetic profiles: no assertion depends on this machine's
speed."""
import json
import os.path as osp
import sys

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'core'))
from core_toys import groups_of, inputs, make  # noqa: E402
from mmgfp.apis.latency import runner  # noqa: E402
from mmgfp.apis.latency.profile import profile_latency  # noqa: E402
from mmgfp.core import LatencyTable  # noqa: E402
from mmgfp.core.latency import timed_layers  # noqa: E402

FAST = dict(points=2, rounds=1, warmup=0, tol=0.1, max_points=3, align=False)


def _run(ts, ops, durs):
    """The events of one profiled run: its nodes in order, then the run itself."""
    nodes, t = [], ts
    for op, dur in zip(ops, durs):
        nodes.append({'cat': 'Node', 'name': f'{op}_{t}_kernel_time', 'ts': t, 'dur': dur,
                      'args': {'op_name': op}})
        t += dur + 1
    return nodes + [{'cat': 'Session', 'name': 'model_run', 'ts': ts, 'dur': t - ts}]


def test_edge_conversions_are_the_first_and_last_reorders_of_each_run():
    events = (_run(0, ['ReorderInput', 'Conv', 'ReorderOutput'], [30, 500, 20]) +
              # a conversion inside the block (before a GroupNorm) is paid in the model too
              _run(1000, ['ReorderInput', 'Conv', 'ReorderOutput', 'GroupNorm'],
                   [40, 500, 25, 60]) +
              _run(2000, ['Gemm'], [100]) +  # a linear layer: nothing to take out
              _run(3000, ['ReorderOutput'], [7]))  # a lone node is no edge pair: only last
    assert runner.edge_us(events) == [50.0, 40.0, 0.0, 0.0]


def test_in_context_subtracts_the_edges_and_never_goes_negative():
    assert runner.in_context([100.0, 120.0, 110.0], [30.0, 20.0]) == 85.0
    assert runner.in_context([8.0], [9.0, 9.0]) == 0.0  # a tiny block: edges outweigh it
    with pytest.raises(RuntimeError, match='layout conversions'):
        runner.in_context([100.0], [])


def test_a_blocked_conv_pays_edges_alone_a_linear_layer_none(tmp_path):
    pytest.importorskip('onnxruntime')
    run = runner.Backend('onnxruntime', threads=1)
    conv = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
    for module, x, has_edges in ((conv.eval(), torch.randn(1, 16, 8, 8), True),
                                 (nn.Linear(16, 8).eval(), torch.randn(1, 16), False)):
        sess = run.session(runner._export(module, x), profile=str(tmp_path / 'p'))
        fn = run.file_callable(None, x, sess)
        for _ in range(3):
            fn()
        with open(sess.end_profiling()) as f:
            edges = runner.edge_us(json.load(f))
        assert len(edges) == 3
        assert all(e > 0 for e in edges) if has_edges else edges == [0.0] * 3
        timer = runner.Timer('cpu', rounds=2, warmup=0, clock=run.clock)
        assert run.time_block(module, x, timer) >= 0.0


def test_ort_table_key_and_entries_and_an_old_table_is_replaced(tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    model, x = make('residual'), inputs(1)
    gs = groups_of(model, x)
    out = str(tmp_path / 'ort.json')
    old = profile_latency(model, lambda m: m(x), gs, threads=1, input_size=(8, 8),
                          progress=False, backend='onnxruntime', out=out, **FAST)
    assert old.key['block_timing'] == 'in_context' and old.key['clock'] == 'cpu'
    assert sorted(old.layers) == sorted(timed_layers(gs))
    assert all(min(min(r) if isinstance(r, list) else r for r in lay.us) >= 0
               for lay in old.layers.values())
    d = old.to_dict()  # a table profiled before entries were timed in context
    del d['key']['block_timing'], d['key']['clock']
    with open(out, 'w') as f:
        json.dump(d, f)
    capsys.readouterr()
    again = profile_latency(model, lambda m: m(x), gs, threads=1, input_size=(8, 8),
                            progress=False, backend='onnxruntime', out=out, **FAST)
    assert 'does not fit' in capsys.readouterr().err
    assert LatencyTable.load(out).key['block_timing'] == again.key['block_timing']


def test_clock_is_cpu_time_only_for_one_ort_thread_on_the_cpu():
    assert runner.Backend('torch', threads=1).clock == 'wall'  # eager tables unchanged
    assert 'clock' not in runner.Backend('torch', threads=1).key()
    if pytest.importorskip('onnxruntime'):
        assert runner.Backend('onnxruntime', threads=1).clock == 'cpu'
        assert runner.Backend('onnxruntime', threads=2).clock == 'wall'
    with pytest.raises(ValueError, match='`clock` must be one of'):
        runner.Timer(clock='gpu')
