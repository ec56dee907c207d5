"""benchmarks/gpu: pack a toy model as weightless TorchScript, refill and time it on the CPU.

The toy nets (original and a narrower "compact" one)::

    x -> conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> (+ x1) -> ReLU -> avgpool -> linear
                                  \\____________ residual ___/
"""
import json
import os.path as osp
import sys

import pytest
import torch
import torch.nn as nn

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks', 'gpu'))

import pack  # noqa: E402  (plain torch at import time)
import run_gpu  # noqa: E402


class Toy(nn.Module):

    def __init__(self, width=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(self.bn(self.conv(y)) + y)
        return self.fc(y.mean((2, 3))), y


@pytest.fixture
def packed(tmp_path):
    folder = str(tmp_path / 'pack')
    entries = [pack.pack_module(Toy(256), [3, 16, 16], folder, 'toy', 'original'),
               pack.pack_module(Toy(128), [3, 16, 16], folder, 'toy', 'acts',
                                {'flops_ratio': 0.25})]
    pack.write_manifest(folder, entries)
    return folder, entries


def test_stripped_files_are_small_and_refill_gives_the_original_shapes(packed):
    folder, entries = packed
    full_bytes = sum(p.numel() * 4 for p in Toy(256).parameters())
    orig = entries[0]
    assert orig['out_shapes'] == [[1, 10], [1, 256, 16, 16]]
    size = osp.getsize(osp.join(folder, orig['file']))
    assert size < full_bytes / 10, (size, full_bytes)  # weights are not in the file
    with open(osp.join(folder, orig['shapes'])) as f:
        shapes = json.load(f)
    assert shapes['conv.weight'] == {'kind': 'param', 'shape': [256, 256, 3, 3],
                                     'dtype': 'float32'}
    assert shapes['bn.num_batches_tracked']['dtype'] == 'int64'
    for entry in entries:
        model = run_gpu.load_variant(folder, entry, 'cpu', torch.float32, False)
        assert model.conv.weight.shape[0] == (256 if entry is orig else 128)
        assert bool((model.bn.running_var > 0).all())
        for batch in (1, 3):  # traced at batch 1, runs at any batch
            x = run_gpu.make_input(entry, batch, 'cpu', torch.float32, False)
            with torch.no_grad():
                out = model(x)
            want = [[batch] + s[1:] for s in entry['out_shapes']]
            assert [list(t.shape) for t in out] == want
            assert run_gpu.all_finite(out)


def test_run_gpu_cpu_path_writes_a_table_and_json(packed, tmp_path, capsys):
    folder, _ = packed
    out = tmp_path / 'gpu.json'
    rows = run_gpu.main(['--device', 'cpu', '--pack', folder, '--settings', 'fp32', 'fp32-cl',
                         '--batches', '1', '2', '--rounds', '2', '--warmup', '1', '--iters', '1',
                         '--threads', '1', '--json', str(out)])
    assert len(rows) == 2 * 2 * 2  # variants x settings x batches (eager only on a CPU)
    assert {r['mode'] for r in rows} == {'eager'}
    for r in rows:
        assert r['ms'] > 0 and r['finite'] and len(r['times_ms']) == 2
        assert r['ratio'] == (1.0 if r['variant'] == 'original' else r['ms'] / next(
            o['ms'] for o in rows if o['variant'] == 'original' and o['setting'] == r['setting']
            and o['batch'] == r['batch']))
    text = capsys.readouterr().out
    assert '| toy   | acts' in text and 'ratio vs original' in text
    saved = json.loads(out.read_text())
    assert saved['environment']['device'].startswith('cpu') and len(saved['rows']) == 8


def test_runs_from_the_archive(packed, tmp_path):
    folder, _ = packed
    path = str(tmp_path / 'pack.tar.xz')
    pack.archive(folder, path)
    rows = run_gpu.main(['--device', 'cpu', '--pack', path, '--settings', 'fp32', '--batches',
                         '1', '--rounds', '1', '--iters', '1', '--threads', '1'])
    assert [r['variant'] for r in rows] == ['original', 'acts'] and rows[1]['ms'] > 0
    with pytest.raises(SystemExit, match='pack.py --archive'):
        run_gpu.main(['--device', 'cpu', '--pack', str(tmp_path / 'none.tar.xz')])


def test_bad_pack_and_cpu_graph_mode_are_named(tmp_path, packed, capsys):
    with pytest.raises(SystemExit, match='pack.py'):
        run_gpu.main(['--device', 'cpu', '--pack', str(tmp_path / 'nothing')])
    folder, _ = packed
    with pytest.raises(SystemExit):
        run_gpu.main(['--device', 'cpu', '--pack', folder, '--modes', 'graph'])
    assert 'needs --device cuda' in capsys.readouterr().err
    with pytest.raises(SystemExit, match='not in the pack'):
        run_gpu.main(['--device', 'cpu', '--pack', folder, '--models', 'resnet50'])
    with open(osp.join(folder, 'toy', 'acts.json')) as f:
        shapes = json.load(f)
    shapes.pop('fc.bias')
    with open(osp.join(folder, 'toy', 'acts.json'), 'w') as f:
        json.dump(shapes, f)
    with pytest.raises(SystemExit, match='do not match the TorchScript file'):
        run_gpu.main(['--device', 'cpu', '--pack', folder, '--rounds', '1'])
