"""Export a (compact) model's tensor path to ONNX and check it against PyTorch with onnxruntime.

What is exported is ``model(inputs, mode='tensor')``: for MMDetection's single-stage detectors
the raw head outputs (per-level classification / box / centerness maps, before decoding and NMS),
for MMPretrain classifiers the head's scores. ``inputs`` is the float batch *after* the config's
``data_preprocessor`` (mean/std normalisation, BGR->RGB, padding), as in mmdet's own tensor path:
the ONNX model does not normalise images itself.

Functions, used by ``tools/export_onnx.py``:

- :func:`load_model` builds the model of a (compact) config and loads a checkpoint strictly;
- :func:`export_onnx` writes the ONNX file, with a dynamic batch axis when the graph allows it;
- :func:`check_onnx` runs onnxruntime and PyTorch on the same random batch and compares.
"""
import importlib
import inspect
import os
import os.path as osp
import re
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from mmgfp.core.spec import is_empty
from mmgfp.core.tracing import flatten
from mmgfp.apis.checking.check import build_model, load_config, rel_diff
from mmgfp.apis.deploying.deploy import COMPACT_TYPE, load_strict, read_checkpoint

EXPORTERS = ('dynamo', 'torchscript')
INSTALL_HINT = 'pip install "mmgfp[export]" (or: pip install {names})'
# what each exporter imports besides torch (pip names)
EXPORT_NEEDS = {'dynamo': ('onnx', 'onnxscript'), 'torchscript': ('onnx', )}


class ExportError(RuntimeError):
    """The model cannot be exported or checked; the message says why and what to do."""


def require(module: str, purpose: str):
    """Import ``module`` or raise :class:`ExportError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f'{purpose} needs the `{module}` package, which is not installed '
                          f'({e}): {INSTALL_HINT.format(names=module)}') from None


class TensorPath(nn.Module):
    """``model(inputs, mode='tensor')`` with the outputs flattened into a tuple of tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor):
        return tuple(flatten_outputs(tensor_call(self.model, inputs)))


def tensor_call(model: nn.Module, inputs: torch.Tensor) -> Any:
    """``model(inputs, mode='tensor')``, with ``data_samples=None`` where the forward takes
    data samples (mmpose's has no default for them)."""
    import inspect
    if 'data_samples' in inspect.signature(model.forward).parameters:
        return model(inputs, data_samples=None, mode='tensor')
    return model(inputs, mode='tensor')


def flatten_outputs(out: Any) -> List[torch.Tensor]:
    """The tensors of a nested tuple/list/dict output, depth first, in order."""
    leaves = list(flatten(out))
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            raise ExportError(f"model(inputs, mode='tensor') returned a {type(leaf).__name__}; "
                              'only tensors and (nested) tuples/lists/dicts of tensors can be '
                              'exported')
    return leaves


def _singular(name: str) -> str:
    if name.endswith('nesses'):  # centernesses, objectnesses
        return name[:-2]
    return name[:-1] if name.endswith('s') else name


def _head_fields(model: nn.Module, n: int) -> Optional[List[str]]:
    """Names of a dense head's ``n`` outputs: its ``loss_by_feat(*outs, ...)`` parameters."""
    head = getattr(model, 'bbox_head', None)
    fn = getattr(head, 'loss_by_feat', None)
    if fn is None:
        return None
    params = list(inspect.signature(fn).parameters)[:n]
    if len(params) < n or any(p.startswith('batch_') for p in params):
        return None
    return [_singular(p) for p in params]


def output_names(model: nn.Module, out: Any) -> List[str]:
    """One readable name per flattened output, e.g. ``cls_score_0`` (output, FPN level)."""
    if isinstance(out, torch.Tensor):
        return ['cls_score' if hasattr(model, 'head') else 'output']
    if not isinstance(out, (list, tuple)):
        return [f'output_{i}' for i in range(len(flatten_outputs(out)))]
    fields = _head_fields(model, len(out)) or [f'output{i}' for i in range(len(out))]
    names = []
    for field, item in zip(fields, out):
        n = len(flatten_outputs(item))
        names += [field] if isinstance(item, torch.Tensor) else [f'{field}_{j}'
                                                                 for j in range(n)]
    return names


def _is_compact(cfg) -> bool:
    return cfg.model.get('type') == COMPACT_TYPE


def load_model(config: str, checkpoint: Optional[str]) -> nn.Module:
    """Build the model of ``config`` (a path or ``scope::path``) and load ``checkpoint`` strictly.

    Raises:
        ExportError: The checkpoint holds pruning masks but the config is not the compact one
            (exporting it would give the full-size, unpruned network), or the other way round.
        SpecError: The checkpoint cannot be read or does not fit the config.
    """
    import mmgfp  # noqa: F401  (registers GFPCompactModel, safe globals for torch.load)
    cfg = load_config(config)
    model = build_model(cfg, init=checkpoint is None)
    if checkpoint is None:
        return model.eval()
    ckpt = read_checkpoint(checkpoint)
    masked = not is_empty((ckpt.get('mmgfp') or {}).get('spec'))
    if masked and not _is_compact(cfg):
        raise ExportError(
            f'{checkpoint} is a pruning checkpoint: its layers are full-size and the pruned '
            'channels are only masked, so exporting it with this config would give the '
            'unpruned network. Run tools/deploy_pruned.py CONFIG CHECKPOINT --out-dir DIR '
            'first and export DIR/<config>_compact.py with DIR/compact.pth.')
    if masked:
        raise ExportError(
            f'{checkpoint} is a pruning checkpoint (full-size layers with masks), but {config} '
            'builds the compact model: export the compact.pth that tools/deploy_pruned.py '
            'wrote next to this config.')
    load_strict(model, ckpt.get('state_dict', ckpt), f'checkpoint {checkpoint}')
    return model.eval()


def _summary(e: BaseException, limit: int = 800) -> str:
    """The useful part of an exception's message, on one line, without terminal colours."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', str(e))
    if '## Exception summary' in text:  # the dynamo exporter's long report: its cause
        text = text.split('## Exception summary', 1)[1]
    text = ' '.join(ln.strip() for ln in text.splitlines() if ln.strip()).rstrip('.')
    return f'{type(e).__name__}: ' + (text[:limit] + ' ...' if len(text) > limit else text)


def _torch_export(wrapper: nn.Module, x: torch.Tensor, path: str, names: List[str],
                  opset: Optional[int], exporter: str, dynamic: bool) -> None:
    kwargs = dict(input_names=['inputs'], output_names=names, opset_version=opset)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the legacy exporter's deprecation notice and friends
        if exporter == 'torchscript':
            axes = {n: {0: 'batch'} for n in ['inputs'] + names} if dynamic else None
            torch.onnx.export(wrapper, (x, ), path, dynamo=False, dynamic_axes=axes, **kwargs)
            return
        shapes = {'inputs': {0: torch.export.Dim('batch', min=1)}} if dynamic else None
        big = sum(p.numel() * p.element_size() for p in wrapper.parameters()) > 1.5 * 2**30
        torch.onnx.export(wrapper, (x, ), path, dynamo=True, dynamic_shapes=shapes,
                          external_data=big, verbose=False, **kwargs)


def export_onnx(model: nn.Module, path: str, input_size: Sequence[int] = (224, 224),
                batch: int = 1, opset: Optional[int] = None, exporter: str = 'dynamo',
                dynamic_batch: bool = True, logger=print) -> Dict:
    """Write ``model(inputs, mode='tensor')`` to ``path`` as ONNX.

    Args:
        model (nn.Module): An mmdet detector or mmpretrain classifier (e.g. from
            :func:`load_model`), whose ``forward`` takes ``mode='tensor'``.
        path (str): The ONNX file to write (written atomically).
        input_size (Sequence[int]): ``(H, W)`` of the example input. Defaults to (224, 224).
        batch (int): Batch size of the example input. Defaults to 1.
        opset (int, optional): ONNX opset; None takes the exporter's default. Defaults to None.
        exporter (str): ``'dynamo'`` (torch.export based, needs onnxscript) or
            ``'torchscript'`` (the legacy tracer, deprecated in PyTorch). Defaults to 'dynamo'.
        dynamic_batch (bool): Make the batch axis dynamic; when the graph does not allow it,
            fall back to a fixed batch and say so. Defaults to True.

    Returns:
        dict: ``path``, ``input_names``, ``input_shape``, ``output_names``, ``output_shapes``,
        ``dynamic_batch`` and ``opset`` (what the file has), ``exporter``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f'`exporter` must be one of {EXPORTERS}, but got {exporter!r}')
    if len(input_size) != 2 or any(int(s) < 1 for s in input_size):
        raise ValueError(f'`input_size` must be (H, W) with positive sizes, got {input_size!r}')
    if int(batch) < 1:
        raise ValueError(f'`batch` must be a positive integer, but got {batch!r}')
    for name in EXPORT_NEEDS[exporter]:
        require(name, f'ONNX export with the {exporter} exporter')
    model.eval()
    gen = torch.Generator().manual_seed(0)
    # torch.export specialises a batch of 1 to a constant: trace a dynamic axis with 2
    x = torch.randn(max(batch, 2) if dynamic_batch else batch, 3, *map(int, input_size),
                    generator=gen)
    names, flat = _probe(model, x)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp_path = osp.join(tmp, osp.basename(path))
        dynamic = _export_or_fall_back(TensorPath(model).eval(), x, batch, tmp_path, names,
                                       opset, exporter, dynamic_batch, logger)
        written = _file_opset(tmp_path)
        for f in os.listdir(tmp):  # the .onnx file and its external data, if any
            os.replace(osp.join(tmp, f), osp.join(folder, f))
    if opset is not None and written != opset:
        hint = ' (--exporter torchscript writes opsets 7-20 directly)' \
            if exporter == 'dynamo' else ''
        logger(f'the file has opset {written}: the {exporter} exporter could not convert '
               f'to the requested opset {opset}{hint}')
    return {'path': path, 'input_names': ['inputs'],
            'input_shape': ['batch' if dynamic else batch, *x.shape[1:]],
            'output_names': names, 'output_shapes': [tuple(t.shape[1:]) for t in flat],
            'dynamic_batch': dynamic, 'exporter': exporter, 'opset': written}


def _probe(model: nn.Module, x: torch.Tensor):
    """Output names and tensors of one eager run, with a clear error when it cannot run."""
    try:
        with torch.no_grad():
            out = tensor_call(model, x)
    except Exception as e:
        raise ExportError(
            f"{type(model).__name__}(inputs, mode='tensor') fails on a {list(x.shape)} batch "
            f'without data samples ({_summary(e, 300)}). The exporter covers models whose '
            'tensor path needs only the images (single-stage detectors, classifiers); '
            'two-stage detectors need image metas at this point.') from e
    return output_names(model, out), flatten_outputs(out)


def _read_header(path: str):
    return require('onnx', 'reading the exported file').load(path, load_external_data=False)


def _fixed_batch(path: str) -> Optional[int]:
    """The batch size an ONNX file's first input is fixed to, or None when it is symbolic."""
    dim = _read_header(path).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField('dim_value') else None


def _file_opset(path: str) -> Optional[int]:
    found = [o.version for o in _read_header(path).opset_import if o.domain in ('', 'ai.onnx')]
    return found[0] if found else None


def _export_or_fall_back(wrapper, x, batch, path, names, opset, exporter, dynamic,
                         logger) -> bool:
    """Export with a dynamic batch axis if asked and possible; return whether it is dynamic."""
    if dynamic:
        try:
            _torch_export(wrapper, x, path, names, opset, exporter, True)
            if _fixed_batch(path) is None:
                return True
            # the dynamo exporter's last resort (draft_export) specialises silently
            why = 'the exporter fixed it: the tensor path depends on the batch size'
        except Exception as e:
            why = _summary(e, 300)
    try:
        _torch_export(wrapper, x[:batch], path, names, opset, exporter, False)
    except Exception as e:  # not the dynamic axis then: report the plain failure
        raise _export_error(wrapper.model, exporter, opset, e) from e
    if dynamic:
        logger(f'exported with a fixed batch of {batch}: a dynamic batch axis does not export '
               f'({why})')
    return False


def _export_error(model: nn.Module, exporter: str, opset: Optional[int],
                  e: BaseException) -> ExportError:
    other = 'torchscript' if exporter == 'dynamo' else 'dynamo'
    return ExportError(
        f"torch.onnx.export ({exporter} exporter, opset {opset or 'default'}) cannot export "
        f"{type(model).__name__}(inputs, mode='tensor'): {_summary(e)}. An operator without "
        f'an ONNX translation is named above; try --exporter {other} or another --opset, or '
        'replace that operator in the model.')


def _ort_session(path: str):
    ort = require('onnxruntime', 'checking the ONNX file')
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])


def check_onnx(model: nn.Module, path: str, input_size: Sequence[int], batch: int = 1,
               seed: int = 0, inputs: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Run the ONNX file with onnxruntime and the model with PyTorch on one random batch.

    Returns:
        dict: For every output name, ``||ort - torch|| / ||torch||`` (as ``check_model``), or
        ``inf`` when the shapes differ.
    """
    sess = _ort_session(path)
    if inputs is None:
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.randn(batch, 3, *map(int, input_size), generator=gen)
    model.eval()
    try:
        with torch.no_grad():
            ref = flatten_outputs(tensor_call(model, inputs))
    except ValueError as e:  # e.g. GroupNorm refuses one value per group (batch 1, 1x1 map)
        raise ExportError(f'PyTorch cannot run the model itself on a {list(inputs.shape)} '
                          f'batch ({_summary(e, 300)}): check with a larger --input-size or '
                          '--batch') from e
    feed = {sess.get_inputs()[0].name: inputs.numpy()}
    names = [o.name for o in sess.get_outputs()]
    if len(names) != len(ref):
        raise ExportError(f'{path} has {len(names)} outputs but the model returns {len(ref)}: '
                          'was it exported from another config?')
    try:
        got = sess.run(names, feed)
    except Exception as e:  # onnxruntime's own errors are not importable without it
        raise ExportError(f'onnxruntime cannot run {path} on a {list(inputs.shape)} batch: '
                          f'{_summary(e, 500)}') from e
    return {n: rel_diff(torch.from_numpy(g), r) for n, g, r in zip(names, got, ref)}
