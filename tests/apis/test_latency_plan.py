"""A latency plan, measured by the self-contained runner in a process without OpenMMLab or
mmgfp, and ONNX Runtime tables: the tables have the shape of a locally profiled one and prune
the same model; a plan's group factors load as the profiler's do. Toy
nets at 8x8, a few widths: no assertion depends on this machine's speed."""
import json
import os.path as osp
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'core'))
from core_toys import groups_of, inputs, make  # noqa: E402
from mmgfp.apis.latency import runner, weightless  # noqa: E402
from mmgfp.apis.latency.group_calib import half_one_group, with_groups  # noqa: E402
from mmgfp.apis.latency.plan import write_plan  # noqa: E402
from mmgfp.apis.latency.profile import profile_latency  # noqa: E402
from mmgfp.apis.latency.timing import threads_set  # noqa: E402
from mmgfp.core import FisherPruner, LatencyTable  # noqa: E402

FAST = dict(points=2, rounds=1, warmup=0, tol=0.1, max_points=3, align=False)
BLOCKED = ['mmgfp', 'mmengine', 'mmcv', 'mmdet', 'mmpretrain']


def run_isolated(args, cwd):
    """runner.py and weightless.py copied alone to ``cwd`` and run with ``python -I`` (no PYTHONPATH, no user
    site) and the OpenMMLab packages and mmgfp made unimportable."""
    shutil.copy(runner.__file__, cwd / 'runner.py')
    shutil.copy(weightless.__file__, cwd / 'weightless.py')
    code = (f'import sys; sys.modules.update(dict.fromkeys({BLOCKED!r})); '
            f'sys.argv = ["runner.py"] + {list(args)!r}; import runpy; '
            'runpy.run_path("runner.py", run_name="__main__")')
    done = subprocess.run([sys.executable, '-I', '-c', code], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={'PATH': '/usr/bin:/bin'})
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _same_shape(a: LatencyTable, b: LatencyTable):
    assert sorted(a.layers) == sorted(b.layers)
    for name, lay in a.layers.items():
        other = b.layers[name]
        assert len(lay.axes) == len(other.axes) and lay.full == other.full
        assert lay.out_elems == other.out_elems
    assert a.calibration['thin'] == b.calibration['thin']
    assert a.calibration['quarter'] == b.calibration['quarter']


@pytest.mark.parametrize('name', ['depthwise'])
def test_plan_runner_table_matches_a_local_one(name, tmp_path):
    model, x = make(name), inputs(1)
    gs = groups_of(model, x)
    key = {'batch': 1, 'input_size': [8, 8], 'model': type(model).__name__, 'config': name}
    plan = write_plan(str(tmp_path / 'plan.json'), model, lambda m: m(x), gs, key, FAST)
    assert {'full', 'thin', 'quarter', 'quarter_onnx'} <= set(plan['models'])
    run_isolated(['plan.json', '--out', 'table.json', '--threads', '1'], tmp_path)
    with open(tmp_path / 'table.json') as f:
        remote = LatencyTable.from_dict(json.load(f))
    local = profile_latency(make(name), lambda m: m(x), gs, threads=1, input_size=(8, 8),
                            config=name, progress=False, **FAST)
    _same_shape(local, remote)
    for field in ('device', 'backend', 'batch', 'input_size', 'threads', 'model'):
        assert remote.key[field] == local.key[field], field
    assert 0 < remote.calibration['ratio'] and 0 <= remote.scaled_remainder <= 1
    remote.check_groups(gs)
    pruner = FisherPruner(model, gs, delta='latency', divisor='auto', latency_table=remote)
    assert pruner.remaining()['latency'] == 1.0


def test_onnxruntime_tables_here_and_from_a_plan(tmp_path):
    ort = pytest.importorskip('onnxruntime')
    model, x = make('depthwise'), inputs(1)
    gs = groups_of(model, x)
    local = profile_latency(model, lambda m: m(x), gs, threads=1, input_size=(8, 8),
                            progress=False, backend='onnxruntime', opt_level='extended', **FAST)
    assert local.key['backend'] == 'onnxruntime' and local.key['provider'] == \
        'CPUExecutionProvider'
    assert local.key['backend_version'] == ort.__version__
    assert local.key['graph_optimization'] == 'extended'
    key = {'batch': 1, 'input_size': [8, 8], 'model': 'x', 'config': 'x'}
    write_plan(str(tmp_path / 'plan.json'), make('depthwise'), lambda m: m(x), gs, key, FAST)
    run_isolated(['plan.json', '--out', 'ort.json', '--threads', '1', '--backend',
                  'onnxruntime'], tmp_path)
    with open(tmp_path / 'ort.json') as f:
        remote = LatencyTable.from_dict(json.load(f))
    _same_shape(local, remote)
    assert remote.key['backend'] == 'onnxruntime' and remote.total_us > 0


def test_runner_refuses_what_it_cannot_time(tmp_path):
    with pytest.raises(ValueError, match='onnxruntime backend times fp32'):
        runner.Backend('onnxruntime', dtype='fp16')
    with pytest.raises(ValueError, match="`backend` must be 'torch' or 'onnxruntime'"):
        runner.Backend('tensorrt')
    with pytest.raises(ValueError, match='not a latency plan'):
        runner.run_plan({'format': 'x'}, str(tmp_path), runner.Backend())


def test_runtime_block_size_is_the_least_alignment():
    """ONNX Runtime's CPU block size floors the probed alignment of wide enough layers."""
    def smooth(cin, cout, fresh=False):
        return float(cin * cout)

    wide = {'in': 64, 'unit_in': None, 'out': 64, 'unit_out': 1}
    entry = runner.profile_entry(wide, smooth, 5, 0.1, 9, True, min_align=8)
    assert entry['align'] == 8 and all(w % 8 == 0 for w in entry['out'])
    assert runner.profile_entry(wide, smooth, 5, 0.1, 9, True)['align'] == 1
    narrow = {'width': 12, 'unit': 1}  # under twice the block: left as probed
    assert runner.profile_entry(narrow, smooth, 3, 0.1, 5, True, min_align=8)['align'] == 1
    assert runner.cpu_block() in (8, 16)


def _plan_with_groups(tmp_path):
    """A residual toy's plan with its groups."""
    model, x = make('residual'), inputs(1)
    gs = groups_of(model, x)
    key = {'batch': 1, 'input_size': [8, 8], 'model': type(model).__name__, 'config': 'res'}
    write_plan(str(tmp_path / 'plan.json'), model, lambda m: m(x), gs, key, FAST,
               calibrate_groups=True, group_rounds=2)
    return json.loads((tmp_path / 'plan.json').read_text()), model, gs


def _check_groups(table: LatencyTable, model, gs):
    """``table``'s group calibration is what the in-process one stores (with_groups)."""
    measured = table.group_calibration['groups']
    assert sorted(measured) == sorted(g.key for g in gs.prunable)
    assert sorted(table.group_factors) == sorted(measured)  # fitted for every group
    for key, g in measured.items():
        kept = half_one_group(model, gs, key)[1] * gs.groups[key].block
        assert (g['channels'], g['kept']) == (gs.groups[key].channels, kept)
        assert g['ratio'] > 0 and g['se'] >= 0
    plain = LatencyTable.from_dict({k: v for k, v in table.to_dict().items()
                                    if k != 'group_calibration'})
    local = with_groups(plain, gs, measured)
    assert local.group_calibration == table.group_calibration
    assert local.group_factors == table.group_factors


def test_plan_groups_through_the_isolated_runner(tmp_path):
    """Group factors for a plan-made table, by runner.py without mmgfp: the table loads here
    with them, in the format the profiler writes."""
    plan, model, gs = _plan_with_groups(tmp_path)
    assert [g['key'] for g in plan['groups']['models']] == [g.key for g in gs.prunable]
    for g in plan['groups']['models']:
        assert osp.isfile(tmp_path / g['pt']) and osp.isfile(tmp_path / g['onnx'])
    done = run_isolated(['plan.json', '--out', 'table.json', '--threads', '1'], tmp_path)
    assert f'group {len(gs.prunable)}/{len(gs.prunable)}' in done.stderr
    assert f'{len(gs.prunable)} groups calibrated' in done.stdout
    table = LatencyTable.load(str(tmp_path / 'table.json'))
    _check_groups(table, model, gs)
    assert table.points is None


def test_plan_groups_in_onnxruntime(tmp_path):
    pytest.importorskip('onnxruntime')
    plan, model, gs = _plan_with_groups(tmp_path)
    with threads_set(1):
        table = runner.run_plan(plan, str(tmp_path), runner.Backend('onnxruntime', threads=1))
    table = LatencyTable.from_dict(table)
    assert table.key['backend'] == 'onnxruntime' and table.key['clock'] == 'cpu'
    _check_groups(table, model, gs)
