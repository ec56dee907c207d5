"""Latency of packed original and compact models on one device, with plain PyTorch only.

This script needs nothing but ``torch`` (no OpenMMLab package, no mmgfp, no network): the
models were traced to TorchScript by ``benchmarks/gpu/pack.py`` with their weights and buffers
stripped to empty tensors (shapes in a JSON beside each file). Here they are refilled with random
values (BN running variances positive, weights scaled by fan-in so fp16 stays finite), moved to
the device, dtype and memory format, and timed::

    python benchmarks/gpu/run_gpu.py --device cuda --json gpu_latency.json    # < 5 min on one GPU
    python benchmarks/gpu/run_gpu.py --device cpu --settings fp32 --batches 1 --modes eager

``--pack`` defaults to ``models.tar.xz`` beside this script (committed; ``pack.py`` writes it),
which is extracted to a temporary folder; a pack folder works as well.

For every model, every setting (``fp32``: float32 NCHW; ``fp16-cl``: float16 channels_last; also
``fp32-cl`` and ``fp16``), batch size and mode (``eager``: the TorchScript module called from
Python, graph optimisation off; ``graph``: one CUDA graph captured and replayed, CUDA only), the
variants of the model (original and compacts) are timed in interleaved rounds (every round times
each variant once, in rotating order; a timing is ``--iters`` forwards between two CUDA events,
or ``time.perf_counter`` on CPU) after warm-up, and the median per forward is reported with its
ratio to the original's. Prints a Markdown table and writes everything to ``--json``.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

HERE = osp.dirname(osp.abspath(__file__))


def _weightless():
    """mmgfp/apis/latency/weightless.py, loaded from its file: one copy of strip/refill for
    this script and mmgfp's latency runner, without importing mmgfp (not installed on the GPU
    machine) or putting that folder on sys.path (its profile.py would hide the stdlib's)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'weightless', osp.join(HERE, '..', '..', 'mmgfp', 'apis', 'latency', 'weightless.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_WL = _weightless()
refill, strip = _WL.refill, _WL.strip  # strip: used by pack.py
PACK_FORMAT = 'mmgfp-gpu-pack/1'
SETTINGS = {'fp32': (torch.float32, False), 'fp32-cl': (torch.float32, True),
            'fp16': (torch.float16, False), 'fp16-cl': (torch.float16, True)}
MODES = ('eager', 'graph')


def unpack(path: str) -> str:
    """A pack folder: ``path`` itself, or ``path`` (a ``.tar.xz`` archive of a pack folder)
    extracted into a temporary folder."""
    if not path.endswith('.tar.xz'):
        return path
    if not osp.isfile(path):
        raise SystemExit(f'error: {path} does not exist; make it with `python '
                         'benchmarks/gpu/pack.py --archive` (needs mmgfp and OpenMMLab)')
    import tarfile
    import tempfile
    out = tempfile.mkdtemp(prefix='mmgfp_pack_')
    with tarfile.open(path, 'r:xz') as tar:
        members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
        for m in members:
            if m.name.startswith(('/', '..')) or '/../' in m.name:
                raise SystemExit(f'error: {path} holds a path outside the pack: {m.name!r}')
        tar.extractall(out, members=members)
    return out


def load_manifest(folder: str) -> Dict:
    """The pack's ``manifest.json``; a clear error when the folder is not a pack."""
    path = osp.join(folder, 'manifest.json')
    if not osp.isfile(path):
        raise SystemExit(f'error: {path} does not exist; build the pack first with '
                         '`python benchmarks/gpu/pack.py` (needs mmgfp and OpenMMLab) and '
                         'carry the folder with this script')
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get('format') != PACK_FORMAT:
        raise SystemExit(f'error: {path} has format {manifest.get("format")!r}, expected '
                         f'{PACK_FORMAT!r}')
    return manifest


def load_variant(folder: str, entry: Dict, device: str, dtype: torch.dtype,
                 channels_last: bool, seed: int = 0) -> nn.Module:
    """Load one packed TorchScript model, refill it and move it to device/dtype/format."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TorchScript's deprecation notices
        model = torch.jit.load(osp.join(folder, entry['file']), map_location='cpu')
    with open(osp.join(folder, entry['shapes'])) as f:
        try:
            refill(model, json.load(f), seed)
        except ValueError as e:
            raise SystemExit(f'error: {entry["file"]}: {e} (pack.py writes both)') from None
    model.eval()
    model.to(device=device, dtype=dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def make_input(entry: Dict, batch: int, device: str, dtype: torch.dtype,
               channels_last: bool, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn([batch] + list(entry['input']), generator=gen).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def all_finite(out) -> bool:
    if isinstance(out, torch.Tensor):
        return bool(torch.isfinite(out).all())
    return all(all_finite(o) for o in out)


def runner(model: nn.Module, x: torch.Tensor, mode: str, warmup: int) -> Callable[[], object]:
    """A no-argument callable running one forward; ``graph`` captures and replays a CUDA graph."""
    def eager():
        with torch.no_grad(), torch.jit.optimized_execution(False):
            return model(x)

    for _ in range(warmup):
        eager()
    if mode == 'eager':
        return eager
    if x.device.type != 'cuda':
        raise ValueError(f"mode 'graph' needs --device cuda, got {x.device.type!r}")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as CUDA graph capture requires
        for _ in range(max(warmup, 2)):
            eager()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = eager()
    graph.replay()
    return lambda: (graph.replay(), static_out)[1]


def timed(fn: Callable[[], object], iters: int, device: str) -> float:
    """Milliseconds per call of ``fn``, over ``iters`` calls (CUDA events on a GPU)."""
    if device.startswith('cuda'):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e3 / iters


def interleaved(runners: Dict[str, Callable], rounds: int, iters: int,
                device: str) -> Dict[str, List[float]]:
    """Every round times each runner once, the order rotating from round to round."""
    names = list(runners)
    times = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(timed(runners[n], iters, device))
    return times


def pick_iters(fn: Callable[[], object], device: str, target_ms: float, limit: int) -> int:
    """Forwards per timing so that one timing lasts about ``target_ms``."""
    once = timed(fn, 1, device)
    return max(1, min(limit, int(target_ms / max(once, 1e-3))))


def bench_setting(folder: str, entries: List[Dict], setting: str, args) -> List[Dict]:
    """All variants of one model in one setting, over the batches and modes asked for."""
    dtype, cl = SETTINGS[setting]
    models = {e['variant']: load_variant(folder, e, args.device, dtype, cl, args.seed)
              for e in entries}
    rows = []
    for batch in args.batches:
        x = make_input(entries[0], batch, args.device, dtype, cl, args.seed + batch)
        for mode in args.modes:
            runs = {v: runner(m, x, mode, args.warmup) for v, m in models.items()}
            finite = {v: all_finite(fn()) for v, fn in runs.items()}
            iters = args.iters or pick_iters(runs['original'], args.device, args.target_ms, 50)
            times = interleaved(runs, args.rounds, iters, args.device)
            base = statistics.median(times['original'])
            for e in entries:
                ms = statistics.median(times[e['variant']])
                rows.append({'model': e['model'], 'variant': e['variant'], 'setting': setting,
                             'batch': batch, 'mode': mode, 'ms': ms, 'ratio': ms / base,
                             'flops_ratio': e.get('flops_ratio'), 'finite': finite[e['variant']],
                             'iters': iters, 'times_ms': times[e['variant']]})
            del runs
            _sync_free(args.device)
    return rows


def _sync_free(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def device_name(device: str) -> str:
    if device.startswith('cuda'):
        return f'cuda: {torch.cuda.get_device_name(torch.device(device))}'
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return 'cpu: ' + line.split(':', 1)[1].strip()
    except OSError:
        pass
    return 'cpu'


def table(rows: List[Dict]) -> str:
    """A Markdown table of the rows (model, variant, setting, batch, mode, ms, ratio)."""
    cols = ['model', 'variant', 'setting', 'batch', 'mode', 'ms', 'ratio', 'flops_ratio',
            'finite']
    heads = ['model', 'variant', 'dtype', 'batch', 'mode', 'ms', 'ratio vs original',
             'FLOPs ratio', 'outputs finite']

    def fmt(v):
        if isinstance(v, float):
            return f'{v:.3f}' if abs(v) < 100 else f'{v:.1f}'
        return '' if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]

    def line(vals):
        return '| ' + ' | '.join(v.ljust(w) for v, w in zip(vals, widths)) + ' |'

    return '\n'.join([line(heads), '|' + '|'.join('-' * (w + 2) for w in widths) + '|'] +
                     [line(c) for c in cells])


def parse_args(argv: Optional[List[str]] = None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--pack', default=osp.join(HERE, 'models.tar.xz'),
                   help='folder written by pack.py (manifest.json and the models), or its '
                        '.tar.xz archive (pack.py --archive)')
    p.add_argument('--device', default='cuda', help="'cuda', 'cuda:N' or 'cpu'")
    p.add_argument('--models', nargs='+', help='model names of the pack to run (default: all)')
    p.add_argument('--variants', nargs='+', help='variants to run besides the original')
    p.add_argument('--settings', nargs='+', default=['fp32', 'fp16-cl'], choices=list(SETTINGS))
    p.add_argument('--batches', nargs='+', type=int, default=[1, 32])
    p.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    p.add_argument('--rounds', type=int, default=7, help='interleaved timed rounds (median)')
    p.add_argument('--warmup', type=int, default=3, help='forwards per variant before timing')
    p.add_argument('--iters', type=int, default=0,
                   help='forwards per timing (0: enough for about --target-ms)')
    p.add_argument('--target-ms', type=float, default=20.0)
    p.add_argument('--threads', type=int, help='torch.set_num_threads on CPU')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', help='write the rows and the environment here')
    args = p.parse_args(argv)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        p.error(f'--device {args.device}: CUDA is not available here (torch {torch.__version__}); '
                'use --device cpu to test the script')
    if not args.device.startswith('cuda') and 'graph' in args.modes:
        if '--modes' in (argv if argv is not None else sys.argv):
            p.error("--modes graph (CUDA graph replay) needs --device cuda")
        args.modes = ['eager']
    if min(args.batches) < 1 or args.rounds < 1:
        p.error(f'--batches and --rounds must be positive, got {args.batches} and {args.rounds}')
    return args


def select(manifest: Dict, args) -> Dict[str, List[Dict]]:
    """Entries by model, the original first, filtered by --models / --variants."""
    by_model: Dict[str, List[Dict]] = {}
    for e in manifest['entries']:
        if args.models and e['model'] not in args.models:
            continue
        if args.variants and e['variant'] != 'original' and e['variant'] not in args.variants:
            continue
        by_model.setdefault(e['model'], []).append(e)
    known = sorted({e['model'] for e in manifest['entries']})
    missing = set(args.models or []) - set(by_model)
    if missing or not by_model:
        raise SystemExit(f'error: --models {sorted(missing)} not in the pack; it holds {known}')
    for name, entries in by_model.items():
        entries.sort(key=lambda e: e['variant'] != 'original')
        if entries[0]['variant'] != 'original':
            raise SystemExit(f'error: the pack has no original variant of {name}')
    return by_model


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.pack = unpack(args.pack)
    manifest = load_manifest(args.pack)
    t0 = time.perf_counter()
    rows = []
    for name, entries in select(manifest, args).items():
        for setting in args.settings:
            got = bench_setting(args.pack, entries, setting, args)
            rows += got
            print(f'[gpu] {name} {setting}: ' + ', '.join(
                f'{r["variant"]} b{r["batch"]} {r["mode"]} {r["ratio"]:.2f}' for r in got
                if r['variant'] != 'original'), flush=True)
    total = time.perf_counter() - t0
    env = {'device': device_name(args.device), 'torch': torch.__version__,
           'cuda': torch.version.cuda, 'threads': torch.get_num_threads(),
           'packed_with': manifest.get('torch')}
    print(f'\nLatency per forward (median of {args.rounds} interleaved rounds), {env["device"]}, '
          f'torch {env["torch"]}; total {total:.0f} s')
    print(table(rows))
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump({'benchmark': 'gpu_latency', 'args': vars(args), 'environment': env,
                       'total_s': total, 'rows': rows}, f, indent=1)
        print(f'wrote {args.json}')
    return rows


if __name__ == '__main__':
    main()
