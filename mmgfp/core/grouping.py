"""Channel groups: channels that must be pruned together, found from one traced forward pass."""
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch.nn as nn

from .tracing import NETWORK_OUTPUT, LayerCall, trace


@dataclass
class LayerChannels:
    """How a layer's channel axis is made of groups: ``segs = ((group_key, length), ...)``."""
    segs: Tuple[Tuple[str, int], ...]
    inner: int = 1
    ch_dim: int = 1

    @property
    def size(self) -> int:
        return sum(n for _, n in self.segs) * self.inner


@dataclass
class ChannelGroup:
    """Coupled channels: one mask entry per unit of ``block`` channels.

    Attributes:
        key (str): Stable name, the first producer's module name.
        channels (int): Channels in the group.
        block (int): Channels per unit (> 1 for group convs and GroupNorm: whole groups go).
        producers (list[str]): Layers whose output channels are removed.
        consumers (list[str]): Layers whose input channels are removed.
        passthrough (list[str]): Norms and depth-wise/group convs carrying the channels through.
        params (list[str]): Other per-channel parameters sliced with the group.
        reasons (list[str]): Why the group cannot be pruned (empty when it can).
    """
    key: str
    channels: int
    block: int = 1
    producers: List[str] = field(default_factory=list)
    consumers: List[str] = field(default_factory=list)
    passthrough: List[str] = field(default_factory=list)
    params: List[str] = field(default_factory=list)
    reasons: List[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def units(self) -> int:
        return self.channels // self.block


@dataclass
class LayerInfo:
    """Static shape facts of a traced conv/linear layer."""
    kind: str  # 'conv', 'conv_transpose', 'linear'
    in_channels: int
    out_channels: int
    groups: int
    kernel: int


@dataclass
class GroupSet:
    """All groups of a model and how every traced layer's channels map onto them."""
    groups: Dict[str, ChannelGroup]
    producers: Dict[str, str]  # layer -> group key of its output channels
    consumers: Dict[str, LayerChannels]
    passthrough: Dict[str, LayerChannels]
    params: Dict[str, Tuple[LayerChannels, int]]
    layers: Dict[str, LayerInfo]
    layer_types: Dict[str, str]
    calls: List[LayerCall]
    num_samples: int

    @property
    def prunable(self) -> List[ChannelGroup]:
        return [g for g in self.groups.values() if g.prunable]

    def summary(self) -> str:
        n = len(self.prunable)
        return f'{len(self.groups)} channel groups, {n} prunable'


def layer_width(lc: Optional[LayerChannels], kept: Callable[[str], int]) -> Optional[int]:
    """Channels of a layer's channel axis when every group keeps ``kept(key)``."""
    if lc is None:
        return None
    return sum(kept(k) for k, _ in lc.segs) * lc.inner


def layer_io(gs: GroupSet, name: str, kept: Callable[[str], int]) -> Tuple[int, int, int]:
    """(in, out, in-per-group) channels of conv/linear layer ``name`` with ``kept`` channels
    per group (cost counts and latency lookups both read layer widths through this)."""
    info = gs.layers[name]
    if name in gs.passthrough:  # depth-wise / group conv: whole groups go
        width = layer_width(gs.passthrough[name], kept)
        return width, width, info.in_channels // info.groups
    cin = layer_width(gs.consumers.get(name), kept) or info.in_channels
    cout = kept(gs.producers[name]) if name in gs.producers else info.out_channels
    return cin, cout, cin // info.groups


def layer_info(mod: nn.Module, kernel: int = 1) -> Optional[LayerInfo]:
    """Kind, widths, groups and kernel of a conv/linear module; None for any other module."""
    if isinstance(mod, nn.modules.conv._ConvTransposeNd):  # the call's kernel is MACs-based
        return LayerInfo('conv_transpose', mod.in_channels, mod.out_channels, mod.groups,
                         mod.weight[0, 0].numel())
    if isinstance(mod, nn.modules.conv._ConvNd):
        return LayerInfo('conv', mod.in_channels, mod.out_channels, mod.groups, kernel)
    if isinstance(mod, nn.Linear):
        return LayerInfo('linear', mod.in_features, mod.out_features, 1, 1)
    return None


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def build_groups(model: nn.Module, forward_fn: Callable[[nn.Module], Any],
                 num_samples: Optional[int] = None,
                 skip: Sequence[str] = (),
                 output_fn: Optional[Callable[[nn.Module], Any]] = None) -> GroupSet:
    """Trace ``model`` and merge coupled channel spaces into groups.

    Args:
        model (nn.Module): The model (any mode; it is left unchanged).
        forward_fn (callable): ``forward_fn(model)`` runs one forward pass and returns outputs.
        num_samples (int, optional): Batch size fed by ``forward_fn``. Defaults to the batch of
            the first layer call.
        skip (Sequence[str]): ``fnmatch`` patterns of layer names; a group with a producer,
            consumer or norm matching one is kept whole. Defaults to ().
        output_fn (callable, optional): A second forward pass, ``output_fn(model)``, whose
            returned tensors are what the deployed model outputs (e.g. inference, when
            ``forward_fn`` returns a loss). It is traced only to find the layers whose output
            channels reach a returned tensor un-reduced: their groups are kept whole (pruning
            them would change the shape of an output). Defaults to None: the tensors
            ``forward_fn`` returns are the outputs.

    Returns:
        GroupSet: The groups, prunable or not, with reasons.
    """
    res = trace(model, forward_fn, num_samples)
    spaces = res.spaces
    members: Dict[int, Dict[str, List[str]]] = {}

    def member(sid: int, role: str, name: str) -> None:
        roles = members.setdefault(spaces.find(sid), {})
        lst = roles.setdefault(role, [])
        if name not in lst:
            lst.append(name)

    for name, sid in res.producers.items():
        member(sid, 'producers', name)
    for role, table in (('consumers', res.consumers), ('passthrough', res.passthrough)):
        for name, lay in table.items():
            for sid, _ in lay.segs:
                member(sid, role, name)
    for name, (lay, _) in res.params.items():
        for sid, _ in lay.segs:
            member(sid, 'params', name)

    keys: Dict[int, str] = {}
    groups: Dict[str, ChannelGroup] = {}
    for root in sorted(members, key=lambda r: _first_use(members[r])):
        roles, info = members[root], spaces.info(root)
        key = min(roles.get('producers', [])) if roles.get('producers') else \
            'input:' + _first_use(roles)
        while key in groups:
            key += "'"
        reasons = list(info.reasons)
        if not roles.get('producers'):
            reasons.append('no layer produces these channels (network input, or made by an op '
                           'the tracer cannot see)')
        elif not roles.get('consumers'):
            reasons.append('no layer reads these channels')
        if info.size % info.block:
            reasons.append(f'{info.size} channels do not split into blocks of {info.block}')
        everyone = [n for lst in roles.values() for n in lst]
        if skip and _matches_any(everyone, skip):
            reasons.append('skipped by a user pattern')
        keys[root] = key
        groups[key] = ChannelGroup(key, info.size, info.block, roles.get('producers', []),
                                   roles.get('consumers', []), roles.get('passthrough', []),
                                   roles.get('params', []), reasons)

    if output_fn is not None:
        for key in _output_groups(model, output_fn, keys, res.producers, spaces):
            groups[key].reasons.append(OUTPUT_REASON)

    def channels(lay) -> LayerChannels:
        return LayerChannels(tuple((keys[spaces.find(s)], n) for s, n in lay.segs), lay.inner,
                             lay.ch_dim)

    layers, types = {}, {}
    for call in res.calls:
        if call.module not in layers:
            info = layer_info(res.modules[call.module], call.kernel)
            if info is not None:
                layers[call.module] = info
    for name in list(res.producers) + list(res.consumers) + list(res.passthrough):
        types[name] = type(res.modules[name]).__name__
    for name in res.params:
        types[name] = 'Parameter'
    return GroupSet(
        groups=groups,
        producers={n: keys[spaces.find(s)] for n, s in res.producers.items()},
        consumers={n: channels(lay) for n, lay in res.consumers.items()},
        passthrough={n: channels(lay) for n, lay in res.passthrough.items()},
        params={n: (channels(lay), d) for n, (lay, d) in res.params.items()},
        layers=layers, layer_types=types, calls=res.calls, num_samples=res.num_samples)


OUTPUT_REASON = ("the channels reach an output of the model's output pass un-reduced "
                 '(pruning them would change the shape of that output)')


def _output_groups(model: nn.Module, output_fn: Callable[[nn.Module], Any],
                   keys: Dict[int, str], producers: Dict[str, int], spaces) -> List[str]:
    """Keys of the groups (of the main trace) whose producers' channels reach a tensor that
    ``output_fn`` returns (found in a trace of its own, matched by producer name)."""
    out = trace(model, output_fn)
    found = []
    for name, sid in out.producers.items():
        if NETWORK_OUTPUT in out.spaces.info(sid).reasons and name in producers:
            key = keys[spaces.find(producers[name])]
            if key not in found:
                found.append(key)
    return found


def _first_use(roles: Dict[str, List[str]]) -> str:
    for role in ('producers', 'passthrough', 'consumers', 'params'):
        if roles.get(role):
            return min(roles[role])
    return ''


def _matches_any(names: Sequence[str], patterns: Sequence[str]) -> bool:
    return any(_matches(n, patterns) for n in names)
