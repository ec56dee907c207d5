"""ONNX export of compact (deployed) models, checked with onnxruntime.

For RetinaNet, FCOS (mmdet configs at small widths) and an mmpretrain ResNet: mask a random half
of every prunable group, deploy to a compact config + checkpoint with ``tools/deploy_pruned``'s
function, export the compact model with ``tools/export_onnx.py --check`` and compare
onnxruntime's outputs with PyTorch's, both the compact model's and the masked original's.
"""
import os.path as osp
import sys

import onnx  # setup.py's `tests` extra installs it, onnxruntime and onnxscript
import pytest
import torch
import torch.nn as nn

import mmgfp  # noqa: F401
from mmgfp.apis.checking.check import randomize_norms, rel_diff
from mmgfp.apis.deploying.deploy import deploy
from mmgfp.apis.deploying.onnx_export import (ExportError, check_onnx, export_onnx, flatten_outputs,
                                              load_model)
from export_utils import random_pruned  # noqa: E402  (tests/export)

DET = '''
_base_ = 'mmdet::{base}'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=32),
    bbox_head=dict(num_classes=10, in_channels=32, feat_channels=32, stacked_convs=2))
'''
CLS = '''
_base_ = 'mmpretrain::{base}'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
model = dict(backbone=dict(init_cfg=None), head=dict(num_classes=10, topk=(1, )))
'''
CASES = {
    'retinanet': (DET, 'retinanet/retinanet_r18_fpn_1x_coco.py', (64, 64),
                  ['cls_score_0', 'bbox_pred_4']),
    'fcos': (DET, 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', (96, 96),
             ['cls_score_0', 'bbox_pred_0', 'centerness_4']),
    'resnet18_cls': (CLS, 'resnet/resnet18_8xb32_in1k.py', (32, 32), ['cls_score']),
}


def _conv_weight_numel(graph) -> int:
    """Elements of the Conv weight initializers of an ONNX graph."""
    inits = {i.name: i for i in graph.initializer}
    weights = set()  # a head shared across FPN levels has one weight, used by 5 Conv nodes
    for node in graph.node:
        if node.op_type == 'Conv':
            assert node.input[1] in inits, f'Conv {node.name} weight is not an initializer'
            weights.add(node.input[1])
    return sum(int(torch.Size(inits[w].dims).numel()) for w in weights)


def _spread_weights(model: nn.Module, seed: int) -> None:
    """Variance-keeping weights: mmdet's head init (std 0.01, a large constant bias) would make
    outputs nearly input-independent, and a comparison of them nearly trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity='relu', generator=gen)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1, generator=gen)


def _torch_conv_numel(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


_DONE = {}


def _prepare(name, tmp_path_factory):
    """Prune at random, deploy, export with the tool (--check); keep what the tests compare."""
    if name not in _DONE:
        _DONE[name] = _prune_deploy_export(name, tmp_path_factory)
    return _DONE[name]


@pytest.fixture(scope='module', params=list(CASES))
def exported(request, tmp_path_factory):
    return _prepare(request.param, tmp_path_factory)


def _prune_deploy_export(name, tmp_path_factory):
    import tools.export_onnx as tool
    template, base, size, _ = CASES[name]
    tmp = tmp_path_factory.mktemp(name)
    config = str(tmp / f'{name}.py')
    with open(config, 'w') as f:
        f.write(template.format(base=base))

    def prepare(model):
        _spread_weights(model, seed=1)
        randomize_norms(model, seed=1)

    model, pruner, ckpt = random_pruned(config, size, tmp, prepare)
    pruner.masker.attach()
    model.eval()
    inputs = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        masked_out = flatten_outputs(model(inputs, mode='tensor'))
    out = deploy(config, ckpt, str(tmp / 'compact'), logger=lambda *a: None)
    onnx_path = str(tmp / 'compact.onnx')
    rc = tool.main([out['config'], out['checkpoint'], '--out', onnx_path, '--input-size',
                    *map(str, size), '--batch', '2', '--check'])
    return dict(name=name, rc=rc, config=config, pruned_ckpt=ckpt, deployed=out,
                onnx=onnx_path, inputs=inputs, masked_out=masked_out,
                original_conv=_torch_conv_numel(model), size=size)


def test_tool_check_passes(exported):
    assert exported['rc'] == 0
    assert exported['deployed']['pruned'] == 'yes'


def test_onnx_matches_compact_and_masked_model(exported):
    compact = load_model(exported['deployed']['config'], exported['deployed']['checkpoint'])
    assert type(compact).__name__ != 'GFPCompactModel'  # the original class, smaller layers
    # batch 3, the export traced batch 2: the batch axis is dynamic
    diffs = check_onnx(compact, exported['onnx'], exported['size'], inputs=exported['inputs'])
    assert diffs and max(diffs.values()) < 1e-4, diffs
    import onnxruntime as ort
    sess = ort.InferenceSession(exported['onnx'], providers=['CPUExecutionProvider'])
    got = sess.run(None, {'inputs': exported['inputs'].numpy()})
    assert len(got) == len(exported['masked_out'])
    for name, g, ref in zip(diffs, got, exported['masked_out']):
        assert rel_diff(torch.from_numpy(g), ref) < 1e-4, name


def test_deployed_without_dataset_meta_loads_with_init_detector(exported):
    # the pruning checkpoint had no dataset_meta: the compact one must still load in mmdet
    if exported['name'] == 'resnet18_cls':
        pytest.skip('a classifier: init_detector is for detectors')
    from mmdet.apis import init_detector
    meta = torch.load(exported['deployed']['checkpoint'], weights_only=False)['meta']
    assert 'dataset_meta' not in meta
    det = init_detector(exported['deployed']['config'], exported['deployed']['checkpoint'],
                        device='cpu')
    assert det.dataset_meta['classes']  # mmdet's fallback (COCO names), not a crash


def test_onnx_graph_is_compact(exported):
    model = onnx.load(exported['onnx'])
    onnx.checker.check_model(model)
    names = [o.name for o in model.graph.output]
    assert set(CASES[exported['name']][3]) <= set(names), names
    assert [i.name for i in model.graph.input] == ['inputs']
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    compact = load_model(exported['deployed']['config'], exported['deployed']['checkpoint'])
    n_onnx = _conv_weight_numel(model.graph)
    # an uncompacted (masked, full-size) export would have the original's conv weights
    assert n_onnx == _torch_conv_numel(compact)
    assert n_onnx < 0.8 * exported['original_conv']


def test_bad_inputs_are_clear(tmp_path_factory, tmp_path, monkeypatch):
    import tools.export_onnx as tool
    exported = _prepare('resnet18_cls', tmp_path_factory)
    dep = exported['deployed']
    # the pruning checkpoint with its own config would export the unpruned network
    with pytest.raises(SystemExit, match='is a pruning checkpoint.*deploy_pruned'):
        tool.main([exported['config'], exported['pruned_ckpt'], '--out', str(tmp_path / 'a')])
    # the compact config with a full-size checkpoint
    with pytest.raises(SystemExit, match='is a pruning checkpoint.*compact.pth'):
        tool.main([dep['config'], exported['pruned_ckpt'], '--out', str(tmp_path / 'b')])
    full = str(tmp_path / 'full.pth')
    torch.save({'state_dict': torch.load(exported['pruned_ckpt'])['state_dict']}, full)
    with pytest.raises(SystemExit, match='does not match the config'):
        tool.main([dep['config'], full, '--out', str(tmp_path / 'c')])
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(SystemExit, match=r'needs the `onnxruntime` package.*pip install'):
        tool.main([dep['config'], dep['checkpoint'], '--out', str(tmp_path / 'd'), '--check'])
    assert not any(osp.exists(tmp_path / n) for n in 'abcd')


class _NoOnnxOp(nn.Module):
    """A model whose tensor path calls a custom operator that has no ONNX translation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, inputs, mode='tensor'):
        return torch.ops.mmgfp_test.twice(self.conv(inputs))


def test_unexportable_op_is_named(tmp_path):
    if not hasattr(torch.ops.mmgfp_test, 'twice'):
        @torch.library.custom_op('mmgfp_test::twice', mutates_args=())
        def twice(x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @twice.register_fake
        def _(x):
            return torch.empty_like(x)

    with pytest.raises(ExportError, match='mmgfp_test.*twice'):
        export_onnx(_NoOnnxOp(), str(tmp_path / 'x.onnx'), (8, 8), logger=lambda *a: None)
    assert not (tmp_path / 'x.onnx').exists()


class _FixedBatch(nn.Module):
    """A tensor path that depends on the batch size: a dynamic batch axis cannot be exported."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, inputs, mode='tensor'):
        out = self.conv(inputs)
        return out * 2 if inputs.shape[0] == 3 else out


def test_dynamic_batch_falls_back_to_fixed(tmp_path):
    notes, model = [], _FixedBatch()
    path = str(tmp_path / 'fixed.onnx')
    info = export_onnx(model, path, (8, 8), batch=3, logger=notes.append)
    assert not info['dynamic_batch'] and info['input_shape'] == [3, 3, 8, 8]
    assert notes and 'fixed batch of 3' in notes[0]
    assert onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert max(check_onnx(model, path, (8, 8), batch=3).values()) < 1e-4


def test_torchscript_exporter(tmp_path_factory, tmp_path):
    """The legacy exporter (no onnxscript needed) gives the same graph outputs."""
    import tools.export_onnx as tool
    exported = _prepare('resnet18_cls', tmp_path_factory)
    dep, path = exported['deployed'], str(tmp_path / 'ts.onnx')
    assert tool.main([dep['config'], dep['checkpoint'], '--out', path, '--input-size', '32',
                      '32', '--exporter', 'torchscript', '--check']) == 0
    compact = load_model(dep['config'], dep['checkpoint'])
    assert max(check_onnx(compact, path, (32, 32), inputs=exported['inputs']).values()) < 1e-4
    assert _conv_weight_numel(onnx.load(path).graph) == _torch_conv_numel(compact)
