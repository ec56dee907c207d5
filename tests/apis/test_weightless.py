"""Model files without weights (mmgfp.apis.latency.weightless): small, and refilled they run
with the shapes and outputs of the original architecture."""
import os.path as osp

import pytest
import torch
import torch.nn as nn

from mmgfp.apis.latency import weightless


class Net(nn.Module):

    def __init__(self, width=128):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        y = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc(y.mean((2, 3))), y.flatten(1).reshape(x.shape[0], -1, 4)


def test_torchscript_strip_refill_and_a_mismatch(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    traced = torch.jit.trace(Net().eval(), (x, ))
    torch.jit.save(traced, str(tmp_path / 'full.pt'))
    shapes = weightless.strip(traced)
    torch.jit.save(traced, str(tmp_path / 'empty.pt'))
    assert osp.getsize(tmp_path / 'empty.pt') < osp.getsize(tmp_path / 'full.pt') / 5
    assert shapes['conv2.weight']['shape'] == [128, 128, 3, 3]
    loaded = weightless.refill(torch.jit.load(str(tmp_path / 'empty.pt')), shapes)
    logits, feats = loaded(x)
    assert logits.shape == (1, 10) and feats.shape == (1, 2048, 4)
    assert torch.isfinite(logits).all() and (loaded.bn.running_var > 0).all()
    del shapes['fc.bias']
    with pytest.raises(ValueError, match='do not match the TorchScript file'):
        weightless.refill(torch.jit.load(str(tmp_path / 'empty.pt')), shapes)


def test_onnx_strip_keeps_small_constants_and_refill_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip('onnxruntime')
    onnx = pytest.importorskip('onnx')
    x = torch.randn(1, 3, 8, 8)
    path = str(tmp_path / 'm.onnx')
    torch.onnx.export(Net().eval(), (x, ), path, dynamo=False, opset_version=17)
    full = osp.getsize(path)
    sess = ort.InferenceSession(path)
    ref = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert weightless.strip_onnx(path) >= 3  # conv1, conv2, fc weights at least
    assert osp.getsize(path) < full / 5
    with pytest.raises(Exception):  # the emptied file alone is not a model ORT can run
        ort.InferenceSession(path).run(None, {sess.get_inputs()[0].name: x.numpy()})
    kept = [i for i in onnx.load(path).graph.initializer if i.raw_data or i.int64_data]
    assert kept, 'small initializers (shapes, biases under the threshold) stay in the file'
    sess = ort.InferenceSession(weightless.refill_onnx(path))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert all(torch.isfinite(torch.from_numpy(g)).all() for g in got)
