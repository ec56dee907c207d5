"""Per-op rules of the tracer: how each torch op moves, joins or uses channel spaces.

A rule is ``fn(tracer, name, args, kwargs, out)``, registered under the op's public name (the
``__name__`` of the torch function or tensor method, e.g. ``'conv2d'``, ``'add_'``, ``'view'``).
An op with no rule that touches traced channels makes them unprunable; rules that are unsure do
the same. Never guess: a wrong guess is a silently wrong compact model.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .layout import LayerCall, Layout

RULES: Dict[str, Callable] = {}

# Ops that only read metadata or make value-independent tensors: they use no channel values.
META = {
    'dim', 'ndimension', 'numel', 'nelement', 'is_contiguous', 'stride', 'element_size',
    'data_ptr', 'get_device', 'is_floating_point', 'is_complex', '__len__', '__hash__', '__repr__',
    '__format__', 'new_zeros', 'new_ones', 'new_empty', 'new_full', 'zeros_like', 'ones_like',
    'empty_like', 'full_like', 'rand_like', 'randn_like', 'register_hook', 'retain_grad',
    'has_names', 'storage_offset', 'untyped_storage', '__reduce_ex__', '__deepcopy__', 'type',
    'property:dtype', 'property:device', 'property:ndim', 'property:requires_grad',
    'property:is_cuda', 'property:grad_fn', 'property:is_leaf', 'property:layout', 'property:names',
    'property:is_sparse', 'property:is_quantized', 'property:is_meta', 'property:_version',
    'property:is_mkldnn', 'property:itemsize', 'property:nbytes', 'property:grad',
    'property:is_nested', 'property:_base', 'property:output_nr', 'property:_cdata',
}


def rule(*names: str, always: bool = False):
    """Register ``fn`` for ``names``; ``always`` runs it even when no input is traced."""

    def deco(fn):
        fn.always = always
        for n in names:
            RULES[n] = fn
        return fn

    return deco


def _arg(args: Sequence, kwargs: Dict, i: int, key: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(key, default)


def _first_tensor(args, kwargs) -> Optional[torch.Tensor]:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a
    return None


def _outs(out: Any) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [o for o in out if isinstance(o, torch.Tensor)]
    return []


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


@rule(*sorted(META))
def _meta(tr, name, args, kwargs, out):
    if name == 'type' and isinstance(out, torch.Tensor):  # x.type(dtype) converts
        _unary(tr, name, args, kwargs, out)


# -- element-wise ---------------------------------------------------------------------------
UNARY = (
    'relu', 'relu_', 'relu6', 'hardtanh', 'hardtanh_', 'sigmoid', 'sigmoid_', 'tanh', 'tanh_',
    'hardswish', 'hardswish_', 'hardsigmoid', 'hardsigmoid_', 'silu', 'silu_', 'gelu',
    'leaky_relu', 'leaky_relu_', 'elu', 'elu_', 'selu', 'selu_', 'celu', 'mish', 'softplus',
    'softsign', 'logsigmoid', 'threshold', 'threshold_', 'rrelu', 'dropout', 'dropout_',
    'dropout1d', 'dropout2d', 'dropout3d', 'alpha_dropout', 'feature_alpha_dropout', 'clamp',
    'clamp_', 'clip', 'clip_', 'clamp_min', 'clamp_max', 'clamp_min_', 'clamp_max_', 'clone',
    'contiguous', 'float', 'half', 'double', 'bfloat16', 'to', 'type_as', 'detach', 'detach_',
    'exp', 'exp_', 'log', 'log_', 'log2', 'log1p', 'expm1', 'sqrt', 'sqrt_', 'rsqrt', 'neg',
    'neg_', '__neg__', '__pos__', 'abs', 'abs_', 'square', 'sign', 'reciprocal', 'reciprocal_',
    'floor', 'ceil', 'round', 'trunc', 'sin', 'cos', 'erf', 'nan_to_num', 'requires_grad_',
    'property:data', 'cpu', 'cuda', 'sigmoid_focal_placeholder',
)


@rule(*UNARY)
def _unary(tr, name, args, kwargs, out):
    x = _first_tensor(args, kwargs)
    lay = tr.layout(x)
    others = [t for t in list(args[1:]) + list(kwargs.values()) if tr.layout(t) is not None
              and t is not x]
    if others and name not in ('type_as', 'to'):  # e.g. clamp(x, min=traced): as binary
        return _binary(tr, name, args, kwargs, out)
    if lay is None:
        return
    if isinstance(out, torch.Tensor) and out.shape == x.shape:
        tr.set_layout(out, lay)
    else:
        tr.mark(lay, f"'{name}' changed the shape of a tensor")


BINARY = (
    'add', 'add_', '__add__', '__radd__', '__iadd__', 'sub', 'sub_', '__sub__', '__rsub__',
    '__isub__', 'rsub', 'mul', 'mul_', '__mul__', '__rmul__', '__imul__', 'div', 'div_',
    '__truediv__', '__rtruediv__', '__itruediv__', 'true_divide', 'maximum', 'minimum', 'pow',
    'pow_', '__pow__', '__rpow__', 'fmod', 'remainder', 'atan2', 'hypot', 'lerp', 'where',
    'addcmul', 'addcdiv', 'gt', 'lt', 'ge', 'le', 'eq', 'ne', '__gt__', '__lt__', '__ge__',
    '__le__', '__eq__', '__ne__', 'masked_fill', 'masked_fill_', 'logical_and', 'logical_or',
    '__and__', '__or__', 'max_binary', 'min_binary',
)


def _add_param(tr, name: str, lay: Layout, dim: int) -> None:
    """Record a per-channel parameter; one used with several tensors couples their channels."""
    prev = tr.result.params.get(name)
    if prev is None:
        tr.result.params[name] = (lay, dim)
    elif prev[1] != dim:
        reason = f'parameter {name} is indexed by channels along different axes'
        tr.mark(prev[0], reason)
        tr.mark(lay, reason)
    else:
        tr.union(prev[0], lay, f'shared parameter {name}')


@rule(*BINARY)
def _binary(tr, name, args, kwargs, out):
    """Element-wise ops with broadcasting: traced operands couple channel by channel."""
    if not isinstance(out, torch.Tensor):
        return tr.mark_all(args, f"'{name}' returned no tensor")
    operands = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    traced, pos = [], set()
    for t in operands:
        lay = tr.layout(t)
        if lay is not None:
            traced.append((t, lay))
            pos.add(lay.ch_dim + out.dim() - t.dim())
    if len(pos) != 1:
        return tr.mark_all(operands, f"'{name}' combines channels from different axes")
    p = pos.pop()
    full = []
    for t, lay in traced:
        if t.shape[lay.ch_dim] == out.shape[p]:
            full.append(lay)
        else:
            tr.mark(lay, f"'{name}' broadcasts these channels across other channels")
    for t in operands:
        if tr.layout(t) is not None:
            continue
        d = p - (out.dim() - t.dim())
        if d < 0 or t.shape[d] == 1 or out.shape[p] == 1:
            continue  # broadcast along the channel axis: not channel-specific
        owner = tr.owner_of(t)
        if owner is not None and full and full[0].inner == 1:
            _add_param(tr, f'{owner[0]}.{owner[1]}' if owner[0] else owner[1], full[0], d)
            tr.result.modules.setdefault(owner[0], owner[2])
        else:
            tr.mark_all(operands, f"'{name}' combines channels with a per-channel tensor that "
                        'is not a module parameter or buffer')
            return
    for lay in full[1:]:
        tr.union(full[0], lay, f"'{name}'")
    if full:
        tr.set_layout(out, full[0].moved(p))


@rule('prelu')
def _prelu(tr, name, args, kwargs, out):
    x, w = _arg(args, kwargs, 0, 'input'), _arg(args, kwargs, 1, 'weight')
    lay = tr.layout(x)
    if lay is None or lay.ch_dim != 1 or lay.inner != 1:
        return tr.mark(lay, "'prelu' on a layout it cannot index")
    owner = tr.owner_of(w)
    if w.numel() > 1:
        if owner is None:
            return tr.mark(lay, "'prelu' with a weight that is not a parameter")
        _add_param(tr, f'{owner[0]}.{owner[1]}' if owner[0] else owner[1], lay, 0)
    tr.set_layout(out, lay)


# -- layers ---------------------------------------------------------------------------------
def _layer(tr, weight, types, fn_name) -> Optional[str]:
    owner = tr.owner_of(weight)
    if (owner is None or owner[1] != 'weight' or not isinstance(owner[2], types)
            or not tr.module_in_forward(owner[0])):
        return None
    return owner[0]


def _produce(tr, mod, out, ch_dim, reason=None):
    res = tr.result
    sid = res.producers.get(mod)
    if sid is None:
        sid = res.producers[mod] = tr.spaces.new(out.shape[ch_dim])
    if reason:
        tr.spaces.mark(sid, reason)
    tr.set_layout(out, Layout(ch_dim, ((sid, out.shape[ch_dim]), )))


def _consume(tr, mod, lay):
    res = tr.result
    if lay is None:
        tr.untraced_inputs.add(mod)
        tr.mark(res.consumers.get(mod), f'{mod} also reads an untraced input')
        return
    if mod in tr.untraced_inputs:
        tr.mark(lay, f'{mod} also reads an untraced input')
    prev = res.consumers.get(mod)
    if prev is None:
        res.consumers[mod] = lay
    else:
        tr.union(prev, lay, f'shared layer {mod}')


def _passthrough(tr, mod, lay, out, block, ch_dim=1):
    """A layer whose output channel i depends only on input channel i (or its block)."""
    res = tr.result
    if lay is None:  # channels follow the network input: nothing to prune
        sid = tr.untraced_passthrough.get(mod)
        if sid is None:
            sid = tr.untraced_passthrough[mod] = tr.spaces.new(out.shape[ch_dim])
            tr.spaces.mark(sid, f'{mod} maps untraced input channels one to one')
        tr.set_layout(out, Layout(ch_dim, ((sid, out.shape[ch_dim]), )))
        return
    if block > 1:
        off = 0
        for sid, n in lay.segs:
            if off % block or n % block:
                tr.mark(lay, f'{mod}: channel blocks of {block} straddle concatenated inputs')
                break
            tr.spaces.constrain_block(sid, block)
            off += n
    prev = res.passthrough.get(mod)
    if prev is None:
        res.passthrough[mod] = lay
    else:
        tr.union(prev, lay, f'shared layer {mod}')
    tr.set_layout(out, lay)


def _record_call(tr, mod, out, kernel, ch_dim):
    batch = out.shape[0] if out.dim() > 1 else 1
    elems = out.numel() // max(batch * out.shape[ch_dim], 1)
    tr.result.calls.append(LayerCall(mod, elems, kernel, batch))


@rule('conv1d', 'conv2d', 'conv3d', always=True)
def _conv(tr, name, args, kwargs, out):
    x, w = _arg(args, kwargs, 0, 'input'), _arg(args, kwargs, 1, 'weight')
    groups = _arg(args, kwargs, 6, 'groups', 1)
    lay = tr.layout(x)
    conv_types = (nn.modules.conv._ConvNd, )
    mod = _layer(tr, w, conv_types, name)
    if mod is None or isinstance(tr.result.modules[mod], nn.modules.conv._ConvTransposeNd):
        return tr.mark(lay, f"'{name}' with a weight that is not the parameter of a Conv module "
                       'called from its own forward')
    if lay is not None and (lay.ch_dim != 1 or lay.inner != 1):
        tr.mark(lay, f'{mod} reads channels from an unexpected axis')
        lay = None
    _record_call(tr, mod, out, w[0, 0].numel(), 1)
    cin, cout = x.shape[1], out.shape[1]
    if groups == 1:
        _consume(tr, mod, lay)
        _produce(tr, mod, out, 1)
    elif cin == cout:
        _passthrough(tr, mod, lay, out, cin // groups)
    else:
        tr.mark(lay, f'{mod}: grouped conv whose input and output widths differ')
        _produce(tr, mod, out, 1, f'{mod}: grouped conv whose input and output widths differ')


@rule('conv_transpose1d', 'conv_transpose2d', 'conv_transpose3d', always=True)
def _conv_transpose(tr, name, args, kwargs, out):
    x, w = _arg(args, kwargs, 0, 'input'), _arg(args, kwargs, 1, 'weight')
    groups = _arg(args, kwargs, 6, 'groups', 1)
    lay = tr.layout(x)
    mod = _layer(tr, w, (nn.modules.conv._ConvTransposeNd, ), name)
    if mod is None or groups != 1:
        reason = f"'{name}' that is grouped or not called from a ConvTranspose module"
        tr.mark(lay, reason)
        if mod is not None:
            _produce(tr, mod, out, 1, reason)
        return
    if lay is not None and (lay.ch_dim != 1 or lay.inner != 1):
        tr.mark(lay, f'{mod} reads channels from an unexpected axis')
        lay = None
    # Every input position meets every kernel tap: MACs per output element are the kernel
    # scaled by in/out positions (a stride-2 deconv has 4x more outputs than inputs).
    _record_call(tr, mod, out, w[0, 0].numel() * x[0, 0].numel() / out[0, 0].numel(), 1)
    _consume(tr, mod, lay)
    _produce(tr, mod, out, 1)


@rule('linear', always=True)
def _linear(tr, name, args, kwargs, out):
    x, w = _arg(args, kwargs, 0, 'input'), _arg(args, kwargs, 1, 'weight')
    lay = tr.layout(x)
    mod = _layer(tr, w, (nn.Linear, ), name)
    if mod is None:
        return tr.mark(lay, "'linear' with a weight that is not the parameter of an nn.Linear "
                       'called from its own forward')
    last = x.dim() - 1
    if lay is not None and lay.ch_dim != last:
        tr.mark(lay, f'{mod} reads channels from an unexpected axis')
        lay = None
    _record_call(tr, mod, out, 1, out.dim() - 1)
    _consume(tr, mod, lay)
    _produce(tr, mod, out, out.dim() - 1)


def _norm_module(tr, *tensors):
    for t in tensors:
        owner = tr.owner_of(t)
        if owner is not None and tr.module_in_forward(owner[0]):
            return owner[0], owner[2]
    return None, None


@rule('batch_norm', 'instance_norm')
def _batch_norm(tr, name, args, kwargs, out):
    x = _arg(args, kwargs, 0, 'input')
    mean, var = _arg(args, kwargs, 1, 'running_mean'), _arg(args, kwargs, 2, 'running_var')
    w, b = _arg(args, kwargs, 3, 'weight'), _arg(args, kwargs, 4, 'bias')
    lay = tr.layout(x)
    if lay.ch_dim != 1 or lay.inner != 1:
        return tr.mark(lay, f"'{name}' over an unexpected axis")
    mod_name, mod = _norm_module(tr, w, mean, b, var)
    if mod is None:
        if all(t is None for t in (mean, var, w, b)):
            return tr.set_layout(out, lay)
        return tr.mark(lay, f"'{name}' whose statistics are not a norm module's buffers")
    if not isinstance(mod, (nn.modules.batchnorm._NormBase, )):
        return tr.mark(lay, f'{mod_name}: norm layer type {type(mod).__name__} is not supported')
    _passthrough(tr, mod_name, lay, out, 1)


@rule('group_norm')
def _group_norm(tr, name, args, kwargs, out):
    x, groups = _arg(args, kwargs, 0, 'input'), _arg(args, kwargs, 1, 'num_groups')
    w = _arg(args, kwargs, 2, 'weight')
    lay = tr.layout(x)
    if lay.ch_dim != 1 or lay.inner != 1:
        return tr.mark(lay, "'group_norm' over an unexpected axis")
    mod_name, mod = _norm_module(tr, w, _arg(args, kwargs, 3, 'bias'))
    if not isinstance(mod, nn.GroupNorm):
        return tr.mark(lay, "'group_norm' not called from an nn.GroupNorm module (its group "
                       'count could not be updated)')
    _passthrough(tr, mod_name, lay, out, x.shape[1] // groups)


@rule('layer_norm', 'rms_norm')
def _layer_norm(tr, name, args, kwargs, out):
    x, shape = _arg(args, kwargs, 0, 'input'), _arg(args, kwargs, 1, 'normalized_shape')
    lay = tr.layout(x)
    nd = 1 if isinstance(shape, int) else len(shape)
    if lay.ch_dim >= x.dim() - nd:
        return tr.mark(lay, f"'{name}' normalises across channels: removing one changes the "
                       'others')
    tr.set_layout(out, lay)


# -- pooling and resampling (channels first) ----------------------------------------------
@rule('max_pool1d', 'max_pool2d', 'max_pool3d', 'avg_pool1d', 'avg_pool2d', 'avg_pool3d',
      'adaptive_avg_pool1d', 'adaptive_avg_pool2d', 'adaptive_avg_pool3d', 'adaptive_max_pool1d',
      'adaptive_max_pool2d', 'adaptive_max_pool3d', 'max_pool1d_with_indices',
      'max_pool2d_with_indices', 'max_pool3d_with_indices', 'adaptive_max_pool2d_with_indices',
      'lp_pool1d', 'lp_pool2d', 'interpolate', 'upsample', 'upsample_nearest',
      'upsample_bilinear', 'grid_sample', 'fractional_max_pool2d')
def _pool(tr, name, args, kwargs, out):
    x = _arg(args, kwargs, 0, 'input')
    lay = tr.layout(x)
    if name == 'grid_sample':
        tr.mark(tr.layout(_arg(args, kwargs, 1, 'grid')), "'grid_sample' grid")
    if lay is None:
        return
    if lay.ch_dim != 1 or lay.inner != 1:
        return tr.mark(lay, f"'{name}' with channels on an unexpected axis")
    for o in _outs(out):
        if o.dim() == x.dim() and o.shape[1] == x.shape[1] and o.is_floating_point():
            tr.set_layout(o, lay)


@rule('pad')
def _pad(tr, name, args, kwargs, out):
    x, pad = _arg(args, kwargs, 0, 'input'), _arg(args, kwargs, 1, 'pad')
    lay = tr.layout(x)
    if lay.ch_dim >= x.dim() - len(pad) // 2:
        return tr.mark(lay, "'pad' along the channel axis")
    tr.set_layout(out, lay)


# -- reductions and dim-wise ops ------------------------------------------------------------
def _dims(d, ndim) -> Optional[List[int]]:
    if d is None:
        return None
    if isinstance(d, int):
        return [_norm_dim(d, ndim)]
    return [_norm_dim(int(i), ndim) for i in d]


@rule('mean', 'sum', 'amax', 'amin', 'max', 'min', 'std', 'var', 'prod', 'logsumexp', 'nansum',
      'nanmean', 'median', 'argmax', 'argmin', 'all', 'any', 'norm', 'count_nonzero',
      'std_mean', 'var_mean')
def _reduce(tr, name, args, kwargs, out):
    x = _arg(args, kwargs, 0, 'input')
    if name in ('max', 'min') and isinstance(_arg(args, kwargs, 1, 'other'), torch.Tensor):
        return _binary(tr, name, args, kwargs, out)
    lay = tr.layout(x)
    if lay is None:
        return
    if name == 'norm':
        dim, keep = _arg(args, kwargs, 2, 'dim'), _arg(args, kwargs, 3, 'keepdim', False)
    else:
        dim, keep = _arg(args, kwargs, 1, 'dim'), _arg(args, kwargs, 2, 'keepdim', False)
    dims = _dims(dim, x.dim()) if not isinstance(dim, torch.Tensor) else None
    if dims is None or lay.ch_dim in dims or (lay.inner > 1 and lay.ch_dim in dims):
        return tr.mark(lay, f"'{name}' reduces over channels")
    ch = lay.ch_dim if keep else lay.ch_dim - sum(d < lay.ch_dim for d in dims)
    outs = _outs(out)
    if outs and name not in ('argmax', 'argmin'):
        tr.set_layout(outs[0], lay.moved(ch))


@rule('softmax', 'log_softmax', 'softmin', 'cumsum', 'cumprod', 'flip', 'roll', 'normalize',
      'sort', 'argsort', 'glu')
def _along_dim(tr, name, args, kwargs, out):
    x = _arg(args, kwargs, 0, 'input')
    lay = tr.layout(x)
    default = {'normalize': 1, 'glu': -1}.get(name)
    if name == 'normalize':
        dim = _arg(args, kwargs, 2, 'dim', 1)
    elif name in ('flip', 'roll'):
        dim = kwargs.get('dims', args[1] if len(args) > 1 else None)
        if name == 'roll':
            dim = kwargs.get('dims', args[2] if len(args) > 2 else None)
    else:
        dim = _arg(args, kwargs, 1, 'dim', default)
    dims = _dims(dim, x.dim())
    if dims is None or lay.ch_dim in dims or lay.inner > 1:
        return tr.mark(lay, f"'{name}' mixes or reorders channels")
    outs = _outs(out)
    if outs and outs[0].shape == x.shape and name not in ('argsort', ):
        tr.set_layout(outs[0], lay)
