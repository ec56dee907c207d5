"""Channel masks on a live model: pruning while training, before anything is sliced.

A group's mask is applied where its channels are *consumed* (the input of every conv/linear that
reads them), never where they are produced: zeroing a conv output before its BatchNorm would let
the BN shift bring a constant back, while zeroing a consumer's input is exactly removing the
channel. Masked channels then contribute nothing forward and get no gradient.

Where a consumer is a plain ``nn.Conv2d`` or ``nn.Linear`` whose weight is smaller than the
feature map it reads, the mask goes on the weight's input-channel slice instead: ``conv(x * m,
W) == conv(x, W * m)``, with the same gradients for every kept channel and none for the masked
ones, but a multiply the size of the weight instead of the activation, forward and backward.
"""
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .grouping import GroupSet, LayerChannels

MASK_ON = ('auto', 'input', 'weight')
# Exact types only: a subclass may use its weight differently (weight standardisation, ...).
_WEIGHT_MASKABLE = (nn.Conv2d, nn.Linear)


def _weight_masked_forward(self, x, *args, **kwargs):
    """``forward`` of a consumer whose input mask is on its weight (bound per instance).

    The masker's pre-hook leaves the weight mask for this one call in ``_gfp_wmask``; without
    it (the hook chose to mask the input, or nothing is masked) this is the class's forward.
    A bound method, so a deep copy of the model (an EMA copy) computes with its own weights.
    """
    wmask = self.__dict__.pop('_gfp_wmask', None)
    if wmask is None:
        return type(self).forward(self, x, *args, **kwargs)
    weight = self.weight * wmask
    if type(self) is nn.Conv2d:
        return self._conv_forward(x, weight, self.bias)
    return F.linear(x, weight, self.bias)


def _has_weight_masked_forward(module: nn.Module) -> bool:
    """Whether ``module.forward`` is the one :meth:`ChannelMasker.attach` bound (not another
    tool's replacement, which would ignore a weight mask)."""
    forward = module.__dict__.get('forward')
    return getattr(forward, '__func__', None) is _weight_masked_forward


class ChannelMasker:
    """Holds one keep-mask per prunable group and applies it with forward pre-hooks.

    Args:
        model (nn.Module): The traced model.
        groups (GroupSet): Its groups, from :func:`mmgfp.core.build_groups`.
        mask_on (str): Where a consumer's mask is applied: ``'input'`` (its input feature
            map), ``'weight'`` (the input-channel slice of the weight of plain Conv2d/Linear
            consumers, the input elsewhere) or ``'auto'`` (the weight where it has fewer
            elements than the feature map of that call). All give the same outputs and the
            same gradients for kept channels; they differ in cost. Defaults to ``'auto'``.
    """

    def __init__(self, model: nn.Module, groups: GroupSet, mask_on: str = 'auto'):
        if mask_on not in MASK_ON:
            raise ValueError(f'mask_on must be one of {MASK_ON}, got {mask_on!r}')
        self.mask_on = mask_on
        self.model = model
        self.groups = groups
        self.keep: Dict[str, torch.Tensor] = {
            g.key: torch.ones(g.units, dtype=torch.bool) for g in groups.prunable}
        self.tap: Optional[Callable[[str, torch.Tensor], None]] = None
        self._handles: List = []
        self._cache: Dict[str, torch.Tensor] = {}
        self._pruned: Dict[str, bool] = {}
        self._wcache: Dict[str, torch.Tensor] = {}
        self._overridden: List[nn.Module] = []
        self._layers = {name: lc for name, lc in groups.consumers.items()
                        if any(k in self.keep for k, _ in lc.segs)}

    # -- state -------------------------------------------------------------------------------
    def kept_units(self, key: str) -> torch.Tensor:
        return self.keep[key].nonzero().flatten()

    def kept_channels(self, key: str) -> torch.Tensor:
        g = self.groups.groups[key]
        if key not in self.keep:
            return torch.arange(g.channels)
        units = self.kept_units(key)
        return (units[:, None] * g.block + torch.arange(g.block)).flatten()

    def num_kept(self, key: str) -> int:
        g = self.groups.groups[key]
        return int(self.keep[key].sum()) * g.block if key in self.keep else g.channels

    def prune(self, key: str, unit: int) -> None:
        if not self.keep[key][unit]:
            raise ValueError(f'unit {unit} of group {key!r} is already pruned')
        if int(self.keep[key].sum()) <= 1:
            raise ValueError(f'group {key!r} cannot lose its last channel')
        self.keep[key][unit] = False
        self._changed()

    def set_keep(self, key: str, keep: torch.Tensor) -> None:
        if key not in self.keep:
            raise KeyError(f'{key!r} is not a prunable group of this model')
        keep = torch.as_tensor(keep, dtype=torch.bool).flatten()
        if keep.numel() != self.keep[key].numel() or not keep.any():
            raise ValueError(f'mask for group {key!r} must have {self.keep[key].numel()} units '
                             f'with at least one kept, got {keep.numel()} with {int(keep.sum())}')
        self.keep[key] = keep.clone()
        self._changed()

    def _changed(self) -> None:
        self._cache.clear()
        self._pruned.clear()
        self._wcache.clear()

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.keep.items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        missing = set(self.keep) - set(state)
        extra = set(state) - set(self.keep)
        if missing or extra:
            raise ValueError('saved masks do not match the model\'s groups: '
                             f'missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}')
        for k, v in state.items():
            self.set_keep(k, v)

    @property
    def pruned_anything(self) -> bool:
        return any(not bool(v.all()) for v in self.keep.values())

    # -- hooks -------------------------------------------------------------------------------
    def channel_mask(self, layer: str) -> torch.Tensor:
        """0/1 float mask over the input channel axis of a consumer layer."""
        mask = self._cache.get(layer)
        if mask is None:
            lc = self._layers[layer]
            parts = []
            for key, n in lc.segs:
                if key in self.keep:
                    block = self.groups.groups[key].block
                    parts.append(self.keep[key].repeat_interleave(block))
                else:
                    parts.append(torch.ones(n, dtype=torch.bool))
            mask = torch.cat(parts).repeat_interleave(lc.inner).float()
            self._cache[layer] = mask
        return mask

    def attach(self) -> None:
        """Register the forward pre-hooks that apply the masks (idempotent)."""
        if self._handles:
            return
        modules = dict(self.model.named_modules())
        for name in self._layers:
            module = modules[name]
            self._handles.append(module.register_forward_pre_hook(self._make_hook(name)))
            if self._weight_maskable(name, module):
                module.forward = _weight_masked_forward.__get__(module)
                self._overridden.append(module)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for module in self._overridden:
            module.__dict__.pop('forward', None)
            module.__dict__.pop('_gfp_wmask', None)
        self._overridden = []

    def _weight_maskable(self, name: str, module: nn.Module) -> bool:
        if self.mask_on == 'input' or type(module) not in _WEIGHT_MASKABLE:
            return False
        if 'forward' in module.__dict__:
            return False  # someone else already replaced it: leave it alone
        size = self._layers[name].size
        if type(module) is nn.Conv2d:
            return self._layers[name].ch_dim == 1 and size == module.in_channels
        return size == module.in_features

    def weight_mask(self, layer: str, module: nn.Module) -> torch.Tensor:
        """The consumer's channel mask shaped to multiply its weight (cached)."""
        wm = self._wcache.get(layer)
        w = module.weight
        if wm is None or wm.device != w.device or wm.dtype != w.dtype:
            mask = self.channel_mask(layer).to(device=w.device, dtype=w.dtype)
            if type(module) is nn.Linear:
                wm = mask.view(1, -1)
            else:  # weight (out, in/groups, kh, kw); output block g reads input block g
                g = module.groups
                out, per = w.shape[0], w.shape[1]
                wm = mask.view(g, 1, per).expand(g, out // g, per).reshape(out, per, 1, 1)
            self._wcache[layer] = wm
        return wm

    def _layer_pruned(self, layer: str) -> bool:
        """Whether any input channel of ``layer`` is masked (cached until the masks change)."""
        pruned = self._pruned.get(layer)
        if pruned is None:
            pruned = self._pruned[layer] = not bool(self.channel_mask(layer).all())
        return pruned

    def _make_hook(self, name: str):
        lc: LayerChannels = self._layers[name]

        def on_weight(module, x) -> bool:
            if not _has_weight_masked_forward(module):
                return False
            if type(module) is nn.Linear and lc.ch_dim != x.dim() - 1:
                return False
            return self.mask_on == 'weight' or module.weight.numel() < x.numel()

        def hook(module, args):
            if '_gfp_wmask' in module.__dict__:  # left by a call that failed before forward
                del module.__dict__['_gfp_wmask']
            if not args or not isinstance(args[0], torch.Tensor):
                return None
            tap = self.tap
            pruned = self._layer_pruned(name)
            if tap is None and not pruned:
                return None
            x = args[0]
            if pruned and on_weight(module, x):
                module.__dict__['_gfp_wmask'] = self.weight_mask(name, module)
                if tap is None:
                    return None
                y = x.view_as(x)  # masked channels get no gradient through the masked weight
            elif pruned:
                mask = self.channel_mask(name)
                if mask.device != x.device or mask.dtype != x.dtype:
                    mask = mask.to(device=x.device, dtype=x.dtype)
                shape = [1] * x.dim()
                # a Linear reads the last axis whatever the rank of this call's input
                shape[-1 if isinstance(module, nn.Linear) else lc.ch_dim] = -1
                y = x * mask.view(shape)
            else:
                # Nothing masked here: an alias gives this consumer its own gradient (what the
                # recorder needs) without copying the feature map.
                y = x.view_as(x)
            if tap is not None and y.requires_grad:
                tap(name, y)
            return (y, ) + tuple(args[1:])

        return hook
