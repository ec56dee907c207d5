"""The ``losses`` entries of :class:`GFPDistillHook`: checks, defaults, log keys, and the
tensors of a module's output that an entry distils."""
from typing import List, Tuple

import torch
import torch.nn as nn

from mmgfp.core.distill import LOSSES, PAIRED, flat_tensors


def loss_key(spec: dict) -> str:
    return f"loss_distill_{spec['type']}_{spec['module'].replace('.', '_')}"


def picked_pair(spec: dict, outputs: list) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Elements 0 and 1 of a module's outputs (a dense head's class scores and boxes, one
    tensor per level), for the losses that read both (``PAIRED``)."""
    for out in outputs:
        if not isinstance(out, (tuple, list)) or len(out) < 2:
            what = (f'a tuple of {len(out)}' if isinstance(out, (tuple, list))
                    else f'a {type(out).__name__}')
            raise ValueError(f"GFPDistillHook: type {spec['type']!r} needs a module that "
                             f"returns (class scores, boxes), but {spec['module']!r} returns "
                             f"{what}; name the detector's dense head (e.g. 'bbox_head')")
    return (picked_tensors(dict(spec, output=0), outputs),
            picked_tensors(dict(spec, output=1), outputs))


def picked_tensors(spec: dict, outputs: list) -> List[torch.Tensor]:
    """The tensors of a module's outputs (one per call), of element ``spec['output']`` of
    each when given."""
    index = spec.get('output')
    if index is None:
        return [t for out in outputs for t in flat_tensors(out)]
    picked = []
    for out in outputs:
        if not isinstance(out, (tuple, list)) or not -len(out) <= index < len(out):
            what = (f'a tuple of {len(out)}' if isinstance(out, (tuple, list))
                    else f'a {type(out).__name__}')
            raise ValueError(f"GFPDistillHook: output={index} of module {spec['module']!r}, "
                             f'but it returns {what}; give an index into its output tuple, '
                             'or leave `output` out to distil all its tensors')
        picked.extend(flat_tensors(out[index]))
    return picked


def check_loss(spec: dict) -> dict:
    if not isinstance(spec.get('module'), str):
        raise ValueError(f'every entry of `losses` needs module=NAME (a module of the model), '
                         f'got {spec!r}')
    spec.setdefault('type', 'cwd')
    if spec['type'] not in LOSSES:
        raise ValueError(f"`losses` type must be one of {sorted(LOSSES)}, got {spec['type']!r}")
    spec.setdefault('weight', 1.0)
    spec.setdefault('tau', 1.0)
    if not spec['tau'] > 0 or spec['weight'] < 0:
        raise ValueError(f'`losses` needs tau > 0 and weight >= 0, got {spec!r}')
    spec.setdefault('output', None)
    if spec['output'] is not None and (isinstance(spec['output'], bool)
                                       or not isinstance(spec['output'], int)):
        raise ValueError(f"`losses` output is an index into the module's output tuple (an "
                         f"int), got {spec['output']!r}")
    if spec['type'] in PAIRED and spec['output'] is not None:
        raise ValueError(f"`losses` type {spec['type']!r} reads elements 0 and 1 of the "
                         "module's output (a head's class scores and boxes): leave `output` "
                         f'out, got {spec!r}')
    extra = set(spec) - {'module', 'type', 'weight', 'tau', 'output'}
    if extra:
        raise ValueError(f'unknown keys {sorted(extra)} in `losses` entry {spec!r}')
    return spec


def default_losses(model: nn.Module) -> List[dict]:
    from mmgfp.codebases import codebase_of
    try:
        scope = codebase_of(model).scope
    except Exception:  # noqa: BLE001  (a model of no known codebase: the neck rule below)
        scope = None
    if scope == 'mmpretrain':
        return [dict(module='head', type='kl', weight=1.0, tau=4.0)]
    if getattr(model, 'neck', None) is not None:
        return [dict(module='neck', type='cwd', weight=1.0, tau=1.0)]
    raise ValueError(f'GFPDistillHook: no default distillation for {type(model).__name__} '
                     '(no neck): give `losses=[dict(module=NAME, type="kl" or "cwd")]`')
