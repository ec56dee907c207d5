"""benchmarks/_latency_modelopt.py: ModelOpt FastNAS as a variant of the latency benchmark.

The search test runs on a small ResNet-18 classifier (stem and base width 32, 32x32 inputs) and
is skipped where ModelOpt is not installed (``tools/setup_env.sh`` puts it in .venv/modelopt).
"""
import argparse
import os.path as osp
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import _latency_modelopt as LMO  # noqa: E402
import latency  # noqa: E402


def _modelopt_or_skip():
    try:
        return LMO.import_modelopt()
    except LMO.ModelOptMissing as e:
        pytest.skip(f'ModelOpt not installed: {e}')


def test_missing_modelopt_names_the_recipe(monkeypatch, capsys, tmp_path):
    for mod in [m for m in sys.modules if m == 'modelopt' or m.startswith('modelopt.')]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, 'modelopt', None)  # blocks the import wherever it is
    monkeypatch.setenv(LMO.ENV, str(tmp_path))
    with pytest.raises(LMO.ModelOptMissing, match='requirements/modelopt.txt'):
        LMO.import_modelopt()
    with pytest.raises(SystemExit):
        latency.parse_args(['--variants', 'acts', 'modelopt'])
    err = capsys.readouterr().err
    assert 'pip install --target .venv/modelopt --no-deps' in err and LMO.ENV in err


def test_output_agreement_is_zero_for_the_original_and_negative_for_another():
    torch.manual_seed(0)  # a draw whose reference outputs are all zero would divide by zero
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    x = torch.randn(5, 4)
    score = LMO.OutputAgreement(net, x)
    assert score(net) == 0.0
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    assert score(other) < 0
    assert score.calls == 2
    assert [t.shape for t in LMO.flat(({'a': x}, [x, (x,)]))] == [x.shape] * 3


def _small_classifier():
    from mmengine.config import Config

    from mmgfp.apis.checking.check import build_model, randomize_norms
    from _small_models import SMALL_CLASSIFIER
    cfg = Config(dict(default_scope='mmpretrain', model=SMALL_CLASSIFIER))
    torch.manual_seed(0)
    model = build_model(cfg)
    randomize_norms(model, 0)
    return model


def test_variant_prunes_to_the_flops_target_and_reuses_its_file(tmp_path, monkeypatch):
    _modelopt_or_skip()
    from _latency_models import costs

    from mmgfp.apis.inputs import demo_batch, loss_forward
    from mmgfp.core import build_groups
    monkeypatch.chdir(tmp_path)  # ModelOpt's search checkpoint goes to work_dirs/modelopt
    orig = _small_classifier()
    groups = build_groups(orig.train(), loss_forward(demo_batch(orig, 2, (32, 32), seed=0)))
    orig.eval()
    args = argparse.Namespace(target=0.5, seed=0, prune_cls_size=32, prune_cls_batch=2,
                              save_specs=str(tmp_path / 'specs'), reuse_specs=None)
    # `resnet50`: the benchmark tells classifiers from detectors by the model's name
    compact, info = LMO.variant(orig, groups, 'resnet50', args)
    batch = demo_batch(orig, 1, (64, 64), seed=3)
    full, small = costs(orig, batch), costs(compact, batch)
    assert 0.3 < small['flops'] / full['flops'] <= 0.5 + 1e-6  # the independent counter
    assert info['prune_s'] > 0 and info['modelopt']['score_calls'] > 1
    assert abs(info['remaining']['flops'] - small['flops'] / full['flops']) < 0.02
    widths = [m.out_channels for m in compact.backbone.modules()
              if isinstance(m, torch.nn.Conv2d)]
    assert min(widths) < 256 and all(w % 32 == 0 for w in widths)  # FastNAS's divisor 32
    assert osp.isfile(tmp_path / 'work_dirs' / 'modelopt' / 'resnet50_search_32_b2_seed1.pth')

    args.reuse_specs = args.save_specs  # a rerun rebuilds the same widths without a search
    again, info2 = LMO.variant(orig, groups, 'resnet50', args)
    assert info2['prune_s'] == 0.0 and info2['kept'] == info['kept']
    assert [p.shape for p in again.parameters()] == [p.shape for p in compact.parameters()]
    with torch.no_grad():
        out = again(torch.randn(1, 3, 32, 32), mode='tensor')
    assert out.shape == (1, 10)
