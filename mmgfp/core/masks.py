"""Channel masks on a live model: pruning while training, before anything is sliced.

A group's mask is applied where its channels are *consumed* (the input of every conv/linear that
reads them), never where they are produced: zeroing a conv output before its BatchNorm would let
the BN shift bring a constant back, while zeroing a consumer's input is exactly removing the
channel. Masked channels then contribute nothing forward and get no gradient.
"""
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from .grouping import GroupSet, LayerChannels


class ChannelMasker:
    """Holds one keep-mask per prunable group and applies it with forward pre-hooks.

    Args:
        model (nn.Module): The traced model.
        groups (GroupSet): Its groups, from :func:`mmgfp.core.build_groups`.
    """

    def __init__(self, model: nn.Module, groups: GroupSet):
        self.model = model
        self.groups = groups
        self.keep: Dict[str, torch.Tensor] = {
            g.key: torch.ones(g.units, dtype=torch.bool) for g in groups.prunable}
        self.tap: Optional[Callable[[str, torch.Tensor], None]] = None
        self._handles: List = []
        self._cache: Dict[str, torch.Tensor] = {}
        self._pruned: Dict[str, bool] = {}
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
        self._cache.clear()
        self._pruned.clear()

    def set_keep(self, key: str, keep: torch.Tensor) -> None:
        if key not in self.keep:
            raise KeyError(f'{key!r} is not a prunable group of this model')
        keep = torch.as_tensor(keep, dtype=torch.bool).flatten()
        if keep.numel() != self.keep[key].numel() or not keep.any():
            raise ValueError(f'mask for group {key!r} must have {self.keep[key].numel()} units '
                             f'with at least one kept, got {keep.numel()} with {int(keep.sum())}')
        self.keep[key] = keep.clone()
        self._cache.clear()
        self._pruned.clear()

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
            self._handles.append(modules[name].register_forward_pre_hook(self._make_hook(name)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _layer_pruned(self, layer: str) -> bool:
        """Whether any input channel of ``layer`` is masked (cached until the masks change)."""
        pruned = self._pruned.get(layer)
        if pruned is None:
            pruned = self._pruned[layer] = not bool(self.channel_mask(layer).all())
        return pruned

    def _make_hook(self, name: str):
        lc: LayerChannels = self._layers[name]

        def hook(module, args):
            if not args or not isinstance(args[0], torch.Tensor):
                return None
            tap = self.tap
            pruned = self._layer_pruned(name)
            if tap is None and not pruned:
                return None
            x = args[0]
            if pruned:
                mask = self.channel_mask(name)
                if mask.device != x.device or mask.dtype != x.dtype:
                    mask = mask.to(device=x.device, dtype=x.dtype)
                shape = [1] * x.dim()
                shape[lc.ch_dim] = -1
                y = x * mask.view(shape)
            else:
                # Nothing masked here: an alias gives this consumer its own gradient (what the
                # recorder needs) without copying the feature map.
                y = x.view_as(x)
            if tap is not None and y.requires_grad:
                tap(name, y)
            return (y, ) + tuple(args[1:])

        return hook
