"""``tools/deploy_pruned.py --measure`` and ``tools/check_model.py --latency`` on a small
ResNet-18 (16 base channels, 32x32 inputs): predicted and measured latency are reported for the
original and the compact model. No timing is asserted beyond positive numbers."""
import json
import os
import os.path as osp

import pytest
import torch

pytest.importorskip('mmpretrain')

pytestmark = pytest.mark.slow

CFG = '''
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
model = dict(backbone=dict(stem_channels=16, base_channels=16),
             head=dict(num_classes=10, in_channels=128))
'''
SIZE = (32, 32)


def synthetic_table(gs):
    """A table whose layer times are c_in * c_out ns (exact under bilinear interpolation), the
    total a quarter more: the prediction is deterministic, whatever load the machine has
    (a real profile of this tiny net is timer noise on a busy CPU)."""
    from mmgfp.apis.latency.timing import make_key
    from mmgfp.core.grouping import layer_io as _io
    from mmgfp.core.latency import FORMAT, timed_layers
    full = {k: g.channels for k, g in gs.groups.items()}.__getitem__
    layers, total = {}, 0.0
    for name in timed_layers(gs):
        cin, cout, _ = _io(gs, name, full)
        if name in gs.passthrough:
            layers[name] = {'width': [1, cout], 'us': [1e-3, cout * 1e-3]}
        else:
            layers[name] = {'in': [1, cin], 'out': [1, cout],
                            'us': [[1e-3, cout * 1e-3], [cin * 1e-3, cin * cout * 1e-3]]}
        total += cin * cout * 1e-3
    key = make_key('cpu', 'fp32', False, 1, 1, SIZE, 'ImageClassifier', 'r18_small.py')
    return {'format': FORMAT, 'key': key, 'total_us': total * 1.25, 'layers': layers}


@pytest.fixture(scope='module')
def pruned(tmp_path_factory):
    """A config, a pruning checkpoint with a random half of every group masked, and a
    latency table for this CPU at batch 1, 32x32, 1 thread (synthetic, see below)."""
    from mmengine.config import Config

    from mmgfp.apis.checking.check import analyze, random_masks, randomize_norms
    from mmgfp.core import FisherPruner, make_spec
    tmp = tmp_path_factory.mktemp('latency_tools')
    config = str(tmp / 'r18_small.py')
    with open(config, 'w') as f:
        f.write(CFG)
    cfg = Config.fromfile(config)
    found = analyze(cfg, input_size=SIZE, batch_size=2, seed=0)
    model, gs = found['model'], found['groups']
    randomize_norms(model, 0)
    pruner = FisherPruner(model, gs)
    random_masks(pruner, 0.5, seed=1)
    ckpt = str(tmp / 'pruned.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {},
                'mmgfp': {'spec': make_spec(pruner.masker)}}, ckpt)
    table = str(tmp / 'table.json')
    with open(table, 'w') as f:
        json.dump(synthetic_table(gs), f)
    return {'config': config, 'ckpt': ckpt, 'table': table, 'tmp': tmp}


def _check_rows(rows, predicted):
    assert [r['model'] for r in rows] == ['original', 'compact']
    for r in rows:
        assert r['measured_ms'] > 0 and r['measured_ratio'] > 0
        assert ('predicted_ms' in r) == predicted
        if predicted:
            assert r['predicted_ms'] > 0 and r['predicted_ratio'] > 0
    assert rows[0]['measured_ratio'] == 1.0
    if predicted:
        assert rows[0]['predicted_ratio'] == 1.0
        assert rows[1]['predicted_ratio'] < 1.0  # half of every group went


def test_deploy_measure_reports_predicted_and_measured(pruned, capsys):
    import tools.deploy_pruned as tool
    out = tool.main([pruned['config'], pruned['ckpt'], '--out-dir',
                     str(pruned['tmp'] / 'compact'), '--latency-table', pruned['table'],
                     '--rounds', '2'])
    assert out['pruned'] == 'yes' and osp.isfile(out['checkpoint'])
    rep = out['latency']
    _check_rows(rep['rows'], predicted=True)
    assert rep['settings']['batch'] == 1 and rep['settings']['input_size'] == list(SIZE)
    assert rep['settings']['threads'] == 1  # the table's settings
    text = capsys.readouterr().out
    assert 'compact: measured' in text and 'predicted' in text and 'ratio error' in text


def test_deploy_measure_without_table_measures_only(pruned, capsys):
    import tools.deploy_pruned as tool
    out = tool.main([pruned['config'], pruned['ckpt'], '--out-dir',
                     str(pruned['tmp'] / 'compact2'), '--measure', '--rounds', '1',
                     '--input-size', *map(str, SIZE), '--threads', '1'])
    _check_rows(out['latency']['rows'], predicted=False)
    assert 'tools/profile_latency.py' in capsys.readouterr().out


def test_table_with_other_settings_is_named(pruned):
    import tools.deploy_pruned as tool
    with pytest.raises(SystemExit, match='batch: table 1, asked 2'):
        tool.main([pruned['config'], pruned['ckpt'], '--out-dir',
                   str(pruned['tmp'] / 'compact3'), '--latency-table', pruned['table'],
                   '--batch', '2'])
    with pytest.raises(SystemExit):
        tool.parse_args([pruned['config'], pruned['ckpt'], '--out-dir', 'x',
                         '--latency-table', str(pruned['tmp'] / 'missing.json')])


def test_check_model_latency_reports_both(pruned, tmp_path, capsys):
    import tools.check_model as tool
    out = tmp_path / 'check.json'
    rc = tool.main([pruned['config'], '--input-size', *map(str, SIZE), '--latency-table',
                    pruned['table'], '--json', str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    _check_rows(rep['latency']['rows'], predicted=True)
    text = capsys.readouterr().out
    assert 'EQUIVALENT' in text and 'compact: measured' in text
    with pytest.raises(SystemExit, match='--latency-table'):
        tool.main([pruned['config'], '--latency-table', str(tmp_path / 'missing.json')])


def test_onnxruntime_timing_and_a_foreign_table_warn(pruned, tmp_path, capsys):
    """--backend onnxruntime times the exported models; a table made on another CPU and in
    another runtime is named in the report's warning (and in the returned dict)."""
    pytest.importorskip('onnxruntime')
    import tools.deploy_pruned as tool
    with open(pruned['table']) as f:
        table = json.load(f)
    table['key']['device'] = 'cpu: a CPU no machine has (test)'
    table['profiled'] = {'other_cpus': 1.9, 'cpus': 2, 'threads': 1, 'seconds': 60}
    foreign = str(tmp_path / 'foreign.json')
    with open(foreign, 'w') as f:
        json.dump(table, f)
    out = tool.main([pruned['config'], pruned['ckpt'], '--out-dir', str(tmp_path / 'c'),
                     '--latency-table', foreign, '--backend', 'onnxruntime', '--rounds', '2'])
    rep = out['latency']
    _check_rows(rep['rows'], predicted=True)
    assert rep['settings']['backend'] == 'onnxruntime'
    assert "device: table 'cpu: a CPU no machine has (test)'" in rep['warning']
    assert "backend: table 'torch', here 'onnxruntime'" in rep['warning']
    # profiled while others kept both CPUs busy; this timing's own load is in the report
    assert 'table was timed while other processes kept 1.90 of the 2 CPU(s)' in rep['warning']
    assert rep['profiled']['cpus'] == len(os.sched_getaffinity(0))
    text = capsys.readouterr().out
    assert 'in onnxruntime' in text and 'warning: the latency table was measured on another' \
        in text
