"""benchmarks/accuracy_collect.py: one table from stored runs of several work dirs."""
import json
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import accuracy_collect as AC  # noqa: E402


def _run(tmp_path, folder, seed, mAP, **extra):
    d = tmp_path / folder
    d.mkdir(parents=True)
    r = dict(method='m', seed=seed, target=0.3, flops=0.3, mAP=mAP, info={}, **extra)
    (d / 'result.json').write_text(json.dumps(r))


def test_rows_pair_by_seed_and_skip_failed_runs(tmp_path, capsys):
    for s, v in enumerate((0.70, 0.72, 0.74)):
        _run(tmp_path, f'a/runs/x_t30_s{s}', s, v)
    _run(tmp_path, 'b/runs/y-1234abcd_t30_s0', 0, 0.75)
    _run(tmp_path, 'b/runs/y-1234abcd_t30_s2', 2, 0.73)
    _run(tmp_path, 'b/runs/y-1234abcd_t30_s1', 1, 0.0, error='boom')
    out = tmp_path / 'rows.json'
    assert AC.main(['--ref', 'plain', f'plain={tmp_path}/a/runs/x_t30_s*',
                    f'kd={tmp_path}/b/runs/y*_t30_s*', '--json', str(out)]) == 0
    rows = {r['label']: r for r in json.loads(out.read_text())['rows']}
    assert rows['plain']['mean'] == pytest.approx(0.72)
    assert rows['plain']['std'] == pytest.approx(0.02)
    assert rows['kd']['seeds'] == [0, 2]  # the failed seed 1 is left out
    assert rows['kd']['paired'] == {'0': pytest.approx(0.05), '2': pytest.approx(-0.01)}
    assert '+0.050 / -0.010' in capsys.readouterr().out


def test_bad_rows_are_refused():
    with pytest.raises(SystemExit):
        AC.parse_args(['no-equals-sign'])
    with pytest.raises(SystemExit):
        AC.parse_args(['--ref', 'other', 'a=x*'])
