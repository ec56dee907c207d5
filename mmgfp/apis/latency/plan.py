"""What a latency table measures, as plain data: the plan of every timed layer.

:func:`plan_layers` describes each conv/linear layer that pruning can narrow as the forward
pass ran it (the block: kind, kernel, stride, padding, dilation, groups, bias, the norm and
activation that read its output; its calls' input shapes; its prunable axes and their units).
The in-process profiler times this plan at once (:mod:`mmgfp.apis.latency.profile`);
:func:`write_plan` writes it with the model and its half-width calibration copy (TorchScript
and ONNX) so that :mod:`mmgfp.apis.latency.runner`, one file needing only torch, measures the
table on a device where OpenMMLab is not installed; with ``calibrate_groups`` also the model
with each prunable group alone at half width, for the table's group factors
(:mod:`mmgfp.apis.latency.group_calib`).
"""
import copy
import json
import math
import os.path as osp
import warnings
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmgfp.core import GroupSet
from mmgfp.core.latency import module_widths, timed_layers
from mmgfp.core.tracing import flatten
from mmgfp.apis.latency import weightless
from mmgfp.apis.latency.runner import PLAN_FORMAT, PLAN_FORMAT_GROUPS

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid,
               nn.Sigmoid, nn.Tanh, nn.ELU, nn.Mish)
NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


# -- what each layer runs --------------------------------------------------------------------------
class LayerCalls:
    """One prunable layer as the forward pass ran it: its module, the input shapes of its calls
    (with counts), and the norm and activation that read its output."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.module = name, module
        self.shapes: Counter = Counter()
        self.out_elems = 0  # output elements per channel, summed over the calls
        self.norm: Optional[nn.Module] = None
        self.act: Optional[nn.Module] = None


def capture_calls(model: nn.Module, forward_fn: Callable[[nn.Module], Any],
                  names: Sequence[str]) -> Dict[str, LayerCalls]:
    """Run ``forward_fn(model)`` once (no_grad) with forward hooks on every module."""
    wanted = set(names)
    events: List[Tuple[str, nn.Module, Any, Any]] = []

    def hook(mod, args, out):
        if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            events.append((names_of[mod], mod, args[0], out))  # tensors kept: ids stay unique

    names_of = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(hook) for m in names_of]
    try:
        with torch.no_grad():
            forward_fn(model)
    finally:
        for h in handles:
            h.remove()
    reader = {}  # id(tensor) -> first event reading it
    for ev in events:
        reader.setdefault(id(ev[2]), ev)
    calls = {n: LayerCalls(n, m) for m, n in names_of.items() if n in wanted}
    for name, mod, x, out in events:
        if name not in wanted:
            continue
        lc = calls[name]
        lc.shapes[tuple(x.shape)] += 1
        if out.dim():
            lc.out_elems += out.numel() // out.shape[-1 if isinstance(mod, nn.Linear) else
                                                     min(1, out.dim() - 1)]
        nxt = reader.get(id(out))
        if lc.norm is None and nxt is not None and isinstance(nxt[1], NORMS):
            lc.norm, nxt = nxt[1], reader.get(id(nxt[3]))
        if lc.act is None and nxt is not None and isinstance(nxt[1], ACTIVATIONS):
            lc.act = nxt[1]
    events.clear()
    return calls




def describe_block(calls: LayerCalls) -> Dict:
    """The layer of ``calls`` with its norm and activation as plain data (runner.build_block)."""
    mod = calls.module
    if isinstance(mod, nn.Linear):
        desc = {'op': 'Linear', 'in_channels': mod.in_features, 'groups': 1}
    else:
        desc = {'op': next(c.__name__ for c in type(mod).__mro__  # mmcv's wrappers: torch's
                           if c.__module__ == 'torch.nn.modules.conv'),
                'in_channels': mod.in_channels, 'groups': mod.groups,
                **{k: list(getattr(mod, k)) for k in ('kernel_size', 'stride', 'dilation')},
                'padding': list(mod.padding) if not isinstance(mod.padding, str) else
                mod.padding, 'padding_mode': mod.padding_mode}
        if isinstance(mod, nn.modules.conv._ConvTransposeNd):
            desc['output_padding'] = list(mod.output_padding)
    desc['bias'] = mod.bias is not None
    norm = calls.norm
    if isinstance(norm, nn.GroupNorm):
        desc['norm'] = {'type': 'GroupNorm', 'affine': norm.affine,
                        'per_group': norm.num_channels // norm.num_groups}
    elif norm is not None:
        desc['norm'] = {'type': 'BatchNorm'}
    if calls.act is not None:
        desc['act'] = type(calls.act).__name__
    return desc


def _axis_unit(gs: GroupSet, lc) -> Optional[int]:
    """Channel granularity of a layer axis made of ``lc``'s groups, None if none is prunable."""
    blocks = [gs.groups[k].block for k, _ in lc.segs if gs.groups[k].prunable]
    return math.lcm(*blocks) * lc.inner if blocks else None


def layer_axes(gs: GroupSet, name: str) -> Dict:
    """The prunable axes of layer ``name`` with their units (runner.profile_entry)."""
    info = gs.layers[name]
    if name in gs.passthrough:
        unit = math.lcm(_axis_unit(gs, gs.passthrough[name]), info.in_channels // info.groups)
        return {'width': info.in_channels, 'unit': unit}
    key = gs.producers.get(name)
    return {'in': info.in_channels, 'out': info.out_channels,
            'unit_in': _axis_unit(gs, gs.consumers[name]) if name in gs.consumers else None,
            'unit_out': gs.groups[key].block if key is not None and gs.groups[key].prunable
            else None}


def plan_layers(gs: GroupSet, calls: Dict[str, LayerCalls]) -> Dict[str, Dict]:
    """Every timed layer as the runner times it."""
    return {name: {'block': describe_block(calls[name]), 'axes': layer_axes(gs, name),
                   'calls': [[list(s), n] for s, n in calls[name].shapes.items()],
                   'out_elems': calls[name].out_elems} for name in timed_layers(gs)}


def narrowed(model: nn.Module, groups: GroupSet, units: Dict[str, int]) -> nn.Module:
    """A compact copy of ``model`` (eval mode) with each group of ``units`` at its first that
    many units (all other groups whole)."""
    from mmgfp.codebases import fix_compact
    from mmgfp.core import ChannelMasker, apply_spec, make_spec
    thin = copy.deepcopy(model)
    masker = ChannelMasker(thin, groups)
    for key, keep in units.items():
        for unit in range(keep, len(masker.keep[key])):
            masker.prune(key, unit)
    apply_spec(thin, make_spec(masker))
    fix_compact(thin)  # each codebase's fixes look for its own modules: none in plain PyTorch
    return thin.eval()


def half_width_copy(model: nn.Module, groups: GroupSet, fraction: float = 0.5) -> nn.Module:
    """A compact copy of ``model`` with every prunable group at ``fraction`` of its units
    (rounded up, at least one; :func:`narrowed`)."""
    return narrowed(model, groups, {g.key: max(1, math.ceil(g.units * fraction))
                                    for g in groups.prunable})


# -- the whole model, without its framework ------------------------------------------------------
def capture_call(model: nn.Module, forward_fn: Callable[[nn.Module], Any]) -> Tuple:
    """``(args, kwargs)`` of the model's own ``forward`` call in ``forward_fn(model)``."""
    seen = []

    def hook(mod, args, kwargs):
        if not seen:
            seen.append((args, kwargs))

    h = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            forward_fn(model)
    finally:
        h.remove()
    return seen[0]


class Replay(nn.Module):
    """``model`` called as ``forward_fn`` called it, with its input tensor as the argument and
    the outputs flattened into a tuple: what TorchScript and ONNX can hold."""

    def __init__(self, model: nn.Module, args: Sequence, kwargs: Dict):
        super().__init__()
        self.model, self.args, self.kwargs = model, list(args), dict(kwargs)
        found = [('a', i) for i, a in enumerate(args) if isinstance(a, torch.Tensor)] + [
            ('k', k) for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        if not found:
            raise ValueError('the model is called without a tensor argument: nothing to feed')
        self.slot = found[0]
        self.example = args[self.slot[1]] if self.slot[0] == 'a' else kwargs[self.slot[1]]

    def forward(self, x: torch.Tensor):
        args, kwargs = list(self.args), dict(self.kwargs)
        if self.slot[0] == 'a':
            args[self.slot[1]] = x
        else:
            kwargs[self.slot[1]] = x
        return tuple(t for t in flatten(self.model(*args, **kwargs))
                     if isinstance(t, torch.Tensor))


def export_models(models: Dict[str, nn.Module], forward_fn: Callable[[nn.Module], Any],
                  stem: str, torchscript: bool = True, weights: bool = True) -> Dict:
    """Write each model's call in ``forward_fn`` as ``{stem}.{name}.onnx`` (and ``.pt``,
    TorchScript); returns the file names (relative to the folder) and the input shape.

    With ``weights=False`` the files are written without their weights (see
    :mod:`mmgfp.apis.latency.weightless`): the TorchScript files' parameter shapes are returned
    under ``'shapes'`` (``{name: shapes}``) for the runner to refill.
    """
    files, shapes = {}, {}
    for name, model in models.items():
        rep = Replay(model.eval(), *capture_call(model, forward_fn)).eval()
        x = rep.example
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')
            if torchscript:
                traced = torch.jit.trace(rep, (x, ), check_trace=False)
                if not weights:
                    shapes[name] = weightless.strip(traced)
                torch.jit.save(traced, f'{stem}.{name}.pt')
                files[name] = osp.basename(f'{stem}.{name}.pt')
            torch.onnx.export(rep, (x, ), f'{stem}.{name}.onnx', dynamo=False,
                              opset_version=17, input_names=['inputs'])
        if not weights:
            weightless.strip_onnx(f'{stem}.{name}.onnx')
        files[f'{name}_onnx'] = osp.basename(f'{stem}.{name}.onnx')
        files['input_shape'] = list(x.shape)
    if not weights:
        files['shapes'] = shapes
    return files


def write_plan(path: str, model: nn.Module, forward_fn: Callable[[nn.Module], Any],
               groups: GroupSet, key: Dict, settings: Dict, weights: bool = False,
               calibrate_groups: bool = False, group_rounds: Optional[int] = None,
               log=None) -> Dict:
    """Write the plan of ``model`` to ``path`` (JSON) with the model and its half-width copy
    beside it (``<path stem>.full.pt`` / ``.thin.pt`` / ``.quarter.pt`` and ``.onnx``), without
    their weights unless ``weights`` (the runner refills random values: a few MB instead of
    hundreds for a ResNet-50 detector).

    With ``calibrate_groups`` the plan also holds ``groups``: each prunable group alone at half
    width (``<path stem>.groupNNN.pt`` / ``.onnx``) and the group map of the layers
    (:func:`mmgfp.apis.latency.group_calib.export_groups`), timed by the runner in
    ``group_rounds`` paired rounds (default ``max(2 * rounds, 11)``, as the profiler) into the
    table's ``group_calibration``.
    """
    model.eval()
    names = timed_layers(groups)
    calls = capture_calls(model, forward_fn, names)
    thin = half_width_copy(model, groups).eval()
    quarter = half_width_copy(model, groups, 0.25).eval()
    stem = osp.splitext(path)[0]
    plan = {'format': PLAN_FORMAT, 'key': key, 'settings': settings,
            'layers': plan_layers(groups, calls),
            'calibration': {k: {n: list(w) for n, w in module_widths(m, names).items()}
                            for k, m in (('thin', thin), ('quarter', quarter))},
            'models': export_models({'full': model, 'thin': thin, 'quarter': quarter},
                                    forward_fn, stem, weights=weights)}
    shapes = plan['models'].pop('shapes', None)
    if shapes is not None:  # TorchScript parameter shapes; ONNX files keep theirs
        plan['weightless'] = shapes
    if calibrate_groups:
        from mmgfp.apis.latency.group_calib import export_groups  # it imports this module
        plan['groups'] = export_groups(model, forward_fn, groups, stem,
                                       group_rounds or max(2 * settings['rounds'], 11),
                                       settings['warmup'] + 1, weights, log)
        plan['format'] = PLAN_FORMAT_GROUPS  # a runner that predates groups refuses it
    with open(path, 'w') as f:
        json.dump(plan, f, indent=1)
    return plan
