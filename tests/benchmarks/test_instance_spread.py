"""benchmarks/instance_spread.py: one model built several times in one process, each timed."""
import json
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import instance_spread as IS  # noqa: E402

CONFIG = osp.join(ROOT, 'configs', 'digits', 'resnet18_digits.py')


def test_every_build_is_timed_and_stored(tmp_path, capsys):
    out = tmp_path / 'spread.json'
    medians = IS.main(['--config', CONFIG, '--builds', '2', '--rounds', '2', '--input-size',
                       '32', '32', '--randomize-norms', '--json', str(out)])
    assert len(medians) == 2 and all(m > 0 for m in medians)
    stored = json.loads(out.read_text())
    assert stored['medians_ms'] == medians and stored['args']['randomize_norms'] is True
    said = capsys.readouterr().out
    assert 'build 2/2: median' in said and '2 builds in one process' in said


def test_bad_arguments():
    with pytest.raises(SystemExit):
        IS.main(['--config', CONFIG, '--builds', '1'])
