"""Calibrating a latency table on a thinner copy, and warning about its origin (plain data)."""
import pytest

from test_core_latency import chain, chain_table, widths
from mmgfp.core import LatencyTable, LatencyTableError
from mmgfp.core.latency_calib import (fit_calibration, load_warning, origin_notes,
                                      origin_warning)

# the chain at a 4 / b 6: layers a 4 + b 0.1*4*6 + c 0.5*6 = 9.4 us (23.6 at full width), with
# 10*4 + 5*6 + 2*5 = 80 of the 150 output elements; the remainder is 100 - 23.6 = 76.4 us
THIN = {'a.0': [3, 4], 'b.0': [4, 6], 'c': [6, 5]}


def calibrated(ratio):
    d = chain_table()
    for name, elems in (('a.0', 10), ('b.0', 5), ('c', 2)):
        d['layers'][name]['out_elems'] = elems
    d['calibration'] = {'ratio': ratio, 'thin': THIN}
    return d


@pytest.mark.parametrize('ratio,share,scale', [
    (0.694, (1 - 60 / 76.4) / (1 - 80 / 150), 1.0),  # the remainder explains it: scale 1
    (0.45, 1.0, (55 - 76.4 * 70 / 150) / 14.2),  # faster than a fully scaling remainder
    (0.9, 0.0, 10 / 14.2),  # slower than a fixed remainder: layers save less in the model
    (0.01, 1.0, 4.0),  # beyond what any shape explains: clipped, never absurd
])
def test_fit_reproduces_the_measured_ratio(ratio, share, scale):
    d = calibrated(ratio)
    model, gs, pruner = chain(d)
    table = pruner.table
    assert (table.scaled_remainder, table.layer_scale) == pytest.approx((share, scale))
    assert fit_calibration(table, THIN, ratio) == pytest.approx((share, scale))
    if ratio != 0.01:  # the thin copy is predicted as measured
        assert table.predict(gs, widths(gs, a=4, b=6)) == pytest.approx(100 * ratio)
    assert table.predict(gs, widths(gs)) == pytest.approx(100.0)  # full width: the total
    again = LatencyTable.from_dict(table.to_dict())
    assert (again.scaled_remainder, again.layer_scale) == pytest.approx((share, scale))
    # the layer scale applies to each pruning step's saving too
    assert table.saved(gs, widths(gs), 'a.0', 1) == pytest.approx(
        scale * 2.2 + share * 76.4 * 10 / 150)


@pytest.mark.parametrize('share,scale', [(0.3, 1.5), (0.0, 1.0), (1.0, 0.7), (0.6, 3.0)])
def test_two_copies_tell_the_share_from_the_scale(share, scale):
    """Ratios made by a known (share, scale) at half and quarter width are fitted back."""
    quarter = {'a.0': [3, 2], 'b.0': [2, 3], 'c': [3, 5]}
    table = LatencyTable.from_dict(calibrated(0.5))  # any: only its layers are used here

    def ratio(widths):
        us, out = table.sums_at(widths)
        d_frac = (out - table.out_full) / table.out_full
        return 1 + (scale * (us - table.layers_us) + share * 76.4 * d_frac) / 100

    d = calibrated(ratio(THIN))
    d['calibration'].update(quarter=quarter, ratio_quarter=ratio(quarter))
    fitted = LatencyTable.from_dict(d)
    assert (fitted.scaled_remainder, fitted.layer_scale) == pytest.approx((share, scale))
    assert LatencyTable.from_dict(fitted.to_dict()).to_dict() == fitted.to_dict()


def test_layers_explaining_everything_leave_the_scale_to_fit():
    d = calibrated(0.1)
    d['total_us'] = 20.0  # layers 23.6 us: no remainder at all
    table = LatencyTable.from_dict(d)
    assert table.remainder_us == 0 and table.scaled_remainder == 0
    assert table.layer_scale == pytest.approx(0.9 * 20 / 14.2)


@pytest.mark.parametrize('bad,match', [
    ({'ratio': -1, 'thin': THIN}, '`calibration` must be'),
    ({'ratio': 0.5}, '`calibration` must be'),
    ({'ratio': 0.5, 'thin': {'a.0': 4}}, '`calibration` must be'),
    ({'ratio': 0.5, 'thin': THIN, 'quarter': THIN}, '`calibration` must be'),
])
def test_bad_calibration(bad, match):
    with pytest.raises(LatencyTableError, match=match):
        LatencyTable.from_dict(dict(calibrated(0.5), calibration=bad))
    with pytest.raises(LatencyTableError, match='`layer_scale` must lie in'):
        LatencyTable.from_dict(dict(chain_table(), layer_scale=5))


def test_origin_notes_name_what_differs():
    old = {'device': 'cpu: AMD EPYC', 'torch': '2.4.1'}  # written before backends were keyed
    here = {'device': 'cpu: AMD EPYC', 'backend': 'torch', 'backend_version': '2.4.1'}
    assert origin_notes(old, here) == [] and origin_warning(old, here) == ''
    intel = dict(here, device='cpu: Intel(R) Xeon(R) Platinum 8480+')
    assert origin_notes(old, intel) == [
        "device: table 'cpu: AMD EPYC', here 'cpu: Intel(R) Xeon(R) Platinum 8480+'"]
    ort = dict(here, backend='onnxruntime', backend_version='1.32.0',
               provider='CPUExecutionProvider')
    notes = origin_notes(old, ort)
    assert [n.split(':')[0] for n in notes] == ['backend', 'backend_version', 'provider']
    assert 'another machine or runtime' in origin_warning(old, ort)
    assert origin_notes({**old, **ort}, ort) == []


def test_load_warning_only_when_others_took_the_free_cpus():
    cpu = {'device': 'cpu: AMD EPYC', 'threads': 1}
    busy = {'other_cpus': 1.9, 'cpus': 2, 'threads': 1, 'seconds': 300}
    assert 'other processes kept 1.90 of the 2 CPU(s)' in load_warning(cpu, busy)
    assert load_warning(cpu, dict(busy, other_cpus=1.2)) == ''  # one core was left free
    pinned = dict(busy, cpus=1, other_cpus=0.3)  # taskset -c N: no core to spare
    assert 'taskset' in load_warning(cpu, pinned)
    assert load_warning(cpu, dict(pinned, other_cpus=0.2)) == ''
    assert load_warning(cpu, None) == ''  # tables written before it was measured
    assert load_warning({'device': 'cuda: NVIDIA H100'}, busy) == ''
    assert load_warning(dict(cpu, clock='cpu'), busy) == ''  # process CPU time: not preempted
    assert load_warning(cpu, {'other_cpus': 'x'}) == ''  # hand-made: not judged
    assert load_warning(cpu, busy, 'these figures were').startswith(
        'warning: these figures were timed')
    # the table keeps it through save and load
    table = LatencyTable.from_dict(dict(chain_table(), profiled=busy))
    assert LatencyTable.from_dict(table.to_dict()).profiled == busy
    assert 'profiled' not in chain_table()
    assert LatencyTable.from_dict(chain_table()).profiled is None
