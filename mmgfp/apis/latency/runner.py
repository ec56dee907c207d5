"""Turn a latency plan into a latency table on the device itself: needs only torch (and
onnxruntime and onnx for ``--backend onnxruntime``), no OpenMMLab and no mmgfp.

Copy this file, ``weightless.py`` beside it, and the plan (``tools/profile_latency.py CONFIG
--export-plan plan.json`` writes ``plan.json`` with ``plan.full.pt`` / ``plan.thin.pt`` /
``plan.quarter.pt``, the model and its half- and quarter-width copies as TorchScript, and their
``.onnx`` exports, all without their weights unless ``--keep-weights``: a few MB) to the deploy
device, then::

    python runner.py plan.json --out table.json [--device cuda] [--dtype fp16]
        [--channels-last] [--batch 32] [--threads 1] [--backend onnxruntime]

The table loads on the training machine and prunes like a local one (``latency_table=``).
``mmgfp.apis.latency.profile`` runs the same functions in process: a local table and a
plan-made one are sampled alike. Every layer of the plan is one conv/linear block (with its
norm and activation) at its recorded input shapes, timed over a grid of widths (see
:func:`profile_entry`); the model and its thinner copies are timed interleaved, which gives
the table's total and the ratios its remainder and layer scale are calibrated with.

A plan exported with ``--calibrate-groups`` also holds the model with each prunable group
alone at half width (``plan.group000.pt`` / ``.onnx``, ...): the runner then times each
against the model in paired rounds (:func:`time_groups`, a progress line per group) and writes
the table's ``group_calibration`` as the local profiler does. A compact chosen on the training
machine (``tools/profile_latency.py CONFIG --plan-in plan.json --calibrate-on SPEC.json
--export-point point.json``: its widths and weightless model files) is added to a table made
from the plan as a measured point, timed against the plan's model in the table's runtime
(:func:`add_point`; the runtime flags default to the table's key, and a point of another plan
or a table of another runtime or device is refused)::

    python runner.py plan.json --table table.json --add-point point.json --out table2.json
"""
import argparse
import hashlib
import io
import json
import math
import os
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

try:
    from mmgfp.apis.latency import weightless
except ImportError:  # run as a script on a device without mmgfp: weightless.py lies beside it
    import importlib.util
    _spec = importlib.util.spec_from_file_location(
        'weightless', osp.join(osp.dirname(osp.abspath(__file__)), 'weightless.py'))
    weightless = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(weightless)

PLAN_FORMAT = 'mmgfp-latency-plan/1'
PLAN_FORMAT_GROUPS = 'mmgfp-latency-plan/2'  # a plan with groups: /1 runners would skip them
TABLE_FORMAT = 'mmgfp-latency/1'
POINT_FORMAT = 'mmgfp-latency-point/1'
# what a point's timing must share with its table: the plan's model and the runtime
RUN_FIELDS = ('model', 'config', 'input_size', 'batch', 'device', 'backend', 'backend_version',
              'provider', 'graph_optimization', 'block_timing', 'clock', 'dtype',
              'channels_last', 'threads')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16}
ALIGN_PROBES = (1, 2, 4, 8, 16, 32)
ORT_LEVELS = ('disable', 'basic', 'extended', 'all')
CLOCKS = ('wall', 'cpu')
PROFILED_RUNS = 3
BLOCK_TIMING = 'in_context'  # ORT tables' key: blocks timed as in Backend.time_block
BOUNDARY_OPS = ('ReorderInput', 'ReorderOutput')
# TorchScript profiles its first run and optimises the graph in the second: neither is timed
FIRST_RUNS = 2
MAD_TO_SE = 1.4826 * 1.2533  # the median's standard error from the MAD (normal samples)


def device_name(device: str) -> str:
    """``'cpu: <model name>'`` or ``'cuda: <GPU name>'``."""
    if device.startswith('cuda'):
        return 'cuda: ' + torch.cuda.get_device_name(torch.device(device))
    name = '?'
    try:
        with open('/proc/cpuinfo') as f:
            name = next((ln.split(':', 1)[1].strip() for ln in f
                         if ln.startswith('model name')), name)
    except OSError:
        pass
    return 'cpu: ' + name


class Timer:
    """Median time of ``fn()`` in microseconds: perf_counter on CPU, CUDA events on GPUs.

    ``clock='cpu'`` reads the process's CPU time (``time.process_time``) instead of the wall
    clock: for one-thread CPU runs on a core shared with other processes, whose time slices
    the wall clock would count (see :class:`Backend`).
    """

    def __init__(self, device: str = 'cpu', rounds: int = 5, warmup: int = 1,
                 clock: str = 'wall'):
        if clock not in CLOCKS:
            raise ValueError(f'`clock` must be one of {CLOCKS}, but got {clock!r}')
        self.cuda = device.startswith('cuda')
        self.rounds, self.warmup = rounds, warmup
        self.now = time.process_time if clock == 'cpu' else time.perf_counter

    def samples(self, fn: Callable[[], Any]) -> List[float]:
        """``warmup`` untimed runs, then the time (us) of each of ``rounds`` runs."""
        with torch.no_grad():
            for _ in range(self.warmup):
                fn()
            times = []
            for _ in range(self.rounds):
                if self.cuda:
                    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                    start.record()
                    fn()
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end) * 1e3)
                else:
                    t0 = self.now()
                    fn()
                    times.append((self.now() - t0) * 1e6)
        return times

    def __call__(self, fn: Callable[[], Any]) -> float:
        return statistics.median(self.samples(fn))


# -- the deploy runtime -----------------------------------------------------------------------
def cpu_block() -> int:
    """Channels per block of ONNX Runtime's CPU convolutions (MLAS NCHWc): 16 with AVX-512,
    8 otherwise. Other widths run without the blocked layout, and the layout conversions
    around them cost between layers, where no block's timing sees them."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((ln for ln in f if ln.startswith('flags')), '')
    except OSError:
        flags = ''
    return 16 if ' avx512f' in flags else 8


# -- what else ran while timing ---------------------------------------------------------------
def _busy_seconds(cpus) -> Optional[float]:
    """Busy CPU seconds since boot (every process) of the CPUs numbered in ``cpus``, from
    /proc/stat; None where it cannot be read (not Linux)."""
    try:
        with open('/proc/stat') as f:
            rows = [ln.split() for ln in f if ln.startswith('cpu') and not ln.startswith('cpu ')]
        ticks = 0
        for row in rows:
            if int(row[0][3:]) in cpus:  # user nice system idle iowait irq softirq steal
                v = [int(x) for x in row[1:9]]
                ticks += sum(v) - v[3] - v[4]
        return ticks / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
        return None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
STEADY_MMAP, STEADY_TRIM = 32 << 20, 1 << 30  # 32 MiB: the largest glibc accepts on 64-bit
_ALLOCATOR: List[str] = []  # what steady_allocator did, once per process


def steady_allocator() -> str:
    """Keep glibc's malloc from handing memory back to the OS between timed runs.

    With glibc's defaults, whether a model's large feature maps go to fresh mmap'ed pages, or
    to the top of a heap that ``free`` trims, depends on the process's history (the mmap
    threshold adapts to the blocks freed so far); where they do, every forward faults its
    pages in again. The same MobileNetV2 measured 26-27 ms in some processes of one benchmark
    and 31-34 ms, with about 3,500 minor page faults per forward, in others
    (docs/en/benchmarks/latency_onnxruntime.md). Fixing both thresholds (mmap 32 MiB, the
    largest glibc accepts on 64-bit; trim 1 GiB) gives every process the steady state.
    Called by every timing of mmgfp on the CPU (:class:`CpuShare`, ``compare_latency``),
    once per process; the process keeps the setting (a training process too, when the hook
    profiles a table in it). A deployment gets the same state with
    ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`` in its environment.

    Nothing is changed where the C library is not glibc, where another allocator is preloaded
    (``LD_PRELOAD``), where the environment sets glibc's thresholds itself
    (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``), or with
    ``MMGFP_STEADY_ALLOCATOR=0`` (to see the difference).

    Returns:
        str: What the timing runs with, for the record: ``'glibc 2.36: mmap threshold 32
        MiB, trim threshold 1 GiB'``, or ``'unchanged (<why>)'``.
    """
    if not _ALLOCATOR:
        _ALLOCATOR.append(_set_allocator())
    return _ALLOCATOR[0]


def _set_allocator() -> str:
    name, version = platform.libc_ver()
    env = os.environ
    if name != 'glibc':
        return f'unchanged (C library {name or "unknown"}, not glibc)'
    if env.get('MMGFP_STEADY_ALLOCATOR', '1') == '0':
        return 'unchanged (MMGFP_STEADY_ALLOCATOR=0)'
    if env.get('LD_PRELOAD'):
        return f"unchanged (LD_PRELOAD={env['LD_PRELOAD']})"
    given = [k for k in ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_') if k in env]
    if given:
        return 'unchanged (' + ', '.join(f'{k}={env[k]}' for k in given) + ' given)'
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (ImportError, OSError, AttributeError) as e:
        return f'unchanged (no mallopt: {e})'
    done = []
    if mallopt(M_MMAP_THRESHOLD, STEADY_MMAP):
        done.append(f'mmap threshold {STEADY_MMAP >> 20} MiB')
    if mallopt(M_TRIM_THRESHOLD, STEADY_TRIM):
        done.append(f'trim threshold {STEADY_TRIM >> 30} GiB')
    return f'glibc {version}: ' + ', '.join(done) if done else 'unchanged (mallopt refused)'


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``getrusage`` is not there)."""
    try:
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    except (ImportError, OSError):
        return 0


class CpuShare:
    """Measures, around a ``with`` block, how many CPUs *other* processes kept busy on
    average on the CPUs this process may run on (its affinity): their busy time from
    /proc/stat, less this process's own CPU time, over the wall time.

    A table timed while other processes share its cores is preempted: on MobileNetV2 one
    profiled at a load of about 3 on 2 cores came out 3x slow in absolute time and its
    ratios drifted by several points (docs/en/benchmarks/latency_onnxruntime.md). After the
    block, :attr:`result` is ``{"other_cpus", "cpus", "threads", "seconds", "allocator"}``
    (the table's ``profiled``), or None where /proc/stat is not there. Entering the block
    also fixes the allocator for timing (:func:`steady_allocator`; ``allocator`` says what
    was set, or why nothing was).
    """

    def __init__(self, threads: Optional[int] = None):
        self.threads = int(threads or torch.get_num_threads())
        self.result: Optional[Dict] = None

    def __enter__(self) -> 'CpuShare':
        self.cpus = (set(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                     else set(range(os.cpu_count() or 1)))
        self.result = None
        self.allocator = steady_allocator()
        self._t0, self._own0 = time.perf_counter(), time.process_time()
        self._busy0 = _busy_seconds(self.cpus)
        return self

    def __exit__(self, *exc) -> bool:
        busy, wall = _busy_seconds(self.cpus), time.perf_counter() - self._t0
        if busy is not None and self._busy0 is not None and wall > 0:
            own = time.process_time() - self._own0
            # /proc/stat counts in clock ticks (10 ms): over a short block the busy time of
            # the others can come out a little below 0 or above the CPUs there are
            others = min(float(len(self.cpus)), max(0.0, (busy - self._busy0 - own) / wall))
            self.result = {'other_cpus': round(others, 2), 'cpus': len(self.cpus),
                           'threads': self.threads, 'seconds': round(wall, 1),
                           'allocator': self.allocator}
        return False

    def text(self) -> str:
        """``'other processes kept X of the N CPUs ... busy'`` (or '' without a result)."""
        r = self.result
        if not r:
            return ''
        return (f"other processes kept {r['other_cpus']:.2f} of the {r['cpus']} CPU(s) this "
                f"process may run on busy while timing ({r['threads']} thread(s), "
                f"{r['seconds']:.0f} s)")


class Backend:
    """Where blocks and models run: ``'torch'`` eager, or ``'onnxruntime'`` with its session
    settings (threads, providers, graph optimisation level) as the deployment sets them.

    In ONNX Runtime a block is timed *in context* (:meth:`time_block`): the layout conversions
    at its graph's edges, which a block alone pays and the model does not, are taken out. With
    one thread on the CPU provider every time (blocks and whole models) is the process's CPU
    time (``clock``: ``'cpu'``), so that other processes on a shared core do not count.
    """

    def __init__(self, name: str = 'torch', device: str = 'cpu', dtype: str = 'fp32',
                 channels_last: bool = False, threads: Optional[int] = None,
                 providers: Optional[List[str]] = None, opt_level: str = 'all'):
        if name not in ('torch', 'onnxruntime'):
            raise ValueError(f"`backend` must be 'torch' or 'onnxruntime', but got {name!r}")
        if dtype not in DTYPES:
            raise ValueError(f'`dtype` must be one of {tuple(DTYPES)}, but got {dtype!r}')
        if opt_level not in ORT_LEVELS:
            raise ValueError(f'`opt_level` must be one of {ORT_LEVELS}, but got {opt_level!r}')
        self.name, self.device, self.dtype = name, device, dtype
        self.channels_last, self.threads, self.opt_level = channels_last, threads, opt_level
        self.providers = list(providers or ['CPUExecutionProvider'])
        self.min_align = 1
        if name == 'onnxruntime':
            if dtype != 'fp32' or channels_last:
                raise ValueError('the onnxruntime backend times fp32 graphs in their exported '
                                 'layout: drop --dtype fp16 / --channels-last')
            try:
                import onnxruntime
            except ImportError:
                raise ValueError('--backend onnxruntime needs the onnxruntime package: pip '
                                 'install onnxruntime') from None
            self.ort = onnxruntime
            if self.providers[0] == 'CPUExecutionProvider':
                self.min_align = cpu_block()
        self.clock = 'cpu' if (name == 'onnxruntime' and threads == 1 and
                               self.providers[0] == 'CPUExecutionProvider') else 'wall'

    def key(self) -> Dict:
        """The table key's runtime fields."""
        if self.name == 'torch':
            return {'backend': 'torch', 'backend_version': str(torch.__version__),
                    'provider': None}
        return {'backend': 'onnxruntime', 'backend_version': self.ort.__version__,
                'provider': self.providers[0], 'graph_optimization': self.opt_level,
                'block_timing': BLOCK_TIMING, 'clock': self.clock}

    def session(self, onnx: Any, profile: Optional[str] = None):
        """An onnxruntime session of ``onnx`` (a path or the bytes of a model); ``profile``:
        the file prefix of ONNX Runtime's node profile, when one is wanted."""
        opts = self.ort.SessionOptions()
        if profile:
            opts.enable_profiling, opts.profile_file_prefix = True, profile
        opts.intra_op_num_threads = self.threads or 0
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.graph_optimization_level = getattr(
            self.ort.GraphOptimizationLevel, 'ORT_ENABLE_ALL' if self.opt_level == 'all' else
            {'disable': 'ORT_DISABLE_ALL', 'basic': 'ORT_ENABLE_BASIC',
             'extended': 'ORT_ENABLE_EXTENDED'}[self.opt_level])
        return self.ort.InferenceSession(onnx, opts, providers=self.providers)

    def callable(self, module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
        """``fn()`` running ``module`` on ``x`` in this runtime (exported for onnxruntime)."""
        if self.name == 'torch':
            module = module.to(self.device, DTYPES[self.dtype])
            x = x.to(self.device, DTYPES[self.dtype])
            if self.channels_last and x.dim() == 4:
                module = module.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            return lambda: module(x)
        return self.file_callable(_export(module, x), x)

    def file_callable(self, onnx: Any, x: torch.Tensor, sess=None) -> Callable[[], Any]:
        """``fn()`` running the ONNX model ``onnx`` on ``x``, inputs and outputs bound once
        (no copy of the outputs into Python per run)."""
        sess = sess or self.session(onnx)
        bind, data = sess.io_binding(), x.detach().cpu().contiguous().numpy()
        bind.bind_cpu_input(sess.get_inputs()[0].name, data)
        for out in sess.get_outputs():
            bind.bind_output(out.name)
        return lambda: (data, sess.run_with_iobinding(bind))[1]

    def time_block(self, module: nn.Module, x: torch.Tensor, timer: 'Timer') -> float:
        """Time (us) of ``module`` on ``x`` as part of a model. Eager: the run's time. ONNX
        Runtime: the run's time less the layout conversions at the graph's edges
        (:func:`edge_us`), read from ONNX Runtime's node profile of ``PROFILED_RUNS`` runs
        (the first, cold, dropped); the timed runs come after, unprofiled (profiling costs
        about 20 us a run)."""
        if self.name == 'torch':
            return timer(self.callable(module, x))
        with tempfile.TemporaryDirectory() as tmp:
            sess = self.session(_export(module, x), profile=osp.join(tmp, 'block'))
            fn = self.file_callable(None, x, sess)
            for _ in range(PROFILED_RUNS):
                fn()
            with open(sess.end_profiling()) as f:
                edges = edge_us(json.load(f))[1:]
            return in_context(timer.samples(fn), edges)


def _export(module: nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(module.eval(), (x, ), buf, dynamo=False, opset_version=17,
                          input_names=['x'])
    return buf.getvalue()


def edge_us(events: List[Dict]) -> List[float]:
    """Per run of an ONNX Runtime node profile (its JSON events), in order: the kernel time
    (us) of the layout conversions at the graph's edges, the run's first node if it is a
    ``ReorderInput`` and its last if it is a ``ReorderOutput``. A block alone pays these;
    inside a model its neighbours keep the blocked layout and it does not. A conversion inside
    the block (before a GroupNorm, which has no blocked kernel) is neither first nor last: it
    stays, as it does in the model."""
    runs = sorted((e['ts'], e['ts'] + e['dur']) for e in events
                  if e.get('cat') == 'Session' and e.get('name') == 'model_run')
    nodes = sorted((e for e in events if e.get('cat') == 'Node' and
                    e.get('name', '').endswith('_kernel_time')), key=lambda e: e['ts'])
    out = []
    for start, end in runs:
        mine = [e for e in nodes if start <= e['ts'] <= end]
        ops = [e.get('args', {}).get('op_name') for e in mine]
        edge = 0.0
        if ops and ops[0] == BOUNDARY_OPS[0]:
            edge += mine[0]['dur']
        if len(ops) > 1 and ops[-1] == BOUNDARY_OPS[1]:
            edge += mine[-1]['dur']
        out.append(float(edge))
    return out


def in_context(times: List[float], edges: List[float]) -> float:
    """The median of ``times`` less the median of ``edges`` (us), never below 0."""
    if not times or not edges:
        raise RuntimeError('no timed or no profiled run of the block: cannot take its layout '
                           'conversions out of its time')
    return max(statistics.median(times) - statistics.median(edges), 0.0)


# -- one layer: a block over widths ------------------------------------------------------------
def build_block(desc: Dict, cin: int, cout: int, depthwise: bool) -> nn.Module:
    """The layer ``desc`` (with its norm and activation) at ``cin``/``cout`` channels."""
    op = desc['op']
    groups = 1
    if depthwise:  # whole groups go: as many groups as the width holds
        groups = cin // (desc['in_channels'] // desc['groups'])
    elif desc.get('groups', 1) > 1 and cin % desc['groups'] == 0 and cout % desc['groups'] == 0:
        groups = desc['groups']
    if op == 'Linear':
        parts = [nn.Linear(cin, cout, bias=desc['bias'])]
    else:
        kw = {k: desc[k] if isinstance(desc[k], str) else tuple(desc[k])
              for k in ('kernel_size', 'stride', 'padding', 'dilation')}
        if op.startswith('ConvTranspose'):
            kw['output_padding'] = tuple(desc['output_padding'])
        else:
            kw['padding_mode'] = desc.get('padding_mode', 'zeros')
        parts = [getattr(nn, op)(cin, cout, groups=groups, bias=desc['bias'], **kw)]
    norm, dims = desc.get('norm'), len(desc.get('kernel_size', ())) or 1
    if norm and norm['type'] == 'GroupNorm':
        per = norm['per_group']
        parts.append(nn.GroupNorm(cout // per if cout % per == 0 else 1, cout,
                                  affine=norm.get('affine', True)))
    elif norm:
        parts.append((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1](cout))
    if desc.get('act'):
        parts.append(getattr(nn, desc['act'])())
    return nn.Sequential(*parts).eval()


class LayerTimer:
    """``t(cin, cout)`` in us of one plan layer over all its calls, cached per point."""

    def __init__(self, layer: Dict, backend: Backend, timer: Timer, batch: Optional[int] = None):
        self.layer, self.backend, self.timer, self.batch = layer, backend, timer, batch
        self.depthwise = 'width' in layer['axes']
        self.cache: Dict = {}

    def _input(self, shape, cin):
        shape = list(shape)
        shape[-1 if self.layer['block']['op'] == 'Linear' else 1] = cin
        if self.batch:
            shape[0] = self.batch
        return torch.randn(shape)

    def __call__(self, cin: int, cout: int, fresh: bool = False) -> float:
        if self.depthwise:
            cin = cout
        if fresh or (cin, cout) not in self.cache:
            block = build_block(self.layer['block'], cin, cout, self.depthwise)
            total = 0.0
            for shape, n in self.layer['calls']:
                total += n * self.backend.time_block(block, self._input(shape, cin),
                                                     self.timer)
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


def monotone(times: List[float]) -> List[float]:
    """Times over increasing widths made non-decreasing (each is at most the times of all
    wider points): at the sampled (aligned) widths, removing channels never costs time, and a
    noisy slow reading at a narrow width does not hide the savings below it."""
    out = list(times)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return out


def profile_entry(axes: Dict, lt: Callable[..., float], points: int, tol: float,
                  max_points: int, align: bool, min_align: int = 1) -> Dict:
    """The table entry of one layer (see :mod:`mmgfp.core.latency`).

    ``axes`` is ``{'width': full, 'unit': u}`` for a depth-wise layer, else ``{'in': full,
    'unit_in': u or None, 'out': full, 'unit_out': u or None}`` (None: not prunable there).
    ``min_align`` is the least alignment of a probed width of at least twice that many
    channels (the runtime's known block size).
    """
    def floor(a, full):
        return math.lcm(a, min_align) if full >= 2 * min_align else a

    if 'width' in axes:
        full, unit = axes['width'], axes['unit']
        f = (lambda w: lt(w, w))
        a = probe_align(f, full, unit, tol, lambda w: lt(w, w, fresh=True)) if align else 1
        a = floor(a, full)
        step = math.lcm(unit, a)
        pts = refine(f, axis_points(full, step, points), step, tol, max_points)
        return {'width': pts, 'us': monotone([f(w) for w in pts]), 'align': a}
    full_in, full_out, u_in, u_out = axes['in'], axes['out'], axes['unit_in'], axes['unit_out']
    ins, outs, a = [full_in], [full_out], 1
    if u_out:
        f_out = (lambda w: lt(full_in, w))
        a = probe_align(f_out, full_out, u_out, tol,
                        lambda w: lt(full_in, w, fresh=True)) if align else 1
        a = floor(a, full_out)
        step = math.lcm(u_out, a)  # sample where divisor='auto' lands
        outs = refine(f_out, axis_points(full_out, step, points), step, tol, max_points)
    if u_in:
        f_in = (lambda w: lt(w, full_out))
        ins = refine(f_in, axis_points(full_in, u_in, points), u_in, tol, max_points)
    us = [monotone([lt(i, o) for o in outs]) for i in ins]
    cols = [monotone([row[j] for row in us]) for j in range(len(outs))]
    return {'in': ins, 'out': outs, 'us': [list(r) for r in zip(*cols)], 'align': a}


def profile_layers(layers: Dict[str, Dict], backend: Backend, settings: Dict,
                   batch: Optional[int] = None, log=None) -> Dict[str, Dict]:
    """The table entries of every plan layer (``settings``: points, rounds, warmup, tol,
    max_points, align)."""
    timer = Timer(backend.device if backend.name == 'torch' else 'cpu', settings['rounds'],
                  settings['warmup'], backend.clock)
    out, t0 = {}, time.perf_counter()
    for i, (name, layer) in enumerate(layers.items()):
        lt = LayerTimer(layer, backend, timer, batch)
        out[name] = profile_entry(layer['axes'], lt, settings['points'], settings['tol'],
                                  settings['max_points'], settings['align'],
                                  backend.min_align if settings['align'] else 1)
        out[name]['points_timed'] = len(lt.cache)
        out[name]['out_elems'] = layer['out_elems']
        if log:
            done = time.perf_counter() - t0
            log(f'\r[profile_latency] {i + 1}/{len(layers)} layers, {done:.0f} s, about '
                f'{done / (i + 1) * (len(layers) - i - 1):.0f} s left ', end='')
    if log:
        log('')
    return out


def compare_calls(calls: Dict[str, Callable[[], Any]], device: str = 'cpu', rounds: int = 10,
                  warmup: int = 2, clock: str = 'wall') -> Dict[str, float]:
    """Median time (us) of each ``fn()``, interleaved: every round times each once, in
    rotating order, so drift and other processes hit all alike (``clock``: see Timer)."""
    names = list(calls)
    times: Dict[str, List[float]] = {n: [] for n in names}
    timer = Timer(device, rounds=1, warmup=0, clock=clock)
    for _ in range(warmup):
        for n in names:
            calls[n]()
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(timer(calls[n]))
    return {n: statistics.median(t) for n, t in times.items()}


def paired_ratio(full: Callable[[], Any], thin: Callable[[], Any], run: Backend, rounds: int,
                 warmup: int) -> Tuple[float, float]:
    """``(median, standard error)`` of the per-round ratio ``time(thin) / time(full)``, the
    two timed back to back in alternating order (``run``'s device and clock)."""
    timer = Timer(run.device, rounds=1, warmup=0, clock=run.clock)
    with torch.no_grad():
        for _ in range(warmup):
            full(), thin()
        ratios = []
        for r in range(rounds):
            if r % 2:
                t_thin, t_full = timer(thin), timer(full)
            else:
                t_full, t_thin = timer(full), timer(thin)
            ratios.append(t_thin / t_full)
    med = statistics.median(ratios)
    mad = statistics.median(abs(x - med) for x in ratios)
    return med, MAD_TO_SE * mad / math.sqrt(len(ratios))


def group_progress(i: int, n: int, key: str, kept: int, channels: int, ratio: float,
                   se: float, seconds: float) -> str:
    """The progress line of the ``i``-th of ``n`` groups measured alone in the model."""
    return (f'[profile_latency] group {i + 1}/{n} {key} at {kept}/{channels}: {ratio:.3f} '
            f'+- {se:.3f} of the model ({seconds:.0f} s)')


# -- a plan from another machine ---------------------------------------------------------------
def plan_input(plan: Dict, batch: Optional[int] = None) -> torch.Tensor:
    """A random input of the plan's models (at ``batch``, else the plan's batch)."""
    shape = list(plan['models']['input_shape'])
    if batch:
        shape[0] = batch
    return torch.randn(shape)


def load_call(folder: str, pt: str, onnx: str, shapes: Optional[Dict], backend: Backend,
              x: torch.Tensor) -> Callable[[], Any]:
    """``fn()`` running a model file of the plan on ``x`` in ``backend``: the TorchScript
    file ``pt`` (eager) or the ONNX file ``onnx``, its weights refilled with random values
    where it was written without them (``shapes``: its TorchScript parameter shapes), run
    ``FIRST_RUNS`` times untimed."""
    if backend.name == 'onnxruntime':
        path = osp.join(folder, onnx)
        fn = backend.file_callable(weightless.refill_onnx(path) if shapes is not None
                                   else path, x)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # TorchScript's deprecation notices
            module = torch.jit.load(osp.join(folder, pt))
        if shapes is not None:
            weightless.refill(module, shapes)
        fn = backend.callable(module, x)
    with torch.no_grad():
        for _ in range(FIRST_RUNS):
            fn()
    return fn


def _model_calls(plan: Dict, folder: str, backend: Backend, x: torch.Tensor) -> Dict:
    """``fn()`` of the plan's model and its thinner copies in ``backend``."""
    models, shapes = plan['models'], plan.get('weightless')
    return {tag: load_call(folder, models[tag], models[tag + '_onnx'],
                           None if shapes is None else shapes[tag], backend, x)
            for tag in ('full', 'thin', 'quarter') if tag in models}


def time_groups(plan: Dict, folder: str, backend: Backend, full: Callable[[], Any],
                x: torch.Tensor, log=None) -> Dict[str, Dict]:
    """Group key -> ``{"channels", "kept", "ratio", "se"}`` (the table's
    ``group_calibration['groups']``): the model with each group of the plan alone at
    ``kept`` channels, timed against ``full`` in paired rounds (:func:`paired_ratio`)."""
    todo, out, t0 = plan['groups']['models'], {}, time.perf_counter()
    rounds, warmup = plan['groups']['rounds'], plan['groups']['warmup']
    for i, g in enumerate(todo):
        thin = load_call(folder, g['pt'], g['onnx'], g.get('weightless'), backend, x)
        ratio, se = paired_ratio(full, thin, backend, rounds, warmup)
        out[g['key']] = {'channels': g['channels'], 'kept': g['kept'], 'ratio': ratio,
                         'se': se}
        if log:
            log(group_progress(i, len(todo), g['key'], g['kept'], g['channels'], ratio, se,
                               time.perf_counter() - t0))
    return out


def check_plan(plan: Dict) -> None:
    """Raise ValueError unless ``plan`` is a latency plan."""
    got = plan.get('format')
    if got not in (PLAN_FORMAT, PLAN_FORMAT_GROUPS):
        newer = isinstance(got, str) and got.startswith('mmgfp-latency-plan/')
        raise ValueError(f'not a latency plan this runner reads: `format` must be '
                         f'{PLAN_FORMAT!r} or {PLAN_FORMAT_GROUPS!r}, but got {got!r}; ' + (
                             'copy the runner.py (and weightless.py) of the mmgfp that wrote '
                             'the plan' if newer else 'write one with tools/profile_latency.py '
                             'CONFIG --export-plan plan.json'))
    if (got == PLAN_FORMAT_GROUPS) != bool(plan.get('groups')):
        raise ValueError(f'latency plan format {got!r} does not match its content (groups: '
                         f"{bool(plan.get('groups'))}); export the plan again")


def run_plan(plan: Dict, folder: str, backend: Backend, batch: Optional[int] = None,
             log=None) -> Dict:
    """The latency table (a dict) of ``plan`` measured here, with its ``group_calibration``
    where the plan holds groups (``--calibrate-groups``)."""
    check_plan(plan)
    s = plan['settings']
    if backend.threads:
        torch.set_num_threads(backend.threads)
    with CpuShare(torch.get_num_threads()) as share:  # the groups' timing included
        layers = profile_layers(plan['layers'], backend, s, batch, log)
        x = plan_input(plan, batch)
        calls = _model_calls(plan, folder, backend, x)
        device = backend.device if backend.name == 'torch' else 'cpu'
        with torch.no_grad():
            us = compare_calls(calls, device, max(2 * s['rounds'], 10), s['warmup'] + 1,
                               backend.clock)
        groups = time_groups(plan, folder, backend, calls['full'], x, log) if plan.get(
            'groups') else None
    for entry in layers.values():  # output elements per channel grow with the batch
        entry['out_elems'] = entry['out_elems'] * (batch or plan['key']['batch']) // plan[
            'key']['batch']
    if log and share.result:
        log(share.text())
    table = {'format': TABLE_FORMAT, 'key': table_key(plan, backend, batch),
             'total_us': us['full'], 'layers': layers,
             'calibration': calibration(us, plan['calibration'])}
    if share.result:
        table['profiled'] = share.result
    if groups is not None:
        table['group_calibration'] = {'groups': groups, 'layers': plan['groups']['layers']}
    return table


def table_key(plan: Dict, backend: Backend, batch: Optional[int] = None) -> Dict:
    """The key of a table of ``plan`` timed here in ``backend`` (at ``batch``)."""
    return dict(plan['key'], device=device_name(backend.device), torch=str(torch.__version__),
                dtype=backend.dtype, channels_last=backend.channels_last,
                batch=batch or plan['key']['batch'], threads=torch.get_num_threads(),
                **backend.key())


def calibration(us: Dict[str, float], widths: Dict) -> Dict:
    """The table's ``calibration``: each thinner copy's measured ratio and its widths."""
    cal = {'ratio': us['thin'] / us['full'], 'thin': widths['thin']}
    if 'quarter' in us:
        cal.update(ratio_quarter=us['quarter'] / us['full'], quarter=widths['quarter'])
    return cal


# -- a measured compact ------------------------------------------------------------------------
def plan_id(plan: Dict) -> str:
    """A fingerprint of the plan's key and layers: a point is exported for one plan."""
    text = json.dumps({'key': plan['key'], 'layers': plan['layers']}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def key_runtime(key: Dict) -> Dict:
    """The :class:`Backend` arguments of the runtime a table's key names."""
    ort = key.get('backend', 'torch') == 'onnxruntime'
    return {'name': key.get('backend', 'torch'),
            'device': 'cuda' if str(key.get('device', '')).startswith('cuda:') else 'cpu',
            'dtype': key.get('dtype', 'fp32'), 'channels_last': bool(key.get('channels_last')),
            'threads': int(key.get('threads') or 1),
            'providers': [key['provider']] if ort and key.get('provider') else None,
            'opt_level': key.get('graph_optimization', 'all')}


def check_point(plan: Dict, point: Dict) -> None:
    """Raise ValueError unless ``point`` was exported for ``plan``."""
    fix = ('export it from this plan: tools/profile_latency.py CONFIG --plan-in PLAN.json '
           '--calibrate-on SPEC.json --export-point POINT.json')
    if point.get('format') != POINT_FORMAT:
        raise ValueError(f'not a latency point: `format` must be {POINT_FORMAT!r}, but got '
                         f'{point.get("format")!r}; {fix}')
    made = point.get('plan', {})
    if made.get('id') != plan_id(plan):
        what = ', '.join(f'{k} {made.get(k)!r}' for k in ('model', 'config', 'batch',
                                                          'input_size'))
        here = ', '.join(f'{k} {plan["key"].get(k)!r}' for k in ('model', 'config', 'batch',
                                                                 'input_size'))
        raise ValueError(f'the point was exported for another plan ({what}; plan id '
                         f'{made.get("id")}), not for this one ({here}; plan id '
                         f'{plan_id(plan)}): {fix}')


def check_table(plan: Dict, table: Dict, backend: Backend, batch: Optional[int]) -> None:
    """Raise ValueError unless ``table`` was made from ``plan`` in this runtime, here."""
    want, key = table_key(plan, backend, batch), table.get('key', {})
    bad = [f'{k}: table {key.get(k)!r}, here {want.get(k)!r}' for k in RUN_FIELDS
           if key.get(k) != want.get(k)]
    if set(table.get('layers', ())) != set(plan['layers']):
        bad.append("layers: the table's are not the plan's")
    if bad:
        raise ValueError('the table was not made from this plan in this runtime on this '
                         f'device ({"; ".join(bad)}): a point is timed where and as its table '
                         'was; run --add-point on the device the table was made on with its '
                         'settings (they default to the table\'s), or make a table here first '
                         '(runner.py PLAN.json --out TABLE.json)')


def add_point(plan: Dict, folder: str, table: Dict, point: Dict, point_folder: str,
              backend: Backend, batch: Optional[int] = None, rounds: int = 15,
              warmup: int = 2, log=None) -> Dict:
    """``table`` (made from ``plan`` by :func:`run_plan` in ``backend``) with the compact of
    ``point`` (its files in ``point_folder``) timed against the plan's model in paired rounds
    (:func:`paired_ratio`) and appended to its ``points`` as
    :func:`mmgfp.apis.latency.point_calib.with_point` stores one.

    Raises:
        ValueError: ``point`` was exported for another plan, or ``table`` is not this plan's
            or was made in another runtime or on another device.
    """
    check_plan(plan)
    check_point(plan, point)
    check_table(plan, table, backend, batch)
    x, shapes, models = plan_input(plan, batch), plan.get('weightless'), plan['models']
    full = load_call(folder, models['full'], models['full_onnx'],
                     None if shapes is None else shapes['full'], backend, x)
    compact = load_call(point_folder, point['pt'], point['onnx'], point.get('weightless'),
                        backend, x)
    with CpuShare(backend.threads) as share:
        ratio, se = paired_ratio(full, compact, backend, rounds, warmup)
    if log:
        log(f'[profile_latency] compact measured {ratio:.3f} +- {se:.3f} of the model '
            f'({rounds} paired rounds, {backend.name}, {backend.clock} clock)'
            + (f'; {share.text()}' if share.result else ''))
    entry = {'widths': point['widths'], 'ratio': ratio, 'se': se}
    return {**table, 'points': list(table.get('points') or []) + [entry]}


def read_json(path: str, what: str) -> Dict:
    """The JSON object in ``path`` (a plan, table or point: ``what``), or ValueError naming
    the file."""
    if not osp.isfile(path):
        raise ValueError(f'{what} {path} does not exist')
    try:
        with open(path) as f:
            out = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{what} {path} is not JSON ({e}): give the {what} file mmgfp wrote '
                         '(tools/profile_latency.py or this runner)') from None
    if not isinstance(out, dict):
        raise ValueError(f'{what} {path} holds a {type(out).__name__}, not a {what}')
    return out


def runtime(args, key: Optional[Dict] = None) -> Backend:
    """The runtime the flags name; where a flag is not given, the table key's (``key``) or
    the default."""
    base = key_runtime(key) if key else {'name': 'torch', 'device': 'cpu', 'dtype': 'fp32',
                                         'channels_last': False, 'threads': None,
                                         'providers': None, 'opt_level': 'all'}
    given = {'name': args.backend, 'device': args.device, 'dtype': args.dtype,
             'channels_last': args.channels_last, 'threads': args.threads,
             'providers': args.providers, 'opt_level': args.opt_level}
    chosen = {**base, **{k: v for k, v in given.items() if v is not None}}
    # the threads that run, as the key records them (ONNX Runtime's own default would differ
    # from the key's count, and one thread picks the CPU clock): torch's count where not given
    chosen['threads'] = chosen['threads'] or torch.get_num_threads()
    return Backend(**chosen)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Measure a latency table from a plan, or add a '
                                'measured compact to a table made from it')
    p.add_argument('plan', help='plan.json written by tools/profile_latency.py --export-plan')
    p.add_argument('--out', required=True, help='the table (JSON) to write')
    p.add_argument('--backend', default=None, choices=['torch', 'onnxruntime'],
                   help="default: torch (with --add-point: the table's, as every flag here)")
    p.add_argument('--device', default=None, help="'cpu' or 'cuda[:N]' (torch backend)")
    p.add_argument('--dtype', default=None, choices=list(DTYPES))
    p.add_argument('--channels-last', action='store_true', default=None)
    p.add_argument('--batch', type=int, default=None, help="default: the plan's")
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--providers', nargs='+', default=None,
                   help='onnxruntime providers, first preferred (default: CPU)')
    p.add_argument('--opt-level', default=None, choices=ORT_LEVELS, help='default: all')
    p.add_argument('--table', metavar='TABLE.json',
                   help='with --add-point: a table this runner made from the plan')
    p.add_argument('--add-point', metavar='POINT.json',
                   help='time the compact of POINT.json (tools/profile_latency.py '
                   '--export-point) against the plan\'s model in the table\'s runtime and write '
                   'the table with it added as a measured point to --out')
    p.add_argument('--point-rounds', type=int, default=15,
                   help='paired rounds with --add-point (default: 15)')
    args = p.parse_args(argv)
    if bool(args.table) != bool(args.add_point):
        p.error('--add-point POINT.json and --table TABLE.json go together')
    if args.point_rounds < 1:
        p.error(f'--point-rounds must be >= 1, got {args.point_rounds}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    log = (lambda *a, **k: print(*a, file=sys.stderr, flush=True, **k))
    folder = osp.dirname(osp.abspath(args.plan))
    try:
        plan = read_json(args.plan, 'plan')
        if args.add_point:
            table, point = read_json(args.table, 'table'), read_json(args.add_point, 'point')
            backend = runtime(args, table.get('key', {}))
            torch.set_num_threads(backend.threads)
            table = add_point(plan, folder, table, point,
                              osp.dirname(osp.abspath(args.add_point)), backend,
                              args.batch or table.get('key', {}).get('batch'),
                              args.point_rounds, log=log)
        else:
            table = run_plan(plan, folder, runtime(args), args.batch, log=log)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    with open(args.out, 'w') as f:
        json.dump(table, f, indent=1)
    extra = [f"{len(table['group_calibration']['groups'])} groups calibrated"] if \
        table.get('group_calibration') else []
    extra += [f"{len(table['points'])} measured point(s)"] if table.get('points') else []
    print(f"wrote {args.out}: {len(table['layers'])} layers, whole model "
          f"{table['total_us'] / 1e3:.2f} ms on {table['key']['device']}"
          + ''.join(f'; {e}' for e in extra))
    return 0


if __name__ == '__main__':
    sys.exit(main())
