"""benchmarks/latency.py: argument checks and the timing-core pinning (no models built)."""
import os
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import latency  # noqa: E402  (imports mmgfp lazily)


@pytest.mark.parametrize('argv, message', [
    (['--no-table', '--variants', 'acts', 'latency'], "need a latency table"),
    (['--time-core', 'MINE', '--threads', '2'], 'use --threads 1'),
    (['--time-core', '4096', '--threads', '1'], 'not a core this process may use'),
])
def test_bad_arguments_are_named(argv, message, capsys):
    # a core this process may use, whatever affinity the test run was started with
    mine = str(min(os.sched_getaffinity(0))) if hasattr(os, 'sched_getaffinity') else '0'
    argv = [mine if a == 'MINE' else a for a in argv]
    with pytest.raises(SystemExit):
        latency.parse_args(argv)
    assert message in capsys.readouterr().err


def test_defaults_include_the_latency_variant():
    args = latency.parse_args([])
    assert args.variants == ['acts', 'flops', 'latency']
    assert latency.VARIANTS['latency'] == dict(delta='latency', divisor=1, metric='latency')
    assert latency.VARIANTS['acts-d8']['divisor'] == 8


@pytest.mark.skipif(not hasattr(os, 'sched_getaffinity'), reason='Linux only')
def test_pinned_restores_the_affinity():
    before = os.sched_getaffinity(0)
    core = min(before)
    with latency.pinned(core):
        assert os.sched_getaffinity(0) == {core}
    assert os.sched_getaffinity(0) == before
    with latency.pinned(None):
        assert os.sched_getaffinity(0) == before
