"""Adding a measured compact to a latency table (``calibrate_on``), eager and ONNX Runtime, on a
toy net (2 paired rounds). No assertion depends on how fast this machine is."""
import os.path as osp
import sys

import pytest

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'core'))
from core_toys import groups_of, inputs, make  # noqa: E402
from mmgfp.apis.latency.plan import narrowed  # noqa: E402
from mmgfp.apis.latency.point_calib import calibrate_on, compact_from_spec  # noqa: E402
from mmgfp.apis.latency.profile import profile_latency  # noqa: E402
from mmgfp.core import ChannelMasker, LatencyTable, LatencyTableError, make_spec  # noqa: E402

FAST = dict(points=3, rounds=1, warmup=0, threads=1, input_size=(8, 8), progress=False)


@pytest.mark.parametrize('backend', ['torch', 'onnxruntime'])
def test_a_measured_compact_is_stored_and_predicted(backend, capsys):
    if backend == 'onnxruntime':
        pytest.importorskip('onnxruntime')
    model, x = make('residual'), inputs(1)
    gs = groups_of(model, x)
    table = profile_latency(model, lambda m: m(x), gs, backend=backend, **FAST)
    compact = narrowed(model, gs, {g.key: 1 for g in gs.prunable})
    out = calibrate_on(table, model, compact, lambda m: m(x), rounds=2, warmup=0)
    assert table.points is None and len(out.points) == 1
    point = out.points[0]
    assert point['ratio'] > 0 and point['se'] >= 0
    assert set(point['widths']) == set(table.layers)
    assert point['widths'] != {n: list(lay.full_io) for n, lay in table.layers.items()}
    said = capsys.readouterr().out
    assert f'compact measured {point["ratio"]:.3f}' in said and '1 point(s)' in said
    # the prediction moves from the raw table's towards the measured ratio (all the way
    # without the noise term, unless the raw table predicts no saving or the factor clips)
    raw = out.predict_widths(point['widths'], raw=True) / out.total_us
    now = out.predict_module(compact) / out.total_us
    assert min(raw, point['ratio']) - 1e-9 <= now <= max(raw, point['ratio']) + 1e-9
    exact = LatencyTable.from_dict({**out.to_dict(), 'points': [
        {'widths': point['widths'], 'ratio': point['ratio']}]})
    if 0 < 1 - raw < 1 and 0.25 <= (1 - point['ratio']) / (1 - raw) <= 4:
        assert exact.predict_module(compact) / out.total_us == pytest.approx(point['ratio'])
    again = calibrate_on(out, model, compact, lambda m: m(x), rounds=2, warmup=0)
    assert len(again.points) == 2  # points add up
    assert again.to_dict()['layers'] == table.to_dict()['layers']


def test_a_compact_of_another_model_is_refused():
    model, x = make('residual'), inputs(1)
    gs = groups_of(model, x)
    table = profile_latency(model, lambda m: m(x), gs, **FAST)
    other = make('chain')
    with pytest.raises(LatencyTableError, match=r'the latency table is for a Residual, but '
                       r'the model is a Chain'):
        calibrate_on(table, other, other, lambda m: m(x), rounds=1)
    wider = LatencyTable.from_dict({**table.to_dict(), 'key': {**table.key, 'model': None}})
    with pytest.raises(LatencyTableError, match='has no such module'):
        calibrate_on(wider, model, other, lambda m: m(x), rounds=1)


def test_compact_from_spec_slices_as_the_spec_says():
    model, x = make('residual'), inputs(1)
    gs = groups_of(model, x)
    masker = ChannelMasker(model, gs)
    key = gs.prunable[0].key
    masker.prune(key, 0)
    spec = make_spec(masker)
    compact = compact_from_spec(make('residual'), spec)
    widths = {n: m.weight.shape[0] for n, m in compact.named_modules() if hasattr(m, 'weight')
              and m.weight is not None and m.weight.dim() == 4}
    full = {n: m.weight.shape[0] for n, m in make('residual').named_modules()
            if hasattr(m, 'weight') and m.weight is not None and m.weight.dim() == 4}
    assert sum(full.values()) > sum(widths.values())
