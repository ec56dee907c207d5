"""Model files without their weights: strip them here, refill random values on the device.

Timing a model needs its shapes, not its trained values, and a TorchScript or ONNX file of
RetinaNet-R50 and its thinner copies holds ~380 MB of weights: too much to carry to a lent GPU or
an embedded board. :func:`strip` empties every parameter and buffer of a (traced) module and
returns their shapes; :func:`refill` gives them plausible random values again (BN variances
positive, conv/linear weights scaled by their fan-in so that fp16 activations stay finite).
:func:`strip_onnx` / :func:`refill_onnx` do the same for the large floating-point initializers of
an ONNX file (the shapes stay in the file; refilling needs the ``onnx`` package).

Plain torch only (``onnx`` and ``numpy`` imported where ONNX files are handled): this file is
copied next to ``runner.py`` and ``benchmarks/gpu/run_gpu.py`` uses it too.
"""
from typing import Dict, List

import torch
import torch.nn as nn

# ONNX initializers with fewer elements stay in the file (shape constants, scales, small biases)
ONNX_MIN_ELEMS = 256


def _set(module: nn.Module, name: str, value) -> None:
    *path, leaf = name.split('.')
    for part in path:
        module = getattr(module, part)
    setattr(module, leaf, value)


def random_tensor(name: str, shape: List[int], dtype: torch.dtype,
                  gen: torch.Generator) -> torch.Tensor:
    """Plausible random values for a weight or buffer, judged by its name and shape."""
    leaf = name.rsplit('.', 1)[-1]
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    if leaf == 'running_var':
        return (torch.rand(shape, generator=gen) + 0.5).to(dtype)
    if leaf == 'running_mean':
        return (torch.randn(shape, generator=gen) * 0.1).to(dtype)
    if len(shape) >= 2:  # conv / linear weight: unit-variance outputs whatever the width
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        return (torch.randn(shape, generator=gen) / max(fan_in, 1) ** 0.5).to(dtype)
    if leaf == 'bias':
        return (torch.randn(shape, generator=gen) * 0.01).to(dtype)
    if leaf == 'weight':  # norm affine
        return (torch.rand(shape, generator=gen) * 0.5 + 0.5).to(dtype)
    return torch.ones(shape, dtype=dtype)  # e.g. FCOS's per-level Scale


def strip(module: nn.Module) -> Dict[str, Dict]:
    """Replace every parameter and buffer by an empty tensor; returns their shapes and dtypes."""
    shapes = {}
    for kind, items in (('param', module.named_parameters()), ('buffer', module.named_buffers())):
        for name, t in list(items):
            shapes[name] = {'kind': kind, 'shape': list(t.shape), 'dtype': str(t.dtype)[6:]}
            empty = torch.empty(0, dtype=t.dtype)
            _set(module, name, nn.Parameter(empty, requires_grad=False) if kind == 'param'
                 else empty)
    return shapes


def refill(module: nn.Module, shapes: Dict[str, Dict], seed: int = 0) -> nn.Module:
    """Give a stripped module random weights and buffers of the recorded shapes.

    Raises:
        ValueError: the recorded names are not the module's (shapes from another file).
    """
    gen = torch.Generator().manual_seed(seed)
    own = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    if own != set(shapes):
        raise ValueError(f'the recorded shapes do not match the TorchScript file: missing '
                         f'{sorted(own - set(shapes))[:3]}, extra {sorted(set(shapes) - own)[:3]}'
                         '; write the file and its shapes again, together')
    for name, info in shapes.items():
        t = random_tensor(name, info['shape'], getattr(torch, info['dtype']), gen)
        _set(module, name, nn.Parameter(t, requires_grad=False) if info['kind'] == 'param'
             else t)
    return module


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise ValueError(f'this ONNX file was written without its weights and refilling them '
                         f'needs the `onnx` package ({e}): pip install onnx, or write the plan '
                         'with its weights (--keep-weights)') from None
    return onnx, numpy_helper


def strip_onnx(path: str) -> int:
    """Empty the floating-point initializers of ``path`` with at least ``ONNX_MIN_ELEMS``
    elements, in place (dims and type stay); returns how many were emptied."""
    onnx, _ = _onnx()
    model = onnx.load(path)
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    n = 0
    for init in model.graph.initializer:
        numel = 1
        for d in init.dims:
            numel *= d
        if init.data_type in float_types and numel >= ONNX_MIN_ELEMS:
            for field in ('raw_data', 'float_data', 'double_data', 'int32_data'):
                init.ClearField(field)
            n += 1
    model.doc_string = 'mmgfp: weightless (refill with refill_onnx)'
    onnx.save(model, path)
    return n


def refill_onnx(path: str, seed: int = 0) -> bytes:
    """The ONNX model of ``path`` with random values in its emptied initializers, serialised
    (what ``onnxruntime.InferenceSession`` takes); a file with its weights comes back as is."""
    onnx, numpy_helper = _onnx()
    model = onnx.load(path)
    gen = torch.Generator().manual_seed(seed)
    dtypes = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.FLOAT16: torch.float16,
              onnx.TensorProto.DOUBLE: torch.float64}
    for init in model.graph.initializer:
        empty = not (init.raw_data or init.float_data or init.double_data or init.int32_data)
        if empty and init.data_type in dtypes and list(init.dims) != [0]:
            t = random_tensor(init.name, list(init.dims), dtypes[init.data_type], gen)
            init.CopyFrom(numpy_helper.from_array(t.numpy(), init.name))
    return model.SerializeToString()
