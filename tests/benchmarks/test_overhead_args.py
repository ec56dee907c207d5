"""benchmarks/overhead.py: its distillation options fail before any model is built."""
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import overhead  # noqa: E402

HEAD = '[{"module": "bbox_head", "type": "sigmoid_kl", "output": 0}]'


@pytest.mark.parametrize('argv, message', [
    (['--distill', '--distill-losses', '[{"module": "neck"'], 'not valid JSON'),
    (['--distill', '--distill-losses', '[]'], 'non-empty JSON list'),
    (['--distill-losses', HEAD], 'give --distill too'),
])
def test_bad_distillation_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        overhead.main(argv)
    assert message in capsys.readouterr().err


def test_the_losses_reach_the_hook():
    assert overhead._losses(HEAD) == [{'module': 'bbox_head', 'type': 'sigmoid_kl',
                                       'output': 0}]
