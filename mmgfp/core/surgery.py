"""Make pruning physical: slice layers in place according to a channel spec's ``layers``.

One small function per layer type; a layer of any other type in a spec is an error, never a
silent skip. Every size is checked against the model before anything is changed, so a spec made
for another model fails with a message instead of producing a half-sliced one.
"""
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from .spec import SpecError, from_ranges, validate


def _param(old: Optional[torch.Tensor], new: torch.Tensor):
    if isinstance(old, nn.Parameter):
        return nn.Parameter(new.detach().clone(), requires_grad=old.requires_grad)
    return new.detach().clone()


def _sel(t: Optional[torch.Tensor], dim: int, idx: Optional[torch.Tensor]):
    if t is None or idx is None:
        return t
    return _param(t, t.index_select(dim, idx.to(t.device)))


def _conv(m: nn.modules.conv._ConvNd, cin, cout) -> None:
    if m.groups > 1:  # depth-wise / group conv: whole groups go, in == out
        per_group = m.in_channels // m.groups
        idx = cout if cout is not None else cin
        if idx is None:  # an entry without indices slices nothing
            return
        m.weight = _sel(m.weight, 0, idx)
        m.bias = _sel(m.bias, 0, idx)
        m.in_channels = m.out_channels = len(idx)
        m.groups = len(idx) // per_group
        return
    m.weight = _sel(_sel(m.weight, 0, cout), 1, cin)
    m.bias = _sel(m.bias, 0, cout)
    m.in_channels = len(cin) if cin is not None else m.in_channels
    m.out_channels = len(cout) if cout is not None else m.out_channels


def _conv_transpose(m: nn.modules.conv._ConvTransposeNd, cin, cout) -> None:
    m.weight = _sel(_sel(m.weight, 0, cin), 1, cout)
    m.bias = _sel(m.bias, 0, cout)
    m.in_channels = len(cin) if cin is not None else m.in_channels
    m.out_channels = len(cout) if cout is not None else m.out_channels


def _linear(m: nn.Linear, cin, cout) -> None:
    m.weight = _sel(_sel(m.weight, 0, cout), 1, cin)
    m.bias = _sel(m.bias, 0, cout)
    m.in_features = len(cin) if cin is not None else m.in_features
    m.out_features = len(cout) if cout is not None else m.out_features


def _norm(m: nn.modules.batchnorm._NormBase, cin, cout) -> None:
    if cout is None:  # an entry without indices slices nothing
        return
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
        setattr(m, name, _sel(getattr(m, name), 0, cout))
    m.num_features = len(cout)


def _group_norm(m: nn.GroupNorm, cin, cout) -> None:
    if cout is None:  # an entry without indices slices nothing
        return
    per_group = m.num_channels // m.num_groups
    m.weight = _sel(m.weight, 0, cout)
    m.bias = _sel(m.bias, 0, cout)
    m.num_channels = len(cout)
    m.num_groups = len(cout) // per_group


SURGERY: Dict[type, Callable] = {
    nn.modules.conv._ConvTransposeNd: _conv_transpose,
    nn.modules.conv._ConvNd: _conv,
    nn.Linear: _linear,
    nn.modules.batchnorm._NormBase: _norm,
    nn.GroupNorm: _group_norm,
}


def _surgery_for(m: nn.Module) -> Optional[Callable]:
    for klass in type(m).__mro__:
        if klass in SURGERY:
            return SURGERY[klass]
    return None


def _sizes(m: nn.Module):
    """(in, out) channel counts of a supported layer."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.in_channels, m.out_channels
    if isinstance(m, nn.GroupNorm):
        return m.num_channels, m.num_channels
    return m.num_features, m.num_features


_BATCH_NORMS = {'BatchNorm1d', 'BatchNorm2d', 'BatchNorm3d', 'SyncBatchNorm', '_BatchNormXd'}


def _kind(type_name: str) -> str:
    # a config's SyncBN is a BatchNorm on one process (mmengine's revert_sync_batchnorm)
    return 'BatchNorm' if type_name in _BATCH_NORMS else type_name


def apply_spec(model: nn.Module, spec: Dict) -> nn.Module:
    """Slice ``model``'s layers in place to the channels the spec keeps; return ``model``.

    Raises:
        SpecError: The spec is malformed or does not fit this model (a missing layer, another
            layer type, other channel counts).
    """
    validate(spec)
    modules = dict(model.named_modules())
    plan: List = []
    for name, e in spec['layers'].items():
        if e['type'] == 'Parameter':
            plan.append(_plan_param(model, modules, name, e))
            continue
        m = modules.get(name)
        if m is None:
            raise SpecError(f'the spec prunes layer {name!r}, which this model does not have: '
                            'the checkpoint or spec was made with another config')
        if _kind(type(m).__name__) != _kind(e['type']):
            raise SpecError(f'layer {name!r} is a {type(m).__name__} here but a {e["type"]} in '
                            'the spec: the spec was made with another config')
        fn = _surgery_for(m)
        if fn is None:
            raise SpecError(f'layer {name!r} of type {type(m).__name__} cannot be sliced')
        cin, cout = _sizes(m)
        idx = {}
        for field, size in (('in', cin), ('out', cout)):
            if field in e:
                if e[f'{field}_channels'] != size:
                    raise SpecError(f'layer {name!r} has {size} {field}put channels but the spec '
                                    f'expects {e[f"{field}_channels"]}: made with another config?')
                idx[field] = torch.tensor(from_ranges(e[field], size, name), dtype=torch.long)
        plan.append((fn, m, idx.get('in'), idx.get('out')))
    for fn, m, cin, cout in plan:
        fn(m, cin, cout)
    return model


def _slice_param(module: nn.Module, pname: str, dim: int, idx: torch.Tensor) -> None:
    setattr(module, pname, _sel(getattr(module, pname), dim, idx))


def _plan_param(model, modules, name, e):
    mod_name, _, pname = name.rpartition('.')
    m = modules.get(mod_name)
    p = getattr(m, pname, None) if m is not None else None
    if not isinstance(p, torch.Tensor):
        raise SpecError(f'the spec slices parameter {name!r}, which this model does not have')
    if 'out' not in e:
        raise SpecError(f'parameter {name!r} needs the "out" channels it keeps')
    dim = e.get('dim')
    if not isinstance(dim, int) or not 0 <= dim < p.dim() or p.shape[dim] != e['out_channels']:
        raise SpecError(f'parameter {name!r} of shape {tuple(p.shape)} does not fit the spec')
    idx = torch.tensor(from_ranges(e['out'], p.shape[dim], name), dtype=torch.long)
    return (lambda _m, _i, _o: _slice_param(m, pname, dim, _o)), m, None, idx
