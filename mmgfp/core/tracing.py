"""Trace one forward pass and record how channel spaces flow between layers.

The tracer is a :class:`torch.overrides.TorchFunctionMode`: every torch function, tensor method and
operator called during the forward pass goes through :meth:`_Tracer.__torch_function__`, which runs
it and then applies a small rule for it (see :mod:`mmgfp.core.op_rules`). Rules rest on public
behaviour only: function names of the torch API, module types, parameter identity, tensor shapes.

Anything the rules do not understand makes the channels involved unprunable, with the op named in
the reason. Ops the mode cannot see at all (custom autograd functions, C++ extensions such as
``mmcv.ops``) are caught afterwards by walking the autograd graph from the outputs: a graph node
that no seen op created, reading a traced tensor, makes that tensor's channels unprunable.
"""
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .layout import LayerCall, Layout, SpaceSet  # noqa: F401  (LayerCall: public here too)


@dataclass
class TraceResult:
    """What one traced forward pass found. Consumed by :func:`mmgfp.core.grouping.build_groups`."""
    spaces: SpaceSet
    # module name -> its output space id (conv/linear producers)
    producers: Dict[str, int] = field(default_factory=dict)
    # module name -> input layout (conv/linear consumers)
    consumers: Dict[str, Layout] = field(default_factory=dict)
    # module name -> layout of channels passed through (norms, depth-wise and group convs)
    passthrough: Dict[str, Layout] = field(default_factory=dict)
    # 'module.param' -> (layout, dim of the param that is indexed by channels)
    params: Dict[str, Tuple[Layout, int]] = field(default_factory=dict)
    calls: List[LayerCall] = field(default_factory=list)
    modules: Dict[str, nn.Module] = field(default_factory=dict)
    num_samples: int = 1


def flatten(obj: Any) -> Iterator[Any]:
    """The leaves of nested lists, tuples and dicts (dict values in order), depth first."""
    if isinstance(obj, (list, tuple)):
        for o in obj:
            yield from flatten(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from flatten(o)
    else:
        yield obj


def _tensors(obj: Any) -> List[torch.Tensor]:
    return [t for t in flatten(obj) if isinstance(t, torch.Tensor)]


NETWORK_OUTPUT = 'network output'
_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
_LAYER_OPS = {'conv1d', 'conv2d', 'conv3d', 'conv_transpose1d', 'conv_transpose2d',
              'conv_transpose3d', 'linear'}
# ops that read a tensor's metadata or make an independent one of its shape
_META_OPS = {'size', 'dim', 'numel', 'ndimension', 'nelement', 'stride', 'is_contiguous',
             'new_zeros', 'new_ones', 'new_empty', 'new_full', 'zeros_like', 'ones_like',
             'empty_like', 'full_like', 'type', 'get_device', 'is_floating_point',
             'data_ptr', 'element_size', '__hash__', '__len__', '__repr__', '__format__'}


class _Tracer(TorchFunctionMode):

    def __init__(self, model: nn.Module):
        super().__init__()
        from . import op_rules, shape_rules  # noqa: F401  (rules register themselves)
        self.rules = op_rules.RULES
        self.result = TraceResult(spaces=SpaceSet())
        self.spaces = self.result.spaces
        self.layouts: Dict[int, Layout] = {}
        self._alive: List[torch.Tensor] = []  # keeps ids of traced tensors unique
        self.node_spaces: Dict[Any, List[Layout]] = defaultdict(list)
        self.claimed: set = set()
        self.owner: Dict[int, Tuple[str, str, nn.Module]] = {}
        self.active: Dict[str, int] = defaultdict(int)
        self.vouched = 0
        self.untraced_inputs: set = set()
        self.untraced_passthrough: Dict[str, int] = {}
        self.vouch_stop: List[set] = []
        self.foreign_uses: Dict[str, str] = {}  # layer -> op reading its weight elsewhere
        # id of a torch.Size -> (id of the tensor it was read from, its layout, the Size)
        self.shape_sources: Dict[int, Tuple[int, Optional[Layout], torch.Size]] = {}
        for mname, mod in model.named_modules():
            self.result.modules[mname] = mod
            for pname, p in list(mod.named_parameters(recurse=False)) + list(
                    mod.named_buffers(recurse=False)):
                if p is not None:
                    self.owner.setdefault(id(p), (mname, pname, mod))

    # -- bookkeeping used by the rules -------------------------------------------------------
    def layout(self, t: Any) -> Optional[Layout]:
        if isinstance(t, torch.Tensor):
            return self.layouts.get(id(t))
        return None

    def set_layout(self, t: torch.Tensor, layout: Layout) -> None:
        if t.dim() <= layout.ch_dim or t.shape[layout.ch_dim] != layout.size:
            self.mark(layout, f'internal: layout size mismatch on {tuple(t.shape)}')
            return
        self.layouts[id(t)] = layout
        self._alive.append(t)
        if t.grad_fn is not None:
            self.node_spaces[t.grad_fn].append(layout)

    def mark(self, layout: Optional[Layout], reason: str) -> None:
        if layout is not None:
            for sid, _ in layout.segs:
                self.spaces.mark(sid, reason)

    def mark_all(self, tensors, reason: str) -> None:
        for t in tensors:
            self.mark(self.layout(t), reason)

    def union(self, a: Layout, b: Layout, what: str) -> bool:
        """Couple two layouts channel by channel; mark both unprunable if they do not line up."""
        if a.inner != b.inner or [n for _, n in a.segs] != [n for _, n in b.segs]:
            reason = f'{what} joins tensors whose channels are laid out differently'
            self.mark(a, reason)
            self.mark(b, reason)
            return False
        for (sa, _), (sb, _) in zip(a.segs, b.segs):
            self.spaces.union(sa, sb)
        return True

    def owner_of(self, t: Any) -> Optional[Tuple[str, str, nn.Module]]:
        return self.owner.get(id(t)) if isinstance(t, torch.Tensor) else None

    def module_in_forward(self, name: str) -> bool:
        return self.active[name] > 0

    # -- the mode ----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.vouched:
            return func(*args, **kwargs)
        inputs = _tensors((args, kwargs))
        before = {t.grad_fn for t in inputs if t.grad_fn is not None}
        out = func(*args, **kwargs)
        name = getattr(func, '__name__', None) or repr(func)
        if name == '__get__':
            name = 'property:' + getattr(getattr(func, '__self__', None), '__name__', '?')
        self._note_foreign_use(name, inputs)
        rule = self.rules.get(name)
        traced = [t for t in inputs if id(t) in self.layouts]
        if rule is None:
            self.mark_all(traced, f"channels reach '{name}', an op the tracer does not know")
        elif traced or rule.always:
            try:
                rule(self, name, args, kwargs, out)
            except Exception as e:  # a rule that cannot follow the op must not break tracing
                self.mark_all(traced, f"tracer rule for '{name}' failed: {e!r}")
        if traced:
            self._claim(out, before)
        return out

    def _note_foreign_use(self, name: str, inputs: List[torch.Tensor]) -> None:
        """Remember a conv/linear weight read by an op other than its own layer call (e.g.
        ``torch.norm(head.weight, dim=1)`` in a head): slicing the layer changes that value."""
        if name in _LAYER_OPS or name in _META_OPS or name.startswith('property:'):
            return
        for t in inputs:
            owner = self.owner.get(id(t))
            if owner is not None and isinstance(owner[2], _LAYER_TYPES):
                self.foreign_uses.setdefault(owner[0], name)

    def mark_foreign_uses(self) -> None:
        res = self.result
        for mname, op in self.foreign_uses.items():
            reason = (f"the weight of {mname} is also read by '{op}' outside the layer's own "
                      'call: slicing its channels would change that value')
            self.mark(res.consumers.get(mname), reason)
            if mname in res.producers:
                self.spaces.mark(res.producers[mname], reason)

    def _claim(self, out: Any, stop: set) -> None:
        """Mark the autograd nodes an op created as seen, up to the nodes of its inputs."""
        stack = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
        budget = 10000
        while stack and budget:
            node = stack.pop()
            if node in stop or node in self.claimed:
                continue
            budget -= 1
            self.claimed.add(node)
            for nxt, _ in node.next_functions:
                if (nxt is not None and nxt not in stop and nxt not in self.node_spaces
                        and not hasattr(nxt, 'variable')):
                    stack.append(nxt)

    def check_unseen_ops(self, outputs: Any) -> None:
        """Walk the autograd graph; an unseen node reading a traced tensor blocks its channels."""
        stack = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
        seen = set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for nxt, _ in node.next_functions:
                if nxt is None or hasattr(nxt, 'variable'):
                    continue
                if node not in self.claimed and nxt in self.node_spaces:
                    reason = ('channels are used by an operation the tracer cannot see '
                              f'(autograd node {type(node).__name__}: a custom autograd '
                              'Function or C++ extension op)')
                    for lay in self.node_spaces[nxt]:
                        self.mark(lay, reason)
                stack.append(nxt)


class VouchedModule:
    """Register a module type whose forward the tracer does not look into.

    ``fn(tracer, module, inputs, output)`` sets the layouts of the outputs from the inputs'.
    Used for modules built on ops the tracer cannot see, e.g. mmcv's RoI extractors.
    """
    registry: Dict[type, Callable] = {}

    @classmethod
    def register(cls, module_type: type, fn: Callable) -> None:
        cls.registry[module_type] = fn

    @classmethod
    def lookup(cls, module: nn.Module) -> Optional[Callable]:
        # Exact type only: a subclass may add layers inside the forward that must be traced.
        return cls.registry.get(type(module))


def _install_module_hooks(tracer: _Tracer, model: nn.Module) -> List[Any]:
    handles = []
    for mname, mod in model.named_modules():
        vouch = VouchedModule.lookup(mod)

        def pre(module, inputs, _name=mname, _vouch=vouch):
            tracer.active[_name] += 1
            if _vouch is not None:
                tracer.vouched += 1
                tracer.vouch_stop.append(
                    {t.grad_fn for t in _tensors(inputs) if t.grad_fn is not None})

        def post(module, inputs, output, _name=mname, _vouch=vouch):
            tracer.active[_name] -= 1
            if _vouch is not None:
                tracer.vouched -= 1
                stop = tracer.vouch_stop.pop()
                if not tracer.vouched:
                    _vouch(tracer, module, inputs, output)
                    tracer._claim(output, stop)

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    return handles


def trace(model: nn.Module, forward_fn: Callable[[nn.Module], Any],
          num_samples: Optional[int] = None) -> TraceResult:
    """Run ``forward_fn(model)`` once under the tracer and return what flowed where.

    The model's parameters, buffers (BN running stats) and the RNG state are restored afterwards,
    so tracing leaves the model exactly as it was.

    Args:
        model (nn.Module): The model to trace.
        forward_fn (callable): Runs one forward pass of ``model`` and returns its outputs (a
            tensor, a loss dict, or any nesting of lists/tuples/dicts of tensors).
        num_samples (int, optional): Samples in the batch ``forward_fn`` feeds; costs are per
            sample. Defaults to the batch size of the first conv/linear call.

    Returns:
        TraceResult: Spaces, producers, consumers and calls.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    rng = torch.get_rng_state()
    tracer = _Tracer(model)
    handles = _install_module_hooks(tracer, model)
    try:
        with torch.enable_grad(), tracer:
            outputs = forward_fn(model)
        for t in _tensors(outputs):
            tracer.mark(tracer.layout(t), NETWORK_OUTPUT)
        tracer.mark_foreign_uses()
        tracer.check_unseen_ops(outputs)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            current = model.state_dict(keep_vars=True)
            for k, v in state.items():
                current[k].copy_(v)
        torch.set_rng_state(rng)
    res = tracer.result
    if num_samples is None:
        num_samples = res.calls[0].batch if res.calls else 1
    res.num_samples = num_samples
    for call in res.calls:
        call.out_elems = call.out_elems * call.batch / num_samples
    return res
