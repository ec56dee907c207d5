"""benchmarks/accuracy_latency.py: every method at the same predicted latency, then timed."""
import json
import os
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import accuracy_latency as AL  # noqa: E402  (imports no torch at module level)


@pytest.mark.parametrize('argv, message', [
    (['--target', '1.0'], 'fraction of the latency to keep'),
    (['--rounds', '0'], '--rounds must be a positive integer'),
    (['--baseline', '/nonexistent/iter_2000.pth'], 'does not exist'),
    (['--kd-losses', '{"module": "neck"'], '--kd-losses is not valid JSON'),
    (['--kd-losses', '[]'], 'non-empty JSON list'),
    (['--modelopt-images', '0'], '--modelopt-images must be a positive integer, got 0'),
    (['--modelopt-steps', '-1'], '--modelopt-steps must be a positive integer, got -1'),
    (['--modelopt-score', 'loss'], "invalid choice: 'loss'"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        AL.parse_args(argv)
    assert message in capsys.readouterr().err


def test_missing_modelopt_is_named_with_its_recipe(monkeypatch, capsys, tmp_path):
    import _latency_modelopt as LMO
    for mod in [m for m in sys.modules if m == 'modelopt' or m.startswith('modelopt.')]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, 'modelopt', None)  # blocks the import wherever it is
    monkeypatch.setenv(LMO.ENV, str(tmp_path))
    AL.parse_args(['--methods', 'tp_l1'])  # no ModelOpt needed without the method
    with pytest.raises(SystemExit):
        AL.parse_args(['--methods', 'tp_l1', 'modelopt'])
    err = capsys.readouterr().err
    assert 'pip install --target .venv/modelopt --no-deps' in err
    assert 'leave modelopt out of --methods' in err


def test_modelopt_defaults_and_run_name_follow_its_score():
    a = AL.parse_args(['--methods', 'tp_l1'])
    assert (a.modelopt_score, a.modelopt_images, a.modelopt_steps) == ('agreement', 16, 6)
    b = AL.parse_args(['--methods', 'tp_l1', '--modelopt-score', 'map'])
    assert b.modelopt_images == 64
    assert AL.run_name('modelopt', 1, a) == 'modelopt-agreement16_lat50_s1'
    assert AL.run_name('modelopt', 1, b) == 'modelopt-map64_lat50_s1'
    assert AL.run_name('tp_l1', 1, b) == 'tp_l1_lat50_s1'  # stored runs keep their names


def test_next_flops_takes_the_secant_inside_the_bracket_else_bisects():
    one = [{'flops_target': 0.5, 'predicted': 0.4}]
    assert AL.MO.next_flops(one, 0.5, 0.5, 1.0) == pytest.approx(0.625)  # 0.5 * 0.5 / 0.4
    two = one + [{'flops_target': 0.7, 'predicted': 0.6}]
    assert AL.MO.next_flops(two, 0.5, 0.5, 0.7) == pytest.approx(0.6)  # slope 1
    flat = one + [{'flops_target': 0.7, 'predicted': 0.4}]  # FastNAS gave the same widths
    assert AL.MO.next_flops(flat, 0.5, 0.7, 0.8) == pytest.approx(0.75)


def _modelopt_available() -> bool:
    import _latency_modelopt as LMO
    try:
        LMO.import_modelopt()
        return True
    except LMO.ModelOptMissing:
        return False


@pytest.mark.slow
def test_quick_brings_every_method_to_the_same_predicted_latency(tmp_path):
    """Every method, ModelOpt included where it is installed (``tools/setup_env.sh``)."""
    try:  # Torch-Pruning is a benchmark-only dependency: without it, the GFP methods only
        import torch_pruning  # noqa: F401
        methods = list(AL.METHODS)
    except ImportError:
        methods = [m for m in AL.METHODS if not m.startswith('tp_')]
    if not _modelopt_available():
        methods.remove('modelopt')
    wd, out_json = tmp_path / 'wd', tmp_path / 'out.json'
    argv = ['--quick', '--target', '0.7', '--work-dir', str(wd), '--json', str(out_json),
            '--methods', *methods]
    out = AL.main(argv)
    runs = {r['method']: r for r in out['runs']}
    assert sorted(runs) == sorted(methods)
    for method, r in runs.items():
        assert 'error' not in r, f'{method}: {r.get("error")}'
        assert r['measured'] > 0 and r['measured_ms'] > 0 and 0.0 <= r['mAP'] <= 1.0
        assert osp.isfile(osp.join(r['dir'], 'compact.pth'))
    assert runs['gfp_latency_kd']['info']['kd']['losses'], 'the teacher was not used'
    assert 'kd' not in runs['gfp_latency']['info']
    for method in ('gfp_latency', 'gfp_latency_kd', 'gfp_latency_d1', 'gfp_acts', 'gfp_flops'):
        info = runs[method]['info']
        assert info['target_reached']
        # the hook's prediction on its masks = the table read at the compact module's widths
        assert runs[method]['predicted'] == pytest.approx(info['hook_remaining']['latency'],
                                                          abs=1e-9)
        assert runs[method]['predicted'] <= 0.7
    if 'tp_l1' in runs:
        assert abs(runs['tp_l1']['predicted'] - 0.7) <= AL.QUICK['tol']
    table = json.loads((wd / 'table.json').read_text())
    assert table['key']['batch'] == 1 and table['key']['input_size'] == [128, 128]
    saved = json.loads(out_json.read_text())
    assert [r['method'] for r in saved['rows']] == ['baseline'] + methods
    # a second call reuses the table and every stored run, and times them again
    again = AL.main(argv)
    assert [r['seconds'] for r in again['runs']] == [r['seconds'] for r in out['runs']]
    assert again['table']['total_us'] == out['table']['total_us']
    # another --lr would train every run again over the stored ones: it stops before the
    # baseline evaluation, naming them, and leaves the work dir as it was
    eval_before = (wd / 'baseline_eval.json').read_text()
    with pytest.raises(SystemExit) as e:
        AL.main(argv + ['--lr', '0.123'])
    assert 'would be trained again and replaced' in str(e.value) and '-> 0.123' in str(e.value)
    assert (wd / 'baseline_eval.json').read_text() == eval_before
    if 'modelopt' in runs:
        _check_modelopt(runs['modelopt'], argv)


def _check_modelopt(run: dict, argv: list):
    """The search's record, and a rerun that rebuilds the compact from its stored widths."""
    info = run['info']['modelopt']
    assert info['score_calls'] > 1 and info['search_s'] > 0 and not info['rebuilt']
    assert 1 <= len(info['trials']) <= AL.MO.QUICK['modelopt_steps']
    # the trial closest to the target is kept; on the 2-iteration baseline FastNAS may give
    # the same widths under every constraint (widths whose score does not move are always cut)
    closest = min(info['trials'], key=lambda t: abs(t['predicted'] - 0.7))
    assert run['predicted'] == pytest.approx(closest['predicted'], abs=1e-9)
    assert info['flops_target'] == closest['flops_target']
    assert run['info']['target_reached'] == (abs(run['predicted'] - 0.7) <= AL.QUICK['tol'])
    stored = json.loads(open(osp.join(run['dir'], 'modelopt.json')).read())
    assert stored['subnet_config'] and stored['key']['score'] == 'agreement'
    os.remove(osp.join(run['dir'], 'result.json'))  # the run again, its widths kept
    rebuilt = AL.main(argv + ['--methods', 'modelopt'])['runs'][0]
    assert rebuilt['info']['modelopt']['rebuilt']
    for k in ('flops', 'params', 'predicted'):
        assert rebuilt[k] == pytest.approx(run[k], abs=1e-9)


def test_a_distillation_recipe_gets_its_own_run_folder_and_signature():
    """Two recipes of gfp_latency_kd in one work dir never reuse each other's runs; the
    other methods keep their names and signatures."""
    head = '[{"module": "bbox_head", "type": "sigmoid_kl", "output": 0}]'
    a = AL.parse_args(['--kd-losses', head])
    b = AL.parse_args(['--kd-losses', head, '--kd-during', 'pruning'])
    plain = AL.parse_args([])
    names = {AL.K.run_name('gfp_latency_kd', 0.5, 0, x, 'lat') for x in (a, b, plain)}
    assert len(names) == 3 and all(n.endswith('_lat50_s0') for n in names)
    assert AL.K.run_name('gfp_latency', 0.5, 0, a, 'lat') == 'gfp_latency_lat50_s0'
    assert AL._divisor('gfp_latency_kd') == AL._divisor('gfp_latency') == 'auto'
    assert AL._divisor('gfp_latency_d1') == 1


def test_onnxruntime_backend_has_its_own_table_and_acts_d8_its_divisor():
    a = AL.parse_args(['--methods', 'tp_l1'])
    b = AL.parse_args(['--methods', 'tp_l1', '--backend', 'onnxruntime'])
    assert (a.backend, a.table) == ('torch', AL.TABLE)
    assert (b.backend, b.table) == ('onnxruntime', AL.TABLE_ORT) and AL.TABLE_ORT != AL.TABLE
    assert [AL._divisor(m) for m in ('gfp_latency', 'gfp_acts', 'gfp_acts_d8')] == ['auto', 1, 8]


def test_a_table_of_another_runtime_is_never_overwritten(tmp_path):
    """An eager table given with ``--backend onnxruntime`` stops the run before profiling."""
    with open(osp.join(ROOT, 'benchmarks', 'results', 'latency_tables',
                       'digits_retinanet_r18_cpu_b1_t1_128x128.json')) as f:
        eager = f.read()
    path = tmp_path / 'eager.json'
    path.write_text(eager)
    args = AL.parse_args(['--methods', 'tp_l1', '--backend', 'onnxruntime', '--table',
                          str(path)])
    with pytest.raises(SystemExit, match='is a torch table, not onnxruntime'):
        AL.get_table(None, args, 'unused.pth')
    assert path.read_text() == eager


def test_a_table_the_tool_made_fits_the_config_asked_for(tmp_path, monkeypatch, capsys):
    """tools/profile_latency.py run from the repository root keyed the session-14 ONNX Runtime
    table 'configs/digits/...'; the table this benchmark profiled keys the same config
    'digits/...'. Both fit what the benchmark asks, so neither is profiled again."""
    import mmgfp.apis.latency.profile as P
    from mmgfp.core import LatencyTable
    tool = LatencyTable.load(osp.join(ROOT, 'benchmarks', 'results', 'latency_ort',
                                      'table_digits_retinanet_r18_ort_s14_b1_t1_128x128.json'))
    made = LatencyTable.load(AL.TABLE_ORT)
    assert tool.key['config'] == 'configs/digits/retinanet_r18_fpn_digits.py'
    assert made.key['config'] == 'digits/retinanet_r18_fpn_digits.py'
    assert tool.mismatches(made.key) == {} and made.mismatches(tool.key) == {}
    asked = []

    def profile_config(cfg, config, **kwargs):  # what get_table hands the profiler's cache
        asked.append(config)
        return made, None

    monkeypatch.setattr(P, 'profile_config', profile_config)
    args = AL.parse_args(['--methods', 'tp_l1', '--backend', 'onnxruntime', '--table',
                          str(tmp_path / 'table.json')])
    assert AL.get_table(None, args, 'unused.pth') is made and len(asked) == 1
    assert tool.matches({'config': asked[0]}) and made.matches({'config': asked[0]})
    assert not tool.matches({'config': 'configs/digits/retinanet_r18_fpn_digits_kd.py'})


@pytest.mark.slow
def test_quick_in_onnxruntime_times_the_exported_models(tmp_path):
    """The table profiled in ONNX Runtime, every compact timed there; divisor 8 keeps every
    narrowed conv at a multiple of 8."""
    import torch
    import torch.nn as nn
    wd = tmp_path / 'wd'
    out = AL.main(['--quick', '--target', '0.7', '--work-dir', str(wd), '--backend',
                   'onnxruntime', '--methods', 'gfp_latency', 'gfp_acts_d8'])
    assert out['table']['key']['backend'] == 'onnxruntime'
    assert set(out['timing_ms']) == {'baseline'} | {r['name'] for r in out['runs']}
    runs = {r['method']: r for r in out['runs']}
    for method, r in runs.items():
        assert 'error' not in r, f'{method}: {r.get("error")}'
        assert r['measured'] > 0 and r['info']['target_reached']
    compact = torch.load(osp.join(runs['gfp_acts_d8']['dir'], 'compact.pth'),
                         weights_only=False)
    widths = {n: m.out_channels for n, m in compact.named_modules()
              if isinstance(m, nn.Conv2d) and not n.endswith(('retina_cls', 'retina_reg'))}
    narrowed = {n: c for n, c in widths.items() if c not in (64, 128, 256, 512)}
    assert narrowed and all(c % 8 == 0 for c in narrowed.values()), narrowed
