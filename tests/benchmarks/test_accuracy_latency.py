"""benchmarks/accuracy_latency.py: every method at the same predicted latency, then timed."""
import json
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
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        AL.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_quick_brings_every_method_to_the_same_predicted_latency(tmp_path):
    try:  # Torch-Pruning is a benchmark-only dependency: without it, the GFP methods only
        import torch_pruning  # noqa: F401
        methods = AL.METHODS
    except ImportError:
        methods = [m for m in AL.METHODS if not m.startswith('tp_')]
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
