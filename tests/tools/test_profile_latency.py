"""tools/profile_latency.py: argument checks, a small real run, and reuse of its output."""
import json
import os.path as osp
from pathlib import Path

import pytest

import tools.profile_latency as tool

CFG = '''
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
model = dict(backbone=dict(stem_channels=16, base_channels=16),
             head=dict(num_classes=10, in_channels=128))
custom_hooks = [dict(type='FisherPruningHook', skip=['backbone.layer4.*'])]
'''


@pytest.mark.parametrize('argv,words', [
    (['--batch', '0'], '--batch must be >= 1'),
    (['--threads', '0'], '--threads must be >= 1'),
    (['--input-size', '0', '32'], '--input-size must be positive'),
    (['--dtype', 'int8'], "invalid choice: 'int8'"),
    (['--group-rounds', '3'], '--group-rounds needs --calibrate-groups'),
    (['--calibrate-groups', '--group-rounds', '0'], '--group-rounds must be >= 1'),
    (['--export-point', 'p.json'], '--export-point POINT.json goes with --plan-in PLAN.json'),
    (['--plan-in', 'p.json', '--calibrate-on', 's.json', '--export-point', 'q.json'],
     'or --export-point POINT.json, one of them'),
])
def test_bad_arguments(argv, words, capsys):
    with pytest.raises(SystemExit):
        tool.parse_args(['cfg.py', '--out', 't.json'] + argv)
    assert words in capsys.readouterr().err


def test_missing_files_are_named(tmp_path):
    with pytest.raises(SystemExit, match='config no/such.py does not exist'):
        tool.main(['no/such.py', '--out', str(tmp_path / 't.json')])
    cfg = tmp_path / 'r18.py'
    cfg.write_text(CFG)
    with pytest.raises(SystemExit, match='checkpoint nope.pth does not exist'):
        tool.main([str(cfg), '--out', str(tmp_path / 't.json'), '--checkpoint', 'nope.pth'])
    with pytest.raises(SystemExit, match="`device` must be 'cpu' or 'cuda"):
        tool.main([str(cfg), '--out', str(tmp_path / 't.json'), '--device', 'tpu'])


@pytest.mark.slow
def test_profile_then_reuse(tmp_path, capsys):
    cfg = tmp_path / 'r18.py'
    cfg.write_text(CFG)
    out = str(tmp_path / 'table.json')
    argv = [str(cfg), '--input-size', '32', '32', '--threads', '1', '--points', '2',
            '--rounds', '1', '--no-align', '--out', out]
    assert tool.main(argv) == 0
    printed = capsys.readouterr()
    assert f'wrote {out}' in printed.out and 'alignment found: 1:' in printed.out
    assert "of the rest shrinks with the layers' outputs" in printed.out
    table = json.loads(Path(out).read_text())
    assert table['key']['input_size'] == [32, 32] and table['key']['threads'] == 1
    assert table['key']['config'] == str(cfg)
    # the hook's skip patterns hold: layer4's groups are never pruned, so it is not profiled
    assert not [n for n in table['layers'] if n.startswith('backbone.layer4.')]
    assert 'backbone.layer3.0.conv1' in table['layers']
    mtime = osp.getmtime(out)
    assert tool.main(argv) == 0
    printed = capsys.readouterr()
    assert 'reusing' in printed.err and osp.getmtime(out) == mtime
    assert 'no group calibration (--calibrate-groups adds one)' in printed.out
    # asked for group factors, the cached table gets them added (its layers kept)
    assert tool.main(argv + ['--calibrate-groups', '--group-rounds', '1']) == 0
    printed = capsys.readouterr()
    assert 'has no group calibration: adding it' in printed.err
    assert 'groups calibrated: factors' in printed.out
    grouped = json.loads(Path(out).read_text())
    assert grouped['layers'] == table['layers'] and grouped['group_calibration']['groups']


def test_export_plan_writes_what_the_runner_needs(tmp_path, capsys):
    cfg = tmp_path / 'r18.py'
    cfg.write_text(CFG)
    plan_path = tmp_path / 'plan.json'
    assert tool.main([str(cfg), '--input-size', '32', '32', '--export-plan',
                      str(plan_path)]) == 0
    assert 'runner.py' in capsys.readouterr().out
    plan = json.loads(plan_path.read_text())
    assert plan['format'] == 'mmgfp-latency-plan/1' and plan['key']['input_size'] == [32, 32]
    assert not [n for n in plan['layers'] if n.startswith('backbone.layer4.')]  # hook's skip
    conv = plan['layers']['backbone.layer3.0.conv1']
    assert conv['block']['op'] == 'Conv2d' and conv['block']['norm'] == {'type': 'BatchNorm'}
    assert conv['block']['act'] == 'ReLU' and conv['calls'] == [[[1, 32, 4, 4], 1]]
    assert set(plan['calibration']['quarter']) == set(plan['layers'])
    for f in ('full', 'thin', 'quarter', 'full_onnx', 'thin_onnx', 'quarter_onnx'):
        assert osp.isfile(tmp_path / plan['models'][f])
    assert 'groups' not in plan  # without --calibrate-groups
    with pytest.raises(SystemExit):  # a plan or a table, not both
        tool.parse_args([str(cfg), '--out', 't.json', '--export-plan', 'p.json'])


def _hand_table(cfg, path):
    """A bilinear table (t = in * out us) of the config's timed layers and a half-width spec."""
    from mmgfp.apis.checking.check import load_config
    from mmgfp.apis.latency.profile import config_model
    from mmgfp.core import ChannelMasker, make_spec
    from mmgfp.core.latency import FORMAT, timed_layers
    from mmgfp.core.latency_calib import module_widths
    model, gs, _ = config_model(load_config(str(cfg)), 1, (32, 32))
    layers = {n: {'in': [1, i], 'out': [1, o], 'us': [[1, o], [i, i * o]]} for n, (i, o) in
              module_widths(model, timed_layers(gs)).items()}
    key = {'device': 'cpu: test', 'dtype': 'fp32', 'channels_last': False, 'batch': 1,
           'threads': 1, 'input_size': [32, 32], 'model': type(model).__name__,
           'backend': 'torch'}
    total = 2 * sum(e['us'][1][1] for e in layers.values())
    Path(path).write_text(json.dumps({'format': FORMAT, 'key': key, 'total_us': total,
                                      'layers': layers}))
    masker = ChannelMasker(model, gs)
    for g in gs.prunable:
        for unit in range(g.units // 2, g.units):
            masker.prune(g.key, unit)
    return make_spec(masker)


def test_calibrate_on_adds_the_measured_compact(tmp_path, capsys):
    from mmgfp.core import LatencyTable
    from mmgfp.core.spec import save_spec
    cfg = tmp_path / 'r18.py'
    cfg.write_text(CFG)
    table_in, spec, out = (str(tmp_path / f) for f in ('t.json', 'channels.json', 't2.json'))
    save_spec(_hand_table(cfg, table_in), spec)
    argv = [str(cfg), '--table-in', table_in, '--calibrate-on', str(tmp_path),  # deploy dir
            '--point-rounds', '1', '--out', out]
    assert tool.main(argv) == 0
    said = capsys.readouterr().out
    assert 'compact measured' in said
    assert "warning: the latency table was measured on another machine or runtime (device: " \
        "table 'cpu: test'" in said  # the hand-made table's device
    table = LatencyTable.load(out)
    assert len(table.points) == 1 and table.points[0]['ratio'] > 0
    widths = table.points[0]['widths']
    assert widths['backbone.layer3.0.conv1'][1] < table.layers['backbone.layer3.0.conv1'].full[1]
    assert LatencyTable.load(table_in).points is None  # --table-in is left as it was
    other = json.loads(Path(table_in).read_text())
    other['key']['model'] = 'RetinaNet'
    Path(table_in).write_text(json.dumps(other))
    with pytest.raises(SystemExit, match='the latency table is for a RetinaNet, but the model '
                       'is a ImageClassifier'):
        tool.main(argv)
    with pytest.raises(SystemExit, match='error: nope.json does not exist'):  # a spec file
        tool.main(argv[:3] + ['--calibrate-on', 'nope.json', '--out', out])
    with pytest.raises(SystemExit):
        tool.parse_args([str(cfg), '--calibrate-on', spec, '--out', out])
    assert '--calibrate-on SPEC.json and --table-in TABLE.json go together' in \
        capsys.readouterr().err


def test_export_plan_with_groups_and_a_point_for_it(tmp_path, capsys):
    """--export-plan --calibrate-groups writes every prunable group alone at half width;
    --plan-in + --calibrate-on + --export-point the compact for runner.py --add-point (layers
    2 to 4 skipped: few groups to export)."""
    from mmgfp.apis.latency.runner import plan_id
    from mmgfp.core.spec import save_spec
    cfg = tmp_path / 'r18.py'
    cfg.write_text(CFG.replace("skip=['backbone.layer4.*']",
                               "skip=['backbone.layer[234].*']"))
    plan_path, spec, point_path = (str(tmp_path / f) for f in ('plan.json', 'channels.json',
                                                               'point.json'))
    assert tool.main([str(cfg), '--input-size', '32', '32', '--export-plan', plan_path,
                      '--calibrate-groups', '--group-rounds', '3']) == 0
    said = capsys.readouterr()
    assert '3 paired rounds each' in said.out and 'exported 1/' in said.err  # progress
    plan = json.loads(Path(plan_path).read_text())
    groups = plan['groups']
    assert groups['rounds'] == 3 and sorted(groups['layers']) == sorted(plan['layers'])
    keys = [g['key'] for g in groups['models']]
    assert 'backbone.layer1.0.conv1' in keys and not [k for k in keys if 'layer2' in k]
    for g in groups['models']:
        assert 0 < g['kept'] < g['channels'] and g['weightless']
        assert osp.isfile(tmp_path / g['pt']) and osp.isfile(tmp_path / g['onnx'])
    save_spec(_hand_table(cfg, str(tmp_path / 't.json')), spec)
    argv = [str(cfg), '--plan-in', plan_path, '--calibrate-on', spec, '--export-point',
            point_path]
    assert tool.main(argv) == 0
    assert '--add-point ' + point_path in capsys.readouterr().out
    point = json.loads(Path(point_path).read_text())
    assert point['plan']['id'] == plan_id(plan) and point['plan']['input_size'] == [32, 32]
    assert set(point['widths']) == set(plan['layers'])
    conv = point['widths']['backbone.layer1.0.conv1']
    assert conv[1] < plan['layers']['backbone.layer1.0.conv1']['axes']['out']  # half width
    assert osp.isfile(tmp_path / point['pt']) and osp.isfile(tmp_path / point['onnx'])
    plan['key']['model'] = 'RetinaNet'
    Path(plan_path).write_text(json.dumps(plan))
    with pytest.raises(SystemExit, match=r'the plan is for a RetinaNet .* but the model is a '
                       r'ImageClassifier'):
        tool.main(argv)
    with pytest.raises(SystemExit, match='error: not a latency plan'):
        tool.main(argv[:2] + [spec] + argv[3:])  # the spec given as the plan
    with pytest.raises(SystemExit):
        tool.parse_args([str(cfg), '--plan-in', plan_path, '--export-point', point_path])
    assert '--export-point POINT.json goes with --plan-in PLAN.json and --calibrate-on' in \
        capsys.readouterr().err
