"""Per-group calibration in the profiler, eager and ONNX Runtime, on toy nets (2 rounds).

No assertion depends on how fast this machine is: what is measured, stored and reloaded.
"""
import os.path as osp
import sys

import pytest

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'core'))
from core_toys import groups_of, inputs, make  # noqa: E402
from mmgfp.apis.latency.group_calib import half_one_group  # noqa: E402
from mmgfp.apis.latency.profile import profile_latency  # noqa: E402
from mmgfp.core import LatencyTable  # noqa: E402
from mmgfp.core.latency import group_layers, timed_layers  # noqa: E402
from mmgfp.core.latency_calib import SCALE_RANGE  # noqa: E402

FAST = dict(points=3, rounds=1, warmup=0, threads=1, input_size=(8, 8))


def _profile(model, x, gs, out, **kw):
    return profile_latency(model, lambda m: m(x), gs, out=out, **{**FAST, **kw})


@pytest.mark.parametrize('backend', ['torch', 'onnxruntime'])
def test_groups_are_added_to_a_cached_table_and_round_trip(backend, tmp_path, capsys):
    if backend == 'onnxruntime':
        pytest.importorskip('onnxruntime')
    model, x = make('residual'), inputs(1)
    gs = groups_of(model, x)
    out = str(tmp_path / 't.json')
    plain = _profile(model, x, gs, out, backend=backend, progress=False)
    assert plain.group_calibration is None and plain.group_factors == {}
    capsys.readouterr()
    table = _profile(model, x, gs, out, backend=backend, calibrate_groups=True, group_rounds=2)
    err = capsys.readouterr().err
    assert 'has no group calibration: adding it' in err and 'group 1/' in err
    # the layers were not profiled again; every prunable group was measured alone
    assert table.to_dict()['layers'] == plain.to_dict()['layers']
    assert table.total_us == plain.total_us
    cal = table.group_calibration
    assert sorted(cal['groups']) == sorted(g.key for g in gs.prunable)
    assert sorted(cal['layers']) == sorted(timed_layers(gs))
    for key, g in cal['groups'].items():
        assert g['channels'] == gs.groups[key].channels and 0 < g['kept'] < g['channels']
        assert g['ratio'] > 0 and g['se'] >= 0
        assert SCALE_RANGE[0] <= table.group_factors[key] <= SCALE_RANGE[1]
    again = LatencyTable.load(out)
    assert again.to_dict() == table.to_dict() and again.group_factors == table.group_factors
    # a table that has them is reused as it is
    capsys.readouterr()
    _profile(model, x, gs, out, backend=backend, calibrate_groups=True, group_rounds=2)
    assert 'adding' not in capsys.readouterr().err


def test_half_one_group_narrows_that_group_only():
    model, x = make('residual'), inputs(1)
    gs = groups_of(model, x)
    key = gs.prunable[0].key
    thin, half = half_one_group(model, gs, key)
    assert half == -(-gs.groups[key].units // 2)
    assert thin(x).shape == model(x).shape
    full = dict(model.named_modules())
    changed = {n for n, m in thin.named_modules()
               if n in gs.layers and m.weight.shape != full[n].weight.shape}
    assert changed == set(group_layers(gs, key))  # the convs that read or write the group
