"""Small helpers shared by the benchmark scripts (tables, timing, environment facts)."""
import inspect
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch.nn as nn

# Model configs of the benchmarks, by short name.
CONFIGS = {
    'retinanet_r50': 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'fcos_r50': 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'mask_rcnn_r50': 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'resnet50': 'mmpretrain::resnet/resnet50_8xb32_in1k.py',
}


def load_config(name: str):
    """Load a config by short name, ``pkg::path`` or file path.

    ``Config.fromfile('mmdet::...')`` does not resolve the package prefix (mmengine 0.10.7 only
    does that for ``_base_``), so ``pkg::`` paths go through ``mmengine.hub.get_config``.
    """
    import mmgfp  # noqa: F401  (registers the hook and GFPCompactModel)
    from mmengine.config import Config
    from mmengine.hub import get_config
    path = CONFIGS.get(name, name)
    return get_config(path) if '::' in path else Config.fromfile(path)


def quiet_logs() -> None:
    """Silence MMEngine's info logs (init_weights, preprocessors) so tables stay readable."""
    import logging
    import warnings

    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    warnings.filterwarnings('ignore', category=UserWarning)
    warnings.filterwarnings('ignore', category=DeprecationWarning)
    warnings.filterwarnings('ignore', category=FutureWarning)


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call in seconds."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float('nan')


def environment() -> Dict[str, str]:
    import torch
    info = {'python': platform.python_version(), 'torch': torch.__version__,
            'threads': str(torch.get_num_threads()), 'cpu': _cpu_name(),
            'cores': str(os.cpu_count())}
    from importlib import metadata
    for mod, dist in (('mmengine', 'mmengine'), ('mmcv', 'mmcv'), ('mmdet', 'mmdet'),
                      ('mmpretrain', 'mmpretrain'), ('mmgfp', 'mmgfp'),
                      ('torch_pruning', 'torch-pruning'), ('modelopt', 'nvidia-modelopt')):
        try:  # the distribution's version (torch_pruning 1.6.1 says 1.6.0 in __version__)
            info[mod] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return info


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or '?'


def env_line() -> str:
    e = environment()
    keys = ('cpu', 'cores', 'threads', 'torch', 'mmengine', 'mmdet', 'mmpretrain', 'mmgfp',
            'torch_pruning', 'modelopt')
    return ', '.join(f'{k} {e[k]}' for k in keys if k in e)


def table(rows: List[Dict], columns: List[str], headers: Optional[List[str]] = None) -> str:
    """A Markdown table (pastes into a README as is, readable in a terminal)."""
    headers = headers or columns
    cells = [[_fmt(r.get(c, '')) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(vals):
        return '| ' + ' | '.join(v.ljust(w) for v, w in zip(vals, widths)) + ' |'

    out = [line(headers), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
    out += [line(row) for row in cells]
    return '\n'.join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return 'n/a'
        return f'{v:.3f}' if abs(v) < 100 else f'{v:.1f}'
    return str(v)


def write_json(path: Optional[str], payload: Dict) -> None:
    if not path:
        return
    payload = dict(payload, environment=environment())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(payload, f, indent=1, default=str)
    print(f'\nwrote {path}')


class CpuMonitor:
    """How much CPU *other* processes used while a benchmark ran (they skew every timing).

    Compares the machine's busy time (``/proc/stat``) with this process's own CPU time,
    children included, over the same wall-clock interval. With ``cores`` (e.g. ``[1]`` while
    the measurement runs pinned to core 1) only those cores' busy time counts.
    """

    def __init__(self, cores: Optional[Sequence[int]] = None):
        self.rows = ['cpu'] if cores is None else [f'cpu{c}' for c in cores]
        self.start = self._sample()

    def _sample(self):
        busy = 0.0
        hz = os.sysconf('SC_CLK_TCK')
        with open('/proc/stat') as f:
            for line in f:
                parts = line.split()
                if not parts or parts[0] not in self.rows:
                    continue
                vals = [int(v) for v in parts[1:]]
                idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
                busy += (sum(vals[:8]) - idle) / hz
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return time.perf_counter(), busy, own

    def foreign_cores(self) -> float:
        """Average number of cores other processes kept busy since construction."""
        t1, busy1, own1 = self._sample()
        t0, busy0, own0 = self.start
        if t1 - t0 <= 0:
            return 0.0
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))

    def report(self) -> str:
        f = self.foreign_cores()
        msg = f'other processes used {f:.2f} cores on average during this run'
        if f > 0.1:
            msg += (' -- WARNING: the machine was not idle; absolute timings are inflated '
                    'and ratios less reliable')
        return msg


def wait_idle(max_wait: float, threshold: float = 0.15, window: float = 5.0,
              cores: Optional[Sequence[int]] = None) -> str:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` cores (of
    ``cores``, when given)."""
    if max_wait <= 0:
        return 'did not wait for an idle machine'
    t0 = time.perf_counter()
    while True:
        mon = CpuMonitor(cores)
        time.sleep(window)
        busy = mon.foreign_cores()
        waited = time.perf_counter() - t0
        if busy < threshold:
            return f'machine idle after {waited:.0f} s (others used {busy:.2f} cores)'
        if waited >= max_wait:
            return (f'gave up waiting for an idle machine after {waited:.0f} s (others use '
                    f'{busy:.2f} cores)')
        print(f'[wait] other processes use {busy:.2f} cores; waiting ({waited:.0f} s)',
              flush=True)


class Guard:
    """Re-run measurement rounds during which other processes used the CPU.

    On a shared machine another job can slow a round down many times over (OpenMP threads
    competing for two cores). A round is kept only if other processes used at most
    ``max_foreign`` cores on average while it ran; otherwise it is discarded, the guard waits
    for the machine to go quiet and the round runs again. After ``max_wait`` seconds of
    retrying in total, contended rounds are kept and counted.
    """

    def __init__(self, max_foreign: float = 0.2, max_wait: float = 1200.0,
                 cores: Optional[Sequence[int]] = None):
        self.cores = cores  # only these cores' use counts (the pinned timing core)
        self.max_foreign = max_foreign
        self.max_wait = max_wait
        self.discarded = 0
        self.kept_contended = 0
        self.waited = 0.0
        self.foreign = []

    def run(self, fn: Callable[[], object]):
        while True:
            mon = CpuMonitor(self.cores)
            out = fn()
            busy = mon.foreign_cores()
            if busy <= self.max_foreign:
                self.foreign.append(busy)
                return out
            if self.waited >= self.max_wait:
                self.kept_contended += 1
                self.foreign.append(busy)
                return out
            self.discarded += 1
            print(f'[guard] other processes used {busy:.2f} cores during a round: discarded, '
                  'waiting for the machine to go quiet', flush=True)
            t0 = time.perf_counter()
            wait_idle(max(self.max_wait - self.waited, 1.0), self.max_foreign,
                      cores=self.cores)
            self.waited += time.perf_counter() - t0

    def summary(self) -> str:
        worst = max(self.foreign) if self.foreign else 0.0
        msg = (f'{len(self.foreign)} rounds kept (others used at most {worst:.2f} cores during '
               f'a kept round), {self.discarded} discarded as contended')
        if self.kept_contended:
            msg += f', {self.kept_contended} KEPT DESPITE CONTENTION (waited too long)'
        return msg

    def state(self) -> Dict:
        return {'discarded': self.discarded, 'kept_contended': self.kept_contended,
                'waited_s': self.waited, 'foreign_cores_per_round': self.foreign}


class TensorPath(nn.Module):
    """A plain ``forward(x)`` over a model's tensor path (``_forward``), for Torch-Pruning's
    tracer: a detector's raw head outputs, given the data samples of the example batch."""

    def __init__(self, det: nn.Module, data_samples):
        super().__init__()
        self.det = det
        self.data_samples = data_samples
        self._with_samples = len(inspect.signature(det._forward).parameters) >= 2

    def forward(self, x):
        if self._with_samples:
            return self.det._forward(x, self.data_samples)
        return self.det._forward(x)
