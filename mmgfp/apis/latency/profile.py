"""Measure latency on a device: per-layer tables for ``delta='latency'``, whole-model timing.

:func:`profile_latency` times every conv/linear layer that pruning can narrow, as a standalone
block of the same kind (kernel, stride, padding, dilation, groups, bias) followed by the norm
and activation that follow it in the model, at the layer's real input sizes (captured with
forward hooks on one forward pass at the deploy batch and input size; every call of a shared
head is timed and summed), over a grid of channel counts. Each axis starts from ``points``
evenly spaced widths and is refined where linear interpolation misses the measured time by more
than ``tol`` (a step). The output axis is first probed for alignment (does ``w - a`` take
longer than the line between the aligned ``w`` and ``w - 2a``?) and then sampled at aligned
widths only, where ``divisor='auto'`` keeps the pruned model; times are made non-decreasing
in the width (:func:`monotone`), so timing noise never tells the pruner that removing
channels costs time. Spikes at unaligned widths are thus
not in the table: prune with ``divisor='auto'`` (or a multiple of the alignment) to stay off
them. The result is a :class:`mmgfp.core.LatencyTable` keyed by device, torch, dtype, memory
format, batch, threads and input size, cached as JSON.
"""
import copy
import math
import os.path as osp
import sys
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmgfp.core import GroupSet, LatencyTable, LatencyTableError
from mmgfp.core.latency import timed_layers
from mmgfp.apis.latency.timing import (DTYPES, Timer, check_settings, compare_latency,
                                       device_name, make_key, measure_latency, prepare,
                                       threads_set)

__all__ = ['profile_latency', 'profile_config', 'measure_latency', 'compare_latency',
           'prepare', 'device_name', 'make_key', 'explained']

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid,
               nn.Sigmoid, nn.Tanh, nn.ELU, nn.Mish)
NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
ALIGN_PROBES = (1, 2, 4, 8, 16, 32)


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


def _conv_like(mod: nn.Module, cin: int, cout: int, groups: int) -> nn.Module:
    if isinstance(mod, nn.Linear):
        return nn.Linear(cin, cout, bias=mod.bias is not None)
    dims = mod.weight.dim() - 2
    kw = dict(kernel_size=mod.kernel_size, stride=mod.stride, padding=mod.padding,
              dilation=mod.dilation, groups=groups, bias=mod.bias is not None)
    if isinstance(mod, nn.modules.conv._ConvTransposeNd):
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
        return cls(cin, cout, output_padding=mod.output_padding, **kw)
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    return cls(cin, cout, padding_mode=mod.padding_mode, **kw)


def _norm_like(norm: nn.Module, c: int, dims: int) -> nn.Module:
    if isinstance(norm, nn.GroupNorm):
        per = norm.num_channels // norm.num_groups
        return nn.GroupNorm(max(c // per, 1) if c % per == 0 else 1, c, affine=norm.affine)
    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[max(dims, 1) - 1](c)


def build_block(calls: LayerCalls, cin: int, cout: int, depthwise: bool) -> nn.Module:
    """The layer (with its norm and activation) at ``cin``/``cout`` channels."""
    mod = calls.module
    groups = 1
    if depthwise:  # whole groups go: as many groups as the width holds
        groups = cin // (mod.in_channels // mod.groups)
    elif getattr(mod, 'groups', 1) > 1 and cin % mod.groups == 0 and cout % mod.groups == 0:
        groups = mod.groups
    parts = [_conv_like(mod, cin, cout, groups)]
    if calls.norm is not None:
        parts.append(_norm_like(calls.norm, cout, mod.weight.dim() - 2))
    if calls.act is not None:
        parts.append(type(calls.act)())
    return nn.Sequential(*parts).eval()


class LayerTimer:
    """``t(cin, cout)`` in us of one layer over all its calls, cached per point."""

    def __init__(self, calls: LayerCalls, depthwise: bool, timer: Timer, device: str,
                 dtype: str, channels_last: bool):
        self.calls, self.depthwise, self.timer = calls, depthwise, timer
        self.device, self.dtype, self.channels_last = device, DTYPES[dtype], channels_last
        self.linear = isinstance(calls.module, nn.Linear)
        self.cache: Dict[Tuple[int, int], float] = {}

    def _input(self, shape, cin):
        shape = list(shape)
        shape[-1 if self.linear else 1] = cin
        x = torch.randn(shape, device=self.device, dtype=self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(self, cin: int, cout: int, fresh: bool = False) -> float:
        if self.depthwise:
            cin = cout
        if fresh or (cin, cout) not in self.cache:
            block = build_block(self.calls, cin, cout, self.depthwise)
            block.to(self.device, self.dtype)
            if self.channels_last:
                block.to(memory_format=torch.channels_last)
            total = 0.0
            for shape, n in self.calls.shapes.items():
                x = self._input(shape, cin)
                total += n * self.timer(lambda: block(x))
            self.cache[(cin, cout)] = total
        return self.cache[(cin, cout)]


# -- sampling ------------------------------------------------------------------------------------
def axis_points(full: int, unit: int, points: int) -> List[int]:
    """About ``points`` evenly spaced multiples of ``unit`` up to ``full`` (always included)."""
    pts = {full}
    for i in range(1, points):
        p = round(full * i / points / unit) * unit
        if unit <= p < full:
            pts.add(p)
    return sorted(pts)


def refine(f: Callable[[int], float], pts: List[int], unit: int, tol: float,
           max_points: int) -> List[int]:
    """Add midpoints where linear interpolation misses ``f`` by more than ``tol`` (relative to
    ``f`` at the full width), once per interval, while under ``max_points``."""
    scale = max(f(pts[-1]), 1e-9)
    out = list(pts)
    for a, b in zip(pts, pts[1:]):
        m = (a + b) // 2 // unit * unit
        if len(out) >= max_points or not a < m < b:
            continue
        guess = f(a) + (f(b) - f(a)) * (m - a) / (b - a)
        if abs(f(m) - guess) > tol * scale:
            out.append(m)
    return sorted(out)


def probe_align(f: Callable[[int], float], full: int, unit: int, tol: float,
                again: Optional[Callable[[int], float]] = None) -> int:
    """Width granularity that pays: ``2a`` for the largest ``a`` where ``w - a`` channels take
    more than ``tol`` longer than the straight line between the aligned ``w`` and ``w - 2a``
    predicts (``w`` a multiple of 64, or 16 for narrow layers); 1 if no width is off the line.

    A line through two aligned widths absorbs what every width pays alike (per-op overhead), so
    only the cost of leaving the alignment counts: spikes above an aligned width (GPU tiles)
    and widths that save less than their share (CPU vector blocks). ``again(w)`` re-measures
    without the cache: a spike counts only if it shows twice, so one noisy reading does not
    coarsen a group's steps.
    """
    w = full // 64 * 64 if full >= 96 else full // 16 * 16
    if w < 16:
        return 1

    def off_line(g, a):
        return g(w - a) > (g(w) + g(w - 2 * a)) / 2 * (1 + tol)

    align = 1
    for a in ALIGN_PROBES:
        if a % unit or w - 2 * a < unit or not off_line(f, a):
            continue
        if again is None or off_line(again, a):
            align = 2 * a
    return align


# -- the table -----------------------------------------------------------------------------------
def _axis_unit(gs: GroupSet, lc) -> Optional[int]:
    """Channel granularity of a layer axis made of ``lc``'s groups, None if none is prunable."""
    blocks = [gs.groups[k].block for k, _ in lc.segs if gs.groups[k].prunable]
    return math.lcm(*blocks) * lc.inner if blocks else None


def profile_layer(gs: GroupSet, name: str, lt: LayerTimer, points: int, tol: float,
                  max_points: int, align: bool) -> Dict:
    """The table entry of one layer (see :mod:`mmgfp.core.latency`)."""
    info = gs.layers[name]
    if name in gs.passthrough:
        full, unit = info.in_channels, _axis_unit(gs, gs.passthrough[name])
        unit = math.lcm(unit, info.in_channels // info.groups)
        f = (lambda w: lt(w, w))
        a = probe_align(f, full, unit, tol, lambda w: lt(w, w, fresh=True)) if align else 1
        step = math.lcm(unit, a)
        pts = refine(f, axis_points(full, step, points), step, tol, max_points)
        return {'width': pts, 'us': monotone([f(w) for w in pts]), 'align': a}
    full_in, full_out = info.in_channels, info.out_channels
    u_in = _axis_unit(gs, gs.consumers[name]) if name in gs.consumers else None
    key = gs.producers.get(name)
    u_out = gs.groups[key].block if key is not None and gs.groups[key].prunable else None
    ins, outs, a = [full_in], [full_out], 1
    if u_out:
        f_out = (lambda w: lt(full_in, w))
        a = probe_align(f_out, full_out, u_out, tol,
                        lambda w: lt(full_in, w, fresh=True)) if align else 1
        step = math.lcm(u_out, a)  # sample where divisor='auto' lands
        outs = refine(f_out, axis_points(full_out, step, points), step, tol, max_points)
    if u_in:
        f_in = (lambda w: lt(w, full_out))
        ins = refine(f_in, axis_points(full_in, u_in, points), u_in, tol, max_points)
    us = [monotone([lt(i, o) for o in outs]) for i in ins]
    cols = [monotone([row[j] for row in us]) for j in range(len(outs))]
    return {'in': ins, 'out': outs, 'us': [list(r) for r in zip(*cols)], 'align': a}


def monotone(times: List[float]) -> List[float]:
    """Times over increasing widths made non-decreasing (each is at most the times of all
    wider points): at the sampled (aligned) widths, removing channels never costs time, and a
    noisy slow reading at a narrow width does not hide the savings below it."""
    out = list(times)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return out


def _cached(out: Optional[str], key: Dict, gs: GroupSet, force: bool, log) -> Optional[
        LatencyTable]:
    if not out or force or not osp.isfile(out):
        return None
    try:
        table = LatencyTable.load(out)
        table.check_key(key)
        table.check_groups(gs)
    except LatencyTableError as e:
        log(f'[profile_latency] {out} does not fit ({e}); profiling again')
        return None
    log(f'[profile_latency] reusing {out} (same device and settings; --force to re-measure)')
    return table


def profile_latency(model: nn.Module, forward_fn: Callable[[nn.Module], Any], groups: GroupSet,
                    device: str = 'cpu', dtype: str = 'fp32', channels_last: bool = False,
                    batch: int = 1, threads: Optional[int] = None,
                    input_size: Sequence[int] = (0, 0), config: str = '',
                    points: int = 5, rounds: int = 5, warmup: int = 1, tol: float = 0.1,
                    max_points: int = 9, align: bool = True, out: Optional[str] = None,
                    force: bool = False, progress: bool = True) -> LatencyTable:
    """Measure a :class:`LatencyTable` of ``model`` on ``device``.

    Args:
        model (nn.Module): The model (moved to ``device``/``dtype`` in place, eval mode).
        forward_fn (callable): ``forward_fn(model)`` runs the deploy forward pass (tensor path)
            at the deploy batch and input size.
        groups (GroupSet): The model's groups (as the pruning hook finds them).
        device (str): ``'cpu'`` or ``'cuda[:N]'``. Defaults to 'cpu'.
        dtype (str): ``'fp32'`` or ``'fp16'``. Defaults to 'fp32'.
        channels_last (bool): Time in channels_last memory format. Defaults to False.
        batch (int): Batch size ``forward_fn`` feeds (for the key). Defaults to 1.
        threads (int, optional): CPU threads while timing. Defaults to torch's setting.
        input_size (Sequence[int]): Input (H, W) of ``forward_fn`` (for the key).
        config (str): Config path or name (for the key). Defaults to ''.
        points (int): Initial widths per prunable axis. Defaults to 5.
        rounds (int): Timed runs per point (median). Defaults to 5.
        warmup (int): Untimed runs per point first. Defaults to 1.
        tol (float): Relative miss of linear interpolation that adds a midpoint, and the
            slow-down that counts as an alignment spike. Defaults to 0.1.
        max_points (int): Widths per axis at most. Defaults to 9.
        align (bool): Probe each layer's output alignment. Defaults to True.
        out (str, optional): Cache file: reused when its key and layers fit, written after
            profiling. Defaults to None.
        force (bool): Profile even if ``out`` fits. Defaults to False.
        progress (bool): Print progress to stderr. Defaults to True.
    """
    check_settings(device, dtype)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (
        lambda msg: None)
    with threads_set(threads):
        key = make_key(device, dtype, channels_last, batch, torch.get_num_threads(), input_size,
                       type(model).__name__, config)
        table = _cached(out, key, groups, force, log)
        if table is not None:
            return table
        prepare(model, device, dtype, channels_last)
        names = timed_layers(groups)
        calls = capture_calls(model, forward_fn, names)
        total_us = measure_latency(model, forward_fn, device, rounds=rounds, warmup=warmup) * 1e3
        timer = Timer(device, rounds, warmup)
        layers, t0 = {}, time.perf_counter()
        for i, name in enumerate(names):
            lt = LayerTimer(calls[name], name in groups.passthrough, timer, device, dtype,
                            channels_last)
            layers[name] = profile_layer(groups, name, lt, points, tol, max_points, align)
            layers[name]['points_timed'] = len(lt.cache)
            layers[name]['out_elems'] = calls[name].out_elems
            if progress:
                done = time.perf_counter() - t0
                left = done / (i + 1) * (len(names) - i - 1)
                print(f'\r[profile_latency] {i + 1}/{len(names)} layers, {done:.0f} s, about '
                      f'{left:.0f} s left ', end='', file=sys.stderr, flush=True)
        log('')
        table = LatencyTable(key, total_us, layers)
        share = calibrate_remainder(model, forward_fn, groups, table, device, rounds, warmup, log)
    table = LatencyTable(key, total_us, layers, share)
    if out:
        table.save(out)
    return table


def half_width_copy(model: nn.Module, groups: GroupSet) -> nn.Module:
    """A compact copy of ``model`` with every prunable group at half its units (at least one)."""
    from mmgfp.core import ChannelMasker, apply_spec, make_spec
    thin = copy.deepcopy(model)
    masker = ChannelMasker(thin, groups)
    for g in groups.prunable:
        n = len(masker.keep[g.key])
        for unit in range(max(1, (n + 1) // 2), n):
            masker.prune(g.key, unit)
    apply_spec(thin, make_spec(masker))
    from mmgfp.codebases import fix_compact
    fix_compact(thin)  # each codebase's fixes look for its own modules: none in plain PyTorch
    return thin


def calibrate_remainder(model: nn.Module, forward_fn: Callable[[nn.Module], Any],
                        groups: GroupSet, table: LatencyTable, device: str, rounds: int,
                        warmup: int, log=print) -> float:
    """The share (0 to 1) of the time the layer entries do not explain that shrinks with the
    layers' output elements (element-wise ops between layers, pooling, upsampling).

    A half-width compact copy is timed against ``model``, interleaved; its remainder (its time
    minus the table's layer times at its widths) over the full model's, against its share of
    output elements, gives the scaled share: 0 when the remainder stays, 1 when it shrinks in
    proportion. 0 when the copy cannot be made or timed (said in the log).
    """
    try:
        thin = half_width_copy(model, groups)
        ms = compare_latency({'full': model, 'thin': thin}, forward_fn, device,
                             rounds=max(2 * rounds, 10), warmup=warmup + 1)
    except Exception as e:  # noqa: BLE001  (an approximation, never a failed profile)
        log(f'[profile_latency] no half-width copy to calibrate the remainder ({type(e).__name__}'
            f': {e}); it is kept fixed')
        return 0.0
    full_rem = ms['full'] * 1e3 - table.layers_us
    thin_us, thin_out = table.module_sums(thin)
    thin_rem = ms['thin'] * 1e3 - thin_us
    frac = thin_out / table.out_full if table.out_full else 1.0
    if full_rem <= 0 or frac >= 1:
        return 0.0
    share = min(max((1 - thin_rem / full_rem) / (1 - frac), 0.0), 1.0)
    log(f'[profile_latency] remainder {full_rem / 1e3:.2f} ms of {ms["full"]:.2f} ms; at half '
        f'width {thin_rem / 1e3:.2f} ms with {frac:.0%} of the output elements: {share:.0%} of '
        'it scales with them')
    return share


def explained(table: LatencyTable) -> float:
    """Fraction of the measured total that the table's layers account for at full width."""
    return table.layers_us / table.total_us


def hook_skip(cfg) -> List[str]:
    """The ``skip`` patterns of the config's FisherPruningHook (the groups it never prunes)."""
    for h in cfg.get('custom_hooks', None) or []:
        if h.get('type') in ('FisherPruningHook', 'mmgfp.FisherPruningHook'):
            skip = h.get('skip', ())
            return [skip] if isinstance(skip, str) else list(skip)
    return []


def profile_config(cfg, config: str, device: str = 'cpu', dtype: str = 'fp32',
                   channels_last: bool = False, batch: int = 1,
                   input_size: Sequence[int] = (320, 320), checkpoint: Optional[str] = None,
                   seed: int = 0, **kwargs) -> Tuple[LatencyTable, GroupSet]:
    """Build the model of an mmdet/mmpretrain config and :func:`profile_latency` it.

    Groups are found as the pruning hook finds them (loss path, training mode, the hook's
    ``skip``), on a small demo batch; times come from the tensor path at ``batch`` x
    ``input_size``. ``kwargs`` go to :func:`profile_latency`.
    """
    from mmengine.runner import load_checkpoint

    from mmgfp.core import build_groups
    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.inputs import demo_batch, loss_forward, prepare_like_training, tensor_forward
    check_settings(device, dtype)
    torch.manual_seed(seed)
    model = build_model(cfg, init=checkpoint is None)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    prepare_like_training(model)
    model.train()
    small = (min(input_size[0], 128), min(input_size[1], 128))
    groups = build_groups(model, loss_forward(demo_batch(model, 2, small, seed=seed)),
                          skip=hook_skip(cfg))
    data = demo_batch(model, batch, input_size, seed=seed)
    table = profile_latency(model, tensor_forward(data), groups, device, dtype, channels_last,
                            batch, input_size=input_size, config=config, **kwargs)
    return table, groups
