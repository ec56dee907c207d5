"""A latency plan, measured by the self-contained runner in a process without OpenMMLab or
mmgfp, and ONNX Runtime tables: the tables have the shape of a locally profiled one and prune
the same model; a plan's group factors and measured compacts load as the profiler's do. Toy
nets at 8x8, a few widths: no assertion depends on this machine's speed."""
import importlib.util
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
from mmgfp.apis.latency.plan import narrowed, write_plan  # noqa: E402
from mmgfp.apis.latency.point_calib import write_point  # noqa: E402
from mmgfp.apis.latency.profile import profile_latency  # noqa: E402
from mmgfp.apis.latency.timing import threads_set  # noqa: E402
from mmgfp.core import FisherPruner, LatencyTable, LatencyTableError  # noqa: E402
from mmgfp.core.latency_calib import module_widths  # noqa: E402

FAST = dict(points=2, rounds=1, warmup=0, tol=0.1, max_points=3, align=False)
BLOCKED = ['mmgfp', 'mmengine', 'mmcv', 'mmdet', 'mmpretrain']


def run_isolated(args, cwd):
    """runner.py and weightless.py copied alone to ``cwd`` and run with ``python -I`` (no
    PYTHONPATH, no user site) and the OpenMMLab packages and mmgfp made unimportable."""
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


def test_runner_refuses_what_it_cannot_time(tmp_path, capsys):
    with pytest.raises(ValueError, match='onnxruntime backend times fp32'):
        runner.Backend('onnxruntime', dtype='fp16')
    with pytest.raises(ValueError, match="`backend` must be 'torch' or 'onnxruntime'"):
        runner.Backend('tensorrt')
    with pytest.raises(ValueError, match='not a latency plan'):
        runner.run_plan({'format': 'x'}, str(tmp_path), runner.Backend())
    with pytest.raises(SystemExit):
        runner.parse_args(['plan.json', '--out', 't.json', '--add-point', 'p.json'])
    assert '--add-point POINT.json and --table TABLE.json go together' in capsys.readouterr().err
    (tmp_path / 'p.json').write_text('{}')
    with pytest.raises(SystemExit, match='error: table nope.json does not exist'):
        runner.main([str(tmp_path / 'p.json'), '--out', 't.json', '--table', 'nope.json',
                     '--add-point', 'p.json'])


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


def _plan_with_groups_and_point(tmp_path, groups=True):
    """A residual toy's plan (with its groups), and a point of its compact (every group at one
    unit) in ``tmp_path/pt``."""
    model, x = make('residual'), inputs(1)
    gs = groups_of(model, x)
    key = {'batch': 1, 'input_size': [8, 8], 'model': type(model).__name__, 'config': 'res'}
    plan = write_plan(str(tmp_path / 'plan.json'), model, lambda m: m(x), gs, key, FAST,
                      calibrate_groups=groups, group_rounds=2)
    compact = narrowed(model, gs, {g.key: 1 for g in gs.prunable})
    (tmp_path / 'pt').mkdir()
    write_point(str(tmp_path / 'pt' / 'point.json'), plan, model, gs, compact, lambda m: m(x))
    return json.loads((tmp_path / 'plan.json').read_text()), model, gs, compact


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


def _check_point(table: LatencyTable, compact):
    """``table``'s one point is ``compact`` and the table predicts it as measured."""
    assert len(table.points) == 1
    point = table.points[0]
    assert point['widths'] == {n: list(map(float, w)) for n, w in
                               module_widths(compact, table.layers).items()}
    raw = table.predict_widths(point['widths'], raw=True) / table.total_us
    now = table.predict_module(compact) / table.total_us
    assert min(raw, point['ratio']) - 1e-9 <= now <= max(raw, point['ratio']) + 1e-9
    exact = LatencyTable.from_dict({**table.to_dict(), 'points': [
        {'widths': point['widths'], 'ratio': point['ratio']}]})
    if 0 < 1 - raw < 1 and 0.25 <= (1 - point['ratio']) / (1 - raw) <= 4:  # not clipped
        assert exact.predict_module(compact) / table.total_us == pytest.approx(point['ratio'])


def test_plan_groups_through_the_isolated_runner(tmp_path):
    """Group factors for a plan-made table, by runner.py without mmgfp: the table loads here
    with them, in the format the profiler writes."""
    plan, model, gs, _ = _plan_with_groups_and_point(tmp_path)
    assert plan['format'] == 'mmgfp-latency-plan/2'  # a runner without groups refuses it
    assert [g['key'] for g in plan['groups']['models']] == [g.key for g in gs.prunable]
    for g in plan['groups']['models']:
        assert osp.isfile(tmp_path / g['pt']) and osp.isfile(tmp_path / g['onnx'])
    done = run_isolated(['plan.json', '--out', 'table.json', '--threads', '1'], tmp_path)
    assert f'group {len(gs.prunable)}/{len(gs.prunable)}' in done.stderr
    assert f'{len(gs.prunable)} groups calibrated' in done.stdout
    table = LatencyTable.load(str(tmp_path / 'table.json'))
    _check_groups(table, model, gs)
    assert table.points is None
    assert table.profiled['threads'] == 1 and 'other processes kept' in done.stderr
    with pytest.raises(ValueError, match='does not match its content'):
        runner.run_plan(dict(plan, groups=None), str(tmp_path), runner.Backend())
    with pytest.raises(ValueError, match='copy the runner.py'):
        runner.run_plan(dict(plan, format='mmgfp-latency-plan/3'), str(tmp_path),
                        runner.Backend())


def test_a_point_through_the_isolated_runner(tmp_path):
    """A compact exported here, timed by runner.py without mmgfp in the runtime of a table
    made from the plan (its flags read from the table), added as the profiler adds one."""
    plan, _, gs, compact = _plan_with_groups_and_point(tmp_path, groups=False)
    assert 'groups' not in plan
    with threads_set(1):
        table = runner.run_plan(plan, str(tmp_path), runner.Backend(threads=1))
    (tmp_path / 'table.json').write_text(json.dumps(table))
    done = run_isolated(['plan.json', '--table', 'table.json', '--add-point', 'pt/point.json',
                         '--point-rounds', '5', '--out', 'table2.json'], tmp_path)
    assert 'compact measured' in done.stderr and '1 measured point(s)' in done.stdout
    table2 = LatencyTable.load(str(tmp_path / 'table2.json'))
    assert table2.to_dict()['layers'] == LatencyTable.from_dict(table).to_dict()['layers']
    assert table2.key == table['key'] and table2.group_calibration is None
    _check_point(table2, compact)


def test_plan_groups_and_a_point_in_onnxruntime(tmp_path):
    pytest.importorskip('onnxruntime')
    plan, model, gs, compact = _plan_with_groups_and_point(tmp_path)
    run = runner.Backend('onnxruntime', threads=1)
    point = json.loads((tmp_path / 'pt' / 'point.json').read_text())
    with threads_set(1):
        table = runner.run_plan(plan, str(tmp_path), run)
        table = runner.add_point(plan, str(tmp_path), table, point, str(tmp_path / 'pt'),
                                 run, rounds=5)
    table = LatencyTable.from_dict(table)
    assert table.key['backend'] == 'onnxruntime' and table.key['clock'] == 'cpu'
    _check_groups(table, model, gs)
    _check_point(table, compact)


def test_a_point_of_another_plan_or_a_table_of_another_runtime_is_refused(tmp_path):
    """Checked before anything is timed: the tables here are keys and layer names only."""
    plan, model, gs, compact = _plan_with_groups_and_point(tmp_path)
    point = json.loads((tmp_path / 'pt' / 'point.json').read_text())
    run = runner.Backend(threads=1)
    table = {'key': runner.table_key(plan, run), 'layers': dict.fromkeys(plan['layers'])}

    def add(plan=plan, table=table, point=point, run=run):
        runner.add_point(plan, str(tmp_path), table, point, str(tmp_path / 'pt'), run)

    other = {**plan, 'key': {**plan['key'], 'input_size': [16, 16]}}
    with pytest.raises(ValueError, match=r"the point was exported for another plan \(model "
                       r"'Residual', config 'res', batch 1, input_size \[8, 8\]; .*\), not for "
                       r'this one \(.*input_size \[16, 16\].*--export-point'):
        add(plan=other, table={**table, 'key': runner.table_key(other, run)})
    with pytest.raises(ValueError, match='not a latency point'):
        add(point={'widths': point['widths']})
    if importlib.util.find_spec('onnxruntime') is not None:  # an optional extra
        with pytest.raises(ValueError, match=r"in this runtime on this device \(backend: "
                           r"table 'torch', here 'onnxruntime'.*run --add-point on the device"):
            add(run=runner.Backend('onnxruntime', threads=1))
    moved = {**table, 'key': {**table['key'], 'device': 'cuda: H100'}}
    with pytest.raises(ValueError, match=r"device: table 'cuda: H100', here 'cpu: "):
        add(table=moved)
    with pytest.raises(ValueError, match="layers: the table's are not the plan's"):
        add(table={**table, 'layers': {'stem.0': None}})
    # on the training machine: a plan of another model, or a compact wider than the plan
    chain, x = make('chain'), inputs(1)
    with pytest.raises(LatencyTableError, match=r'the plan is for a Residual \(res\) timing '
                       r'\d+ layers, but the model is a Chain'):
        write_point(str(tmp_path / 'c.json'), plan, chain, groups_of(chain, x), chain,
                    lambda m: m(x))
    narrow = json.loads(json.dumps(plan))
    narrow['layers']['head']['axes']['in'] = 2
    with pytest.raises(LatencyTableError, match=r"layer 'head' is \[8, 4\] wide, wider than "
                       r"the plan's \[2, 4\]"):
        write_point(str(tmp_path / 'w.json'), narrow, model, gs, model, lambda m: m(x))


def test_the_runtime_records_the_threads_that_run():
    """Without --threads the runner runs (and keys) torch's thread count, so a table made
    pinned to one core and its --add-point agree on the thread count and the clock."""
    import torch
    args = runner.parse_args(['plan.json', '--out', 't.json'])
    assert runner.runtime(args).threads == torch.get_num_threads()
    args = runner.parse_args(['plan.json', '--out', 't.json', '--threads', '3'])
    assert runner.runtime(args).threads == 3
    key = {'backend': 'torch', 'device': 'cpu: x', 'threads': 2}
    args = runner.parse_args(['plan.json', '--out', 't.json', '--table', 't0.json',
                              '--add-point', 'p.json'])
    assert runner.runtime(args, key).threads == 2  # the table's


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / 'plan.json'
    bad.write_text('{"format": ')
    with pytest.raises(SystemExit, match=r'error: plan .*plan.json is not JSON'):
        runner.main([str(bad), '--out', str(tmp_path / 't.json')])
    bad.write_text('[1, 2]')
    with pytest.raises(SystemExit, match=r'plan .*plan.json holds a list, not a plan'):
        runner.main([str(bad), '--out', str(tmp_path / 't.json')])
