"""benchmarks/gpu/visit.py on its CPU path: a toy pack and a toy latency plan (both without
weights) go through run_gpu.py and the plan runner, each in its own process and time limit."""
import json
import os.path as osp
import sys

import torch.nn as nn

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks', 'gpu'))
sys.path.insert(0, osp.join(ROOT, 'tests', 'core'))

import pack  # noqa: E402
import visit  # noqa: E402
from core_toys import groups_of, inputs, make  # noqa: E402
from mmgfp.apis.latency.plan import write_plan  # noqa: E402
from mmgfp.core import LatencyTable  # noqa: E402

FAST = dict(points=2, rounds=1, warmup=0, tol=0.1, max_points=3, align=False)


def test_visit_cpu_path_writes_gpu_latency_and_tables(tmp_path):
    folder = str(tmp_path / 'pack')
    toy = [nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 8, 1))
           for w in (64, 32)]
    pack.write_manifest(folder, [pack.pack_module(toy[0], [3, 8, 8], folder, 'toy', 'original'),
                                 pack.pack_module(toy[1], [3, 8, 8], folder, 'toy', 'acts')])
    model, x = make('depthwise'), inputs(1)
    key = {'batch': 1, 'input_size': [8, 8], 'model': 'toy', 'config': 'toy'}
    (tmp_path / 'plans').mkdir()
    write_plan(str(tmp_path / 'plans' / 'toy.json'), model, lambda m: m(x), groups_of(model, x),
               key, FAST)
    out = tmp_path / 'out'
    summary = visit.main(['--out', str(out), '--device', 'cpu', '--quick', '--pack', folder,
                          '--plans', str(tmp_path / 'plans')])
    rcs = {s: [r['rc'] for r in runs] for s, runs in summary['steps'].items()}
    assert rcs == {'models': [0], 'tables': [0]}, (rcs, [
        (out / r['log']).read_text()[-1500:] for r in summary['steps']['models']])
    with open(out / 'gpu_latency.json') as f:
        rows = json.load(f)['rows']
    assert {r['variant'] for r in rows} == {'original', 'acts'}
    with open(out / 'tables' / 'toy_cpu_fp32_b1.json') as f:
        table = LatencyTable.from_dict(json.load(f))
    assert table.total_us > 0 and table.key['batch'] == 1
    assert json.loads((out / 'summary.json').read_text())['steps']['tables'][0]['rc'] == 0
