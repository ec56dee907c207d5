"""A measured latency model of one deploy device: per-layer times over channel counts.

The table is plain data (JSON, written by ``tools/profile_latency.py`` or by hand in tests)::

    {"format": "mmgfp-latency/1",
     "key": {"device": "cpu: ...", "torch": "2.4.1", "dtype": "fp32", "channels_last": false,
             "batch": 1, "threads": 1, "input_size": [320, 320], "model": "RetinaNet",
             "config": "..."},
     "total_us": 81234.0,
     "layers": {"backbone.conv1": {"in": [3], "out": [8, 32, 64], "us": [[..., ..., ...]],
                                   "align": 1},
                "dw": {"width": [8, 16, 32], "us": [..., ..., ...], "align": 1}}}

A 2-D entry times a conv/linear layer (with the norm and activation that follow it) over its
input (``in``) and output (``out``) channel counts, summed over all its calls (a head shared by
five FPN levels has one entry); a 1-D entry (``width``) times a depth-wise or group conv whose
channels pass through. Between sampled points the time is interpolated linearly (bilinearly in
2-D); below the smallest point it is extrapolated with the first segment's slope, never below 0.
``total_us`` is the measured whole-model forward. What the layers do not explain (the
remainder: unprunable ops, element-wise ops between layers, data movement) is partly fixed and
partly shrinks with the channels: ``scaled_remainder`` (optional, 0 to 1) is the share of it that
scales with the layers' output elements (each entry's optional ``out_elems``: output elements
per channel over all its calls, times its output width), measured by the profiler on a
half-width copy of the model; the rest stays fixed. ``layer_scale`` (optional, default 1)
scales the layers' savings where the entries, timed standalone, save more or less than the
same layers in the model (:func:`mmgfp.core.latency_calib.fit_calibration`). A table that
holds ``calibration`` (``{"ratio": measured time of the half-width copy over the model's,
"thin": {layer: [in, out]}}``, as the plan runner writes it) and no ``scaled_remainder`` gets
both numbers fitted when it loads. ``group_calibration`` (optional) holds what each group
alone saves in the model, fitted into a factor per group
(:mod:`mmgfp.core.latency_groups`); ``points`` (optional) measured compacts, fitted into a
correction at the operating point (:mod:`mmgfp.core.latency_points`).
"""
import bisect
import json
import math
import os
import os.path as osp
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch.nn as nn

from .grouping import GroupSet, layer_io as _io
from .latency_calib import (ORIGIN_FIELDS, PROFILE_HINT, LatencyTableError, _check_axis,
                            _check_calibration, module_widths, origin, resolve_shape)
from .latency_groups import (check_group_calibration, fit_group_factors,  # noqa: F401
                             group_layers, layer_change, layer_groups, layer_sides,
                             layers_by_group, map_spans, side_factors, timed_layers)
from .latency_points import check_points, corrected, fit_points
from .spec import atomic_write

FORMAT = 'mmgfp-latency/1'
KEY_FIELDS = ('device', 'torch', 'dtype', 'channels_last', 'batch', 'threads', 'input_size',
              'model', 'config')
KeptFn = Callable[[str], int]
# the repository's configs folder: a key names a config in it by its path from here
CONFIGS_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs')


def config_name(config: Optional[str]) -> Optional[str]:
    """How a table key names ``config``, so one config has one name however it was given.

    A path inside the repository's ``configs/`` folder (absolute, relative to the working
    directory, or relative to the repository root: ``configs/digits/x.py``) becomes its path
    from that folder (``digits/x.py``); a ``scope::path`` (a config of an installed package,
    mim style) stays as given; any other path is only normalised (``os.path.normpath``).
    Anything but a non-empty string is returned as it is.
    """
    if not isinstance(config, str) or not config or '::' in config:
        return config
    path = osp.normpath(config)
    parts = path.split(os.sep)
    if not osp.isabs(path) and parts[0] == 'configs' and len(parts) > 1:
        return '/'.join(parts[1:])
    # the folder resolved (the worktree or the working directory may be a symlink)
    full = osp.join(osp.realpath(osp.dirname(osp.abspath(path))), osp.basename(path))
    root = osp.realpath(CONFIGS_DIR)
    if full.startswith(root + os.sep):
        return osp.relpath(full, root).replace(os.sep, '/')
    return path


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear ``y(x)``; linear beyond the ends (with the end segments' slopes)."""
    if len(xs) == 1:
        return float(ys[0])
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    x0, x1 = xs[i], xs[i + 1]
    return ys[i] + (ys[i + 1] - ys[i]) * (x - x0) / (x1 - x0)


class _Layer:
    """One layer's sampled times: 2-D (in x out) or 1-D (width)."""

    def __init__(self, name: str, entry: Mapping):
        self.name, self.entry = name, dict(entry)
        self.align = int(entry.get('align', 1))
        self.out_elems = entry.get('out_elems', 0)
        if not isinstance(self.out_elems, (int, float)) or self.out_elems < 0:
            raise LatencyTableError(f'latency table layer {name!r}: `out_elems` must be a '
                                    f'number >= 0, but got {self.out_elems!r}')
        if self.align < 1:
            raise LatencyTableError(f'latency table layer {name!r}: `align` must be >= 1, '
                                    f'but got {entry.get("align")!r}')
        us = entry.get('us')
        if 'width' in entry:
            self.axes = [_check_axis(name, 'width', entry['width'])]
            ok = isinstance(us, list) and len(us) == len(self.axes[0])
        elif 'in' in entry and 'out' in entry:
            self.axes = [_check_axis(name, 'in', entry['in']),
                         _check_axis(name, 'out', entry['out'])]
            ok = isinstance(us, list) and len(us) == len(self.axes[0]) and all(
                isinstance(r, list) and len(r) == len(self.axes[1]) for r in us)
        else:
            raise LatencyTableError(f'latency table layer {name!r} needs "in" and "out" (a '
                                    f'conv/linear) or "width" (a depth-wise conv), but has '
                                    f'{sorted(entry)}')
        if not ok:
            shape = [len(a) for a in self.axes]
            raise LatencyTableError(f'latency table layer {name!r}: "us" must have shape '
                                    f'{shape} (one time per sampled point), but got {us!r}')
        self.us = us

    @property
    def full(self) -> Tuple[float, ...]:
        return tuple(a[-1] for a in self.axes)

    @property
    def full_io(self) -> Tuple[float, float]:
        """(in, out) at full width (a 1-D entry's width on both)."""
        return (self.full[0], self.full[-1])

    def _check_point(self, axis: int, x: float) -> None:
        pts = self.axes[axis]
        if len(pts) == 1 and x != pts[0] or x > pts[-1] or x < 0:
            what = ('width', ) if len(self.axes) == 1 else ('in', 'out')
            raise LatencyTableError(
                f'latency table layer {self.name!r} was profiled at {what[axis]} channels '
                f'{[int(p) for p in pts]}, but {x:g} were asked for: the table is for another '
                f'model or config; {PROFILE_HINT}')

    def time(self, c_in: float, c_out: float) -> float:
        if len(self.axes) == 1:
            self._check_point(0, c_out)
            return max(_interp(self.axes[0], self.us, c_out), 0.0)
        self._check_point(0, c_in)
        self._check_point(1, c_out)
        col = [_interp(self.axes[1], row, c_out) for row in self.us]
        return max(_interp(self.axes[0], col, c_in), 0.0)


class LatencyTable:
    """Per-layer latency over channel counts on one device, with its settings (``key``).

    Args:
        key (dict): Device and settings the times were measured with (see ``KEY_FIELDS``).
        total_us (float): Measured forward time of the whole, unpruned model, microseconds.
        layers (dict): Module name -> entry (see the module docstring).
        scaled_remainder (float, optional): Share of the remainder that scales with the
            output elements; None fits it from ``calibration`` (0 without). Defaults to None.
        layer_scale (float, optional): Scale of the layers' savings; None fits it from
            ``calibration`` (1 without). Defaults to None.
        calibration (dict, optional): A measured half-width copy (see the module
            docstring). Defaults to None.
        group_calibration (dict, optional): Each group alone measured in the model
            (:mod:`mmgfp.core.latency_groups`). Defaults to None.
        points (list, optional): Measured compacts (:mod:`mmgfp.core.latency_points`).
            Defaults to None.
    """

    def __init__(self, key: Mapping, total_us: float, layers: Mapping[str, Mapping],
                 scaled_remainder: Optional[float] = None, layer_scale: Optional[float] = None,
                 calibration: Optional[Mapping] = None,
                 group_calibration: Optional[Mapping] = None, points: Optional[List] = None,
                 profiled: Optional[Mapping] = None):
        if not isinstance(key, Mapping):
            raise LatencyTableError(f'latency table `key` must be a dict, but got {key!r}')
        if not isinstance(total_us, (int, float)) or total_us <= 0:
            raise LatencyTableError(f'latency table `total_us` must be a positive number, '
                                    f'but got {total_us!r}')
        self.key = dict(key)
        self.total_us = float(total_us)
        # what else ran on the CPUs while it was timed (latency_calib.load_warning)
        self.profiled = dict(profiled) if isinstance(profiled, Mapping) else None
        self.layers = {name: _Layer(name, e) for name, e in layers.items()}
        self.calibration = _check_calibration(calibration)
        self.scaled_remainder, self.layer_scale = 0.0, 1.0
        # (name, in, out) -> us: a pruning step changes few widths, so selection and
        # remaining() mostly ask for times already interpolated
        self._memo: Dict[Tuple[str, float, float], float] = {}
        # the layer entries at full width: their time and output elements; the remainder
        self.layers_us = sum(self.time(n, *lay.full_io) for n, lay in self.layers.items())
        self.out_full = sum(lay.out_elems * lay.full_io[1] for lay in self.layers.values())
        self.remainder_us = max(self.total_us - self.layers_us, 0.0)
        self.scaled_remainder, self.layer_scale = resolve_shape(self, scaled_remainder,
                                                                layer_scale)
        self.group_calibration = check_group_calibration(group_calibration, self.layers)
        self.group_factors = fit_group_factors(self, self.group_calibration)
        self.points, self.point_knots = check_points(points, self.layers), []
        self.point_knots = fit_points(self, self.points)

    # -- data ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping) -> 'LatencyTable':
        if not isinstance(d, Mapping) or d.get('format') != FORMAT:
            got = d.get('format') if isinstance(d, Mapping) else type(d).__name__
            raise LatencyTableError(f'not a latency table: `format` must be {FORMAT!r}, but '
                                    f'got {got!r}; {PROFILE_HINT}')
        for k in ('key', 'total_us', 'layers'):
            if k not in d:
                raise LatencyTableError(f'latency table lacks {k!r}; {PROFILE_HINT}')
        return cls(d['key'], d['total_us'], d['layers'], d.get('scaled_remainder'),
                   d.get('layer_scale'), d.get('calibration'), d.get('group_calibration'),
                   d.get('points'), d.get('profiled'))

    def to_dict(self) -> Dict:
        d = {'format': FORMAT, 'key': dict(self.key), 'total_us': self.total_us,
             'layers': {n: dict(l.entry) for n, l in self.layers.items()}}
        if self.scaled_remainder or self.calibration:
            d['scaled_remainder'] = self.scaled_remainder
        if self.layer_scale != 1.0:
            d['layer_scale'] = self.layer_scale
        if self.calibration:
            d['calibration'] = self.calibration
        for k in ('group_calibration', 'points', 'profiled'):
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d

    # -- the remainder -----------------------------------------------------------------------
    def remainder_change(self, out_delta: float) -> float:
        """Change of the remainder (us) when the layers' outputs hold ``out_delta`` elements
        more than at full width (negative when pruned): its ``scaled_remainder`` share
        scales with the output elements."""
        if not self.scaled_remainder or not out_delta or not self.out_full:
            return 0.0
        return self.scaled_remainder * self.remainder_us * out_delta / self.out_full

    @classmethod
    def load(cls, path: str) -> 'LatencyTable':
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f'latency table {path!r} does not exist; '
                                    f'{PROFILE_HINT}') from None
        except json.JSONDecodeError as e:
            raise LatencyTableError(f'latency table {path!r} is not valid JSON ({e})') from None
        return cls.from_dict(d)

    def save(self, path: str) -> None:
        """Write the table as JSON atomically."""

        def dump(tmp: str) -> None:
            with open(tmp, 'w') as f:
                json.dump(self.to_dict(), f, indent=1)

        atomic_write(path, dump)

    # -- key -------------------------------------------------------------------------------
    def mismatches(self, expected: Mapping) -> Dict[str, Tuple]:
        """``{field: (in the table, expected)}`` for every field of ``expected`` that differs.

        A key written before the runtime was recorded is an eager PyTorch table
        (:func:`~mmgfp.core.latency_calib.origin` fills its backend fields); configs are
        compared by :func:`config_name` (a key may hold the path as it was given)."""
        out, made = {}, origin(self.key)
        for k, v in expected.items():
            mine = made[k] if k in ORIGIN_FIELDS and k not in self.key else self.key.get(k)
            if k == 'config':
                same = config_name(mine) == config_name(v)
            elif isinstance(v, (list, tuple)) and isinstance(mine, (list, tuple)):
                same = list(v) == list(mine)
            else:
                same = mine == v
            if not same:
                out[k] = (mine, v)
        return out

    def matches(self, expected: Mapping) -> bool:
        """Whether the table's key agrees with every field given in ``expected``."""
        return not self.mismatches(expected)

    def check_key(self, expected: Mapping) -> None:
        """Raise :class:`LatencyTableError` naming each field that differs from ``expected``."""
        bad = self.mismatches(expected)
        if bad:
            what = ', '.join(f'{k}: table {a!r}, asked {b!r}' for k, (a, b) in bad.items())
            raise LatencyTableError(f'the latency table was measured with other settings '
                                    f'({what}); {PROFILE_HINT} with the settings you deploy '
                                    'with')

    # -- lookup ----------------------------------------------------------------------------
    def _layer(self, name: str) -> _Layer:
        try:
            return self.layers[name]
        except KeyError:
            raise LatencyTableError(f'the latency table has no entry for module {name!r}: it '
                                    f'was made for another model or config; '
                                    f'{PROFILE_HINT}') from None

    def time(self, name: str, c_in: float, c_out: float) -> float:
        """Time of module ``name`` (all its calls) with ``c_in`` / ``c_out`` channels, in us.

        A 1-D (depth-wise) entry reads ``c_out``.
        """
        key = (name, c_in, c_out)
        t = self._memo.get(key)
        if t is None:
            t = self._memo[key] = self._layer(name).time(c_in, c_out)
        return t

    def align(self, name: str) -> int:
        """Output-width granularity that pays on this device for module ``name`` (1: smooth)."""
        return self._layer(name).align

    # -- a model's groups ------------------------------------------------------------------
    def check_groups(self, gs: GroupSet) -> None:
        """Raise unless every layer of ``gs`` that pruning can narrow is in the table at its
        full width (the largest sampled point of each axis)."""
        full = _full(gs)
        for name in timed_layers(gs):
            lay = self._layer(name)
            cin, cout, _ = _io(gs, name, full)
            want = (cout, ) if len(lay.axes) == 1 else (cin, cout)
            if tuple(float(w) for w in want) != lay.full:
                raise LatencyTableError(
                    f'the latency table has module {name!r} at full width '
                    f'{tuple(int(w) for w in lay.full)}, but the model has {tuple(want)}: '
                    f'the table is for another model or config; {PROFILE_HINT}')

    def layer_time(self, gs: GroupSet, name: str, kept: KeptFn) -> float:
        cin, cout, _ = _io(gs, name, kept)
        return self.time(name, cin, cout)

    def predict(self, gs: GroupSet, kept: KeptFn) -> float:
        """Predicted forward time (us) of the model with ``kept`` channels per group.

        ``total_us`` minus the table's layer times at full width plus those at the widths
        given by ``kept``, and the scaled share of the remainder (:meth:`remainder_change`);
        layers no prunable group touches keep their time in the remainder.
        """
        return corrected(self, self._change(gs, timed_layers(gs), kept, _full(gs),
                                            self.total_us))

    def _change(self, gs: GroupSet, names: Sequence[str], kept: KeptFn, ref: KeptFn,
                start: float) -> float:
        """``start`` plus the time layers ``names`` take with ``kept`` channels instead of
        ``ref``, with the remainder's share of their output elements; each side of a layer
        scaled by its groups' factors (:func:`~mmgfp.core.latency_groups.side_factors`)."""
        t, out = start, 0.0
        prunable = {g.key for g in gs.prunable} if self.group_factors else None
        for name in names:
            cin, cout, _ = _io(gs, name, kept)
            rin, rout, _ = _io(gs, name, ref)
            f_in = f_out = 1.0
            if self.group_factors:
                ins, outs = layer_sides(gs, name, prunable)
                spans = {k: (kept(k), ref(k)) for k, _ in ins + outs}
                f_in, f_out = side_factors(self, ins, outs, spans)
            dt, dout = layer_change(self, name, (cin, cout), (rin, rout), f_in, f_out)
            t, out = t + dt, out + dout
        return t + self.remainder_change(out)

    def sums_at(self, widths: Mapping[str, Sequence[float]]) -> Tuple[float, float]:
        """(time in us, output elements) of the table's layers at ``widths`` (name ->
        (in, out); full width for layers not given)."""
        us = out = 0.0
        for name, lay in self.layers.items():
            cin, cout = widths.get(name, lay.full_io)
            us += self.time(name, cin, cout)
            out += lay.out_elems * cout
        return us, out

    def predict_module(self, model: nn.Module) -> float:
        """Predicted forward time (us) of ``model``, a model of the table's architecture with
        any layer widths: e.g. a compact model pruned by another tool, whose widths no mmgfp
        mask describes. Every layer of the table is read at the module's own widths; group
        factors, if any, come from the table's group map
        (:func:`~mmgfp.core.latency_groups.map_spans`).

        Raises:
            LatencyTableError: A layer of the table is missing from ``model`` or is no conv
                or linear layer; a width is wider than profiled.
        """
        return self.predict_widths(module_widths(model, self.layers))

    def predict_widths(self, widths: Mapping[str, Sequence[float]], raw: bool = False) -> float:
        """Predicted forward time (us) with the table's layers at ``widths`` (name -> (in,
        out); full width where not given); ``raw``: without the points' correction."""
        if not self.group_factors:
            us, out = self.sums_at(widths)
            t = (self.total_us + self.layer_scale * (us - self.layers_us) +
                 self.remainder_change(out - self.out_full))
            return t if raw else corrected(self, t)
        t, out = self.total_us, 0.0
        for name, io in widths.items():
            ins, outs, spans = map_spans(self, name, io)
            dt, dout = layer_change(self, name, io, self.layers[name].full_io,
                                    *side_factors(self, ins, outs, spans))
            t, out = t + dt, out + dout
        t += self.remainder_change(out)
        return t if raw else corrected(self, t)

    def saved(self, gs: GroupSet, kept: KeptFn, key: str, channels: int,
              layers: Optional[Sequence[str]] = None) -> float:
        """Time (us) saved by removing ``channels`` more channels of group ``key``.

        Args:
            layers (Sequence[str], optional): The group's layers (``group_layers``), when the
                caller has them. Defaults to None.
        """
        after = kept(key) - channels

        def kept_after(k: str) -> int:
            return after if k == key else kept(k)

        names = group_layers(gs, key) if layers is None else layers
        return self._change(gs, names, kept, kept_after, 0.0)

    def group_align(self, gs: GroupSet, key: str) -> int:
        """The lcm of the ``align`` of the layers that make or carry group ``key``'s
        channels (its producers and depth-wise convs); 1 where all are smooth."""
        names = [n for n in group_layers(gs, key)
                 if gs.producers.get(n) == key or n in gs.passthrough]
        return math.lcm(1, *(self.align(n) for n in names))


def _full(gs: GroupSet) -> KeptFn:
    return lambda k: gs.groups[k].channels


def load_table(table) -> Optional[LatencyTable]:
    """A :class:`LatencyTable` from a table, a path or a dict (None stays None)."""
    if table is None or isinstance(table, LatencyTable):
        return table
    if isinstance(table, str):
        return LatencyTable.load(table)
    if isinstance(table, Mapping):
        return LatencyTable.from_dict(table)
    raise TypeError(f'`latency_table` must be a LatencyTable, a path or a dict, but got '
                    f'{type(table).__name__}')
