"""benchmarks/latency_prediction.py: ``--modelopt-spec`` adds ModelOpt's compact as a row.

The argument errors need no model; the row is checked end to end on a small ResNet-18
classifier (stem and base width 32) with an eager table profiled at 32x32 (one round a point),
skipped where ModelOpt is not installed (``tools/setup_env.sh`` puts it in .venv/modelopt).
No assertion depends on how fast this machine is.
"""
import copy
import json
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import _latency_modelopt as LMO  # noqa: E402
import latency_prediction as LP  # noqa: E402
from _small_models import SMALL_CLASSIFIER  # noqa: E402

# the small classifier as a config file (``latency_prediction --config`` takes a path)
SMALL = f"default_scope = 'mmpretrain'\nmodel = {SMALL_CLASSIFIER!r}\n"


def _modelopt_or_skip():
    try:
        return LMO.import_modelopt()
    except LMO.ModelOptMissing as e:
        pytest.skip(f'ModelOpt not installed: {e}')


def _error(capsys, argv):
    with pytest.raises(SystemExit):
        LP.main(['--table', 'unused.json', *argv])
    return capsys.readouterr().err


def test_modelopt_spec_errors_are_named(tmp_path, capsys):
    missing = str(tmp_path / 'resnet50__modelopt.json')
    err = _error(capsys, ['--config', 'resnet50', '--modelopt-spec', missing])
    assert f'--modelopt-spec {missing}: no such file' in err and '--save-specs' in err
    gfp_spec = tmp_path / 'resnet50__latency.json'  # a GFP channel spec, not a subnet
    gfp_spec.write_text(json.dumps({'groups': {}}))
    err = _error(capsys, ['--config', 'resnet50', '--modelopt-spec', str(gfp_spec)])
    assert f'{gfp_spec} is not a ModelOpt subnet file (no "subnet_config" key)' in err
    text = tmp_path / 'notes.json'
    text.write_text('widths: 32')
    err = _error(capsys, ['--config', 'resnet50', '--modelopt-spec', str(text)])
    assert f'{text} is not a ModelOpt subnet file (not JSON' in err
    other = osp.join(ROOT, 'benchmarks', 'results', 'latency_specs', 'resnet50__modelopt.json')
    for config in ('retinanet_r50', 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'):
        err = _error(capsys, ['--config', config, '--modelopt-spec', other])
        assert f'{other} is the subnet of resnet50, not of --config {config}' in err


def test_missing_modelopt_names_the_recipe(tmp_path, capsys, monkeypatch):
    for mod in [m for m in sys.modules if m == 'modelopt' or m.startswith('modelopt.')]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, 'modelopt', None)  # blocks the import wherever it is
    monkeypatch.setenv(LMO.ENV, str(tmp_path))
    spec = tmp_path / 'resnet50__modelopt.json'
    spec.write_text(json.dumps({'subnet_config': {}}))
    err = _error(capsys, ['--config', 'resnet50', '--modelopt-spec', str(spec)])
    assert '--modelopt-spec needs ModelOpt' in err
    assert 'pip install --target .venv/modelopt --no-deps' in err and LMO.ENV in err


def _small_table(cfg_file, path):
    """An eager one-thread table of the small classifier at batch 1, 32x32 (fast, rough)."""
    import _common as C

    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.inputs import demo_batch, loss_forward, tensor_forward
    from mmgfp.apis.latency.profile import profile_latency
    from mmgfp.core import build_groups
    model = build_model(C.load_config(cfg_file))
    groups = build_groups(model.train(), loss_forward(demo_batch(model, 2, (32, 32))))
    table = profile_latency(model.eval(), tensor_forward(demo_batch(model, 1, (32, 32), seed=1)),
                            groups, threads=1, input_size=(32, 32), points=2, rounds=1,
                            warmup=0, align=False, progress=False)
    table.save(path)


def _smallest_subnet(cfg_file, path, score_input='2x3x32x32'):
    """ModelOpt's smallest subnet of the small classifier, stored as latency.py stores one."""
    import _common as C

    from mmgfp.apis.checking.check import build_model
    _, mtn = LMO.import_modelopt()
    model = build_model(C.load_config(cfg_file)).eval()
    _, samples = LMO.score_input(model, 2, (32, 32), 1)
    with LMO._quiet():
        net = mtn.convert(LMO.TensorNet(copy.deepcopy(model), samples), mode='fastnas')
        mtn.sample(net, sample_func=min)
    LMO.save(path, mtn.get_subnet_config(net), {'score_input': score_input, 'search_s': 9.0})


def test_modelopt_row_is_timed_and_predicted(tmp_path, capsys):
    _modelopt_or_skip()
    cfg = tmp_path / 'small_resnet18.py'
    cfg.write_text(SMALL)
    table, spec = str(tmp_path / 'table.json'), str(tmp_path / 'small__modelopt.json')
    _small_table(str(cfg), table)
    _smallest_subnet(str(cfg), spec)
    out = tmp_path / 'rows.json'
    rows = LP.main(['--config', str(cfg), '--table', table, '--modelopt-spec', spec,
                    '--rounds', '1', '--channels-per-step', '64', '--json', str(out)])
    said = capsys.readouterr().out
    assert [r['variant'] for r in rows] == ['original', 'latency, divisor auto',
                                            'acts, divisor 1', 'acts, divisor 8',
                                            LP.MODELOPT_ROW]
    mo = rows[-1]
    assert f'{LP.MODELOPT_ROW}: rebuilt from {spec}' in said and LP.MODELOPT_ROW in said
    assert 0 < mo['predicted_ratio'] < 1 and mo['measured_ms'] > 0
    assert all(r['faults_per_run'] >= 0 for r in rows) and 'allocator: ' in said
    # FLOPs left as an independent counter sees them (the smallest subnet: 32 channels in every
    # width ModelOpt searches, the block outputs stay)
    import _common as C
    from _latency_models import costs

    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.inputs import demo_batch
    model = build_model(C.load_config(str(cfg))).eval()
    x, samples = LMO.score_input(model, 2, (32, 32), 1)
    compact = LMO.rebuild(model, x, samples, LMO.load(spec)['subnet_config'])
    batch = demo_batch(model, 1, (32, 32), seed=3)
    counted = costs(compact, batch)['flops'] / costs(model, batch)['flops']
    assert counted < 0.6 and mo['flops'] == pytest.approx(counted, abs=0.02)
    assert mo['predicted_ms'] == pytest.approx(mo['predicted_ratio'] * rows[0]['predicted_ms'])
    stored = json.loads(out.read_text())
    assert stored['rows'][-1]['variant'] == LP.MODELOPT_ROW
    assert stored['modelopt']['search_s'] == 9.0 and stored['args']['modelopt_spec'] == spec


def test_a_subnet_of_another_model_is_named(tmp_path):
    _modelopt_or_skip()
    import _common as C

    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.inputs import demo_batch, loss_forward
    from mmgfp.core import build_groups
    cfg = tmp_path / 'small_resnet18.py'
    cfg.write_text(SMALL)
    spec = str(tmp_path / 'small__modelopt.json')
    _smallest_subnet(str(cfg), spec)
    deeper = tmp_path / 'small_resnet34.py'  # more blocks: ModelOpt misses their widths
    deeper.write_text(SMALL.replace("'depth': 18", "'depth': 34"))
    model = build_model(C.load_config(str(deeper)))
    groups = build_groups(model.train(), loss_forward(demo_batch(model, 2, (32, 32))))
    stored = LMO.load(spec)
    with pytest.raises(ValueError, match=rf'--modelopt-spec {spec} does not fit the model of '
                       rf'--config {deeper} \(ModelOpt: RuntimeError: .*another model'):
        LP.modelopt_variant(model, groups, None, stored, spec, str(deeper))
    small = build_model(C.load_config(str(cfg)))
    stored['subnet_config']['model.neck.out_channels'] = 10  # a key the model lacks
    with pytest.raises(ValueError, match='Unexpected keys in config for: model.neck'):
        LP.modelopt_variant(small, groups, None, stored, spec, str(cfg))
