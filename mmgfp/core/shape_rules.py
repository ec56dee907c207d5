"""Tracer rules for ops that move, merge or split axes: view, permute, cat, split, indexing."""
import math
from typing import List, Optional, Sequence, Tuple

import torch

from .layout import Layout
from .op_rules import _arg, _norm_dim, _outs, rule


def _view_layout(lay: Layout, src: Sequence[int], dst: Sequence[int]) -> Optional[Layout]:
    """Where the channel axis lands when a view turns shape ``src`` into ``dst``."""
    ch, src, dst = lay.ch_dim, list(src), list(dst)
    if dst[:ch + 1] == src[:ch + 1]:
        return lay
    tail = len(src) - ch
    if len(dst) >= tail and dst[len(dst) - tail:] == src[ch:] and \
            math.prod(dst[:len(dst) - tail]) == math.prod(src[:ch]):
        return lay.moved(len(dst) - tail)
    if dst[:ch] == src[:ch] and len(dst) > ch:  # the channel axis absorbs following axes
        for j in range(1, len(src) - ch):
            merged = math.prod(src[ch + 1:ch + 1 + j])
            if dst[ch] == src[ch] * merged and dst[ch + 1:] == src[ch + 1 + j:]:
                return Layout(ch, lay.segs, lay.inner * merged)
    return None


@rule('property:shape', 'size', always=True)
def _shape(tr, name, args, kwargs, out):
    """Remember which tensor a ``torch.Size`` came from: a view to that shape (DPT's
    ``x.reshape(feature_shape)``) fixes its channel count to that tensor's."""
    if isinstance(out, torch.Size) and args and isinstance(args[0], torch.Tensor):
        tr.shape_sources[id(out)] = (id(args[0]), tr.layout(args[0]), out)


def _shape_source(tr, name, args, kwargs, x: torch.Tensor):
    """``(layout, 'what')`` of the other tensor whose shape a view takes (``view_as(other)``
    or a ``torch.Size`` read from ``other``); None for shapes of ``x`` itself or literals."""
    shape = _arg(args, kwargs, 1, 'other' if name.endswith('_as') else 'shape')
    if name in ('view', 'reshape') and shape is None:
        shape = kwargs.get('size')
    if isinstance(shape, torch.Tensor) and name.endswith('_as'):
        return None if shape is x else (tr.layout(shape), f"'{name}' another tensor")
    src = tr.shape_sources.get(id(shape)) if isinstance(shape, torch.Size) else None
    if src is None or src[0] == id(x):
        return None
    return src[1], f"'{name}' to the shape of another tensor"


def _couple_to_source(tr, name, args, kwargs, x, new: Layout) -> None:
    """A view to another tensor's shape keeps the channel count equal to that tensor's:
    couple both channel axes, or keep the channels whole where they do not line up."""
    src = _shape_source(tr, name, args, kwargs, x)
    if src is None:
        return
    other, what = src
    if other is None or other.ch_dim != new.ch_dim or not tr.union(new, other, what):
        tr.mark(new, f'{what} fixes the channel count to {new.size} (taken from a tensor '
                'whose channel axis is elsewhere or not traced)')


@rule('view', 'reshape', 'flatten', 'view_as', 'reshape_as', 'unflatten', 'squeeze',
      'squeeze_', 'unsqueeze', 'unsqueeze_', 'ravel', 'expand', 'expand_as', 'broadcast_to')
def _view(tr, name, args, kwargs, out):
    x = args[0] if args else kwargs['input']
    lay = tr.layout(x)
    if lay is None or not isinstance(out, torch.Tensor):
        return
    if name in ('expand', 'expand_as', 'broadcast_to'):
        new = lay.moved(lay.ch_dim + out.dim() - x.dim())
        if out.shape[new.ch_dim] != x.shape[lay.ch_dim]:
            return tr.mark(lay, f"'{name}' broadcasts across channels")
    else:
        new = _view_layout(lay, x.shape, out.shape)
    if new is None:
        return tr.mark(lay, f"'{name}' from {tuple(x.shape)} to {tuple(out.shape)} mixes the "
                       'channel axis with others')
    if name in ('view', 'reshape', 'view_as', 'reshape_as'):
        _couple_to_source(tr, name, args, kwargs, x, new)
    tr.set_layout(out, new)


def _perm_layout(name: str, args, kwargs, x: torch.Tensor, lay: Layout) -> Optional[Layout]:
    nd, ch = x.dim(), lay.ch_dim
    if name == 'permute':
        dims = args[1] if len(args) == 2 and not isinstance(args[1], int) else args[1:]
        dims = kwargs.get('dims', dims)
        return lay.moved([_norm_dim(d, nd) for d in dims].index(ch))
    if name in ('transpose', 'transpose_', 'swapaxes', 'swapdims', 't', 'property:T',
                'property:mT'):
        if name in ('t', 'property:T') and nd <= 2:
            a, b = 0, nd - 1
        elif name == 'property:T':
            return lay.moved(nd - 1 - ch)
        elif name == 'property:mT':
            a, b = nd - 2, nd - 1
        else:
            a, b = _norm_dim(_arg(args, kwargs, 1, 'dim0'), nd), _norm_dim(
                _arg(args, kwargs, 2, 'dim1'), nd)
        return lay.moved(b if ch == a else a if ch == b else ch)
    if name in ('movedim', 'moveaxis'):
        src, dst = _arg(args, kwargs, 1, 'source'), _arg(args, kwargs, 2, 'destination')
        if not isinstance(src, int):
            return None
        order = [d for d in range(nd) if d != _norm_dim(src, nd)]
        order.insert(_norm_dim(dst, nd), _norm_dim(src, nd))
        return lay.moved(order.index(ch))
    return None


@rule('permute', 'transpose', 'transpose_', 'swapaxes', 'swapdims', 't', 'property:T',
      'property:mT', 'movedim', 'moveaxis')
def _permute(tr, name, args, kwargs, out):
    x = args[0] if args else kwargs['input']
    lay = tr.layout(x)
    new = _perm_layout(name, args, kwargs, x, lay)
    if new is None or not isinstance(out, torch.Tensor):
        return tr.mark(lay, f"'{name}' with arguments the tracer does not follow")
    tr.set_layout(out, new)


@rule('repeat')
def _repeat(tr, name, args, kwargs, out):
    x = args[0]
    lay = tr.layout(x)
    reps = list(args[1]) if len(args) == 2 and not isinstance(args[1], int) else list(args[1:])
    lead = len(reps) - x.dim()
    r = reps[lead + lay.ch_dim]
    if r != 1 and lay.inner != 1:
        return tr.mark(lay, "'repeat' of flattened channels")
    tr.set_layout(out, Layout(lay.ch_dim + lead, lay.segs * r, lay.inner))


def _fresh(tr, t: torch.Tensor, ch: int, reason: str) -> Layout:
    sid = tr.spaces.new(t.shape[ch])
    tr.spaces.mark(sid, reason)
    return Layout(ch, ((sid, t.shape[ch]), ))


@rule('cat', 'concat', 'concatenate', 'stack', 'hstack', 'vstack')
def _cat(tr, name, args, kwargs, out):
    tensors = list(_arg(args, kwargs, 0, 'tensors'))
    dim = _arg(args, kwargs, 1, 'dim', 0)
    if name in ('hstack', 'vstack'):
        return tr.mark_all(tensors, f"'{name}'")
    lays = [tr.layout(t) for t in tensors]
    traced = [(t, lay) for t, lay in zip(tensors, lays) if lay is not None]
    chs = {lay.ch_dim for _, lay in traced}
    ndim = tensors[0].dim()
    if len(chs) != 1 or any(t.dim() != ndim for t in tensors):
        return tr.mark_all(tensors, f"'{name}' of tensors with channels on different axes")
    ch = chs.pop()
    dim = _norm_dim(dim, ndim + (name == 'stack'))
    if name != 'stack' and dim == ch:
        if any(lay is not None and lay.inner != 1 for lay in lays):
            return tr.mark_all(tensors, f"'{name}' of flattened channels")
        segs = []
        for t, lay in zip(tensors, lays):
            lay = lay or _fresh(tr, t, ch, 'channels concatenated from an untraced tensor')
            segs.extend(lay.segs)
        return tr.set_layout(out, Layout(ch, tuple(segs)))
    if len(traced) != len(tensors):
        return tr.mark_all(tensors, f"'{name}' joins traced channels with untraced ones")
    for _, lay in traced[1:]:
        tr.union(traced[0][1], lay, f"'{name}'")
    new_ch = ch + 1 if name == 'stack' and dim <= ch else ch
    tr.set_layout(out, traced[0][1].moved(new_ch))


def _slice_segs(lay: Layout, start: int, stop: int) -> Optional[Tuple]:
    """The segments covering channels [start, stop), or None if a segment would be cut."""
    if lay.inner != 1:
        return None
    segs, off = [], 0
    for sid, n in lay.segs:
        lo, hi = max(start, off), min(stop, off + n)
        if lo < hi:
            if lo != off or hi != off + n:
                return None
            segs.append((sid, n))
        off += n
    return tuple(segs)


def _pieces(tr, name, x, lay, outs: List[torch.Tensor], dim: int) -> None:
    if dim != lay.ch_dim:
        for o in outs:
            if o.dim() == x.dim():
                tr.set_layout(o, lay)
            elif name == 'unbind':
                tr.set_layout(o, lay.moved(lay.ch_dim - (dim < lay.ch_dim)))
        return
    if name == 'unbind':
        return tr.mark(lay, "'unbind' along channels")
    off, pieces = 0, []
    for o in outs:
        segs = _slice_segs(lay, off, off + o.shape[dim])
        if segs is None:
            return tr.mark(lay, f"'{name}' cuts through the channels of one layer")
        pieces.append(segs)
        off += o.shape[dim]
    for o, segs in zip(outs, pieces):
        tr.set_layout(o, Layout(dim, segs))


@rule('split', 'split_with_sizes', 'chunk', 'unbind', 'tensor_split', 'narrow')
def _split(tr, name, args, kwargs, out):
    x = args[0] if args else kwargs['input']
    lay = tr.layout(x)
    if name == 'narrow':
        dim = _arg(args, kwargs, 1, 'dim')
    elif name == 'unbind':
        dim = _arg(args, kwargs, 1, 'dim', 0)
    else:
        dim = _arg(args, kwargs, 2, 'dim', 0)
    if name == 'narrow' and _norm_dim(dim, x.dim()) == lay.ch_dim:
        start = _arg(args, kwargs, 2, 'start')
        segs = _slice_segs(lay, start, start + _arg(args, kwargs, 3, 'length'))
        if segs is None:
            return tr.mark(lay, "'narrow' cuts through the channels of one layer")
        return tr.set_layout(out, Layout(lay.ch_dim, segs))
    _pieces(tr, name, x, lay, _outs(out), _norm_dim(dim, x.dim()))


@rule('__getitem__')
def _getitem(tr, name, args, kwargs, out):
    x, idx = args[0], args[1]
    lay = tr.layout(x)
    if not isinstance(out, torch.Tensor):
        return tr.mark(lay, 'indexing that reads single values')
    if not isinstance(idx, tuple):
        idx = (idx, )
    if any(isinstance(e, (torch.Tensor, list)) for e in idx):
        if len(idx) == 1 and lay.ch_dim > 0:  # rows selected by a mask or index tensor
            return tr.set_layout(out, lay)
        return tr.mark(lay, 'advanced indexing the tracer does not follow')
    used = sum(e is not None and e is not Ellipsis for e in idx)
    src = dst = 0
    for e in idx:
        if e is Ellipsis:
            n = x.dim() - used
            if src <= lay.ch_dim < src + n:
                return tr.set_layout(out, lay.moved(dst + lay.ch_dim - src))
            src, dst = src + n, dst + n
        elif e is None:
            dst += 1
        elif isinstance(e, slice):
            if src == lay.ch_dim:
                start, stop, step = e.indices(x.shape[src])
                if step != 1:
                    return tr.mark(lay, 'strided slicing of channels')
                segs = _slice_segs(lay, start, stop)
                if segs is None:
                    return tr.mark(lay, 'slicing cuts through the channels of one layer')
                return tr.set_layout(out, Layout(dst, segs, lay.inner))
            src, dst = src + 1, dst + 1
        else:  # an integer index removes an axis
            if src == lay.ch_dim:
                return tr.mark(lay, 'indexing picks a single channel')
            src += 1
    tr.set_layout(out, lay.moved(dst + lay.ch_dim - src))
