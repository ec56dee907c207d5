"""Pack original and compact models as weightless TorchScript files for ``run_gpu.py``.

Run here (needs mmgfp and OpenMMLab), from the repository root::

    .venv/bin/python benchmarks/gpu/pack.py                    # about 15 min on one core
    .venv/bin/python benchmarks/gpu/pack.py --specs benchmarks/results/latency_specs \\
        --latency-table resnet50=tables/resnet50_cpu_b1.json

For each model (RetinaNet-R50 and FCOS-R50 at 512x512, ResNet-50 at 224x224, random weights)
the original and its compact variants are built: ``acts``/``flops`` pruned by
:class:`mmgfp.core.FisherPruner` to 50% of the FLOPs with ``divisor`` 1 (``acts``, ``flops``) and
8 (``acts-d8``; ``flops-d8`` on request), and ``latency`` (``delta='latency'`` to half the
predicted latency of a CPU table: a GPU table needs OpenMMLab on the GPU machine, see
docs/en/benchmarks/latency.md) when its spec or a latency table for the model is given. A variant's channel spec is taken from ``--specs``
(``<model>__<variant>.json``, as ``benchmarks/latency.py --save-specs`` writes them) when there,
otherwise pruned here as ``benchmarks/latency.py`` does. Only the architecture matters for
timing, so every model's tensor-mode forward (on the preprocessed input, eval) is traced to
TorchScript and its weights and buffers are stripped to empty tensors, their shapes written to a
JSON beside it: the whole pack is a few MB. ``run_gpu.py`` refills random values on the GPU
machine, which needs nothing but torch.
"""
import argparse
import json
import os
import os.path as osp
import sys
import warnings
from typing import Dict, List, Optional

import torch
import torch.nn as nn

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, osp.dirname(HERE))  # benchmarks/: latency.py, _common.py

import run_gpu  # noqa: E402

MODELS = ['retinanet_r50', 'fcos_r50', 'resnet50']
def trace_stripped(module: nn.Module, example: torch.Tensor):
    """``torch.jit.trace`` of ``module`` (eval, no_grad) and its weightless copy's shapes.

    Returns:
        tuple: (the traced module with empty weights and buffers, their shapes, the output
        shapes of the traced forward on ``example``).
    """
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings, TorchScript deprecation notices
        traced = torch.jit.trace(module, example, check_trace=False, strict=False)
        out = traced(example)
    shapes = run_gpu.strip(traced)
    return traced, shapes, [list(t.shape) for t in _leaves(out)]


def _leaves(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _leaves(o)]


def save_entry(traced, shapes: Dict, folder: str, model: str, variant: str,
               extra: Optional[Dict] = None) -> Dict:
    """Write ``<model>/<variant>.pt`` and ``.json`` into ``folder``; the manifest entry."""
    rel = osp.join(model, variant)
    os.makedirs(osp.join(folder, model), exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.jit.save(traced, osp.join(folder, rel + '.pt'))
    with open(osp.join(folder, rel + '.json'), 'w') as f:
        json.dump(shapes, f)
    kb = (osp.getsize(osp.join(folder, rel + '.pt')) +
          osp.getsize(osp.join(folder, rel + '.json'))) / 1024
    return dict({'model': model, 'variant': variant, 'file': rel + '.pt',
                 'shapes': rel + '.json', 'file_kb': round(kb, 1)}, **(extra or {}))


def write_manifest(folder: str, entries: List[Dict]) -> str:
    path = osp.join(folder, 'manifest.json')
    with open(path, 'w') as f:
        json.dump({'format': run_gpu.PACK_FORMAT, 'torch': torch.__version__,
                   'entries': entries}, f, indent=1)
    return path


def pack_module(module: nn.Module, input_chw: List[int], folder: str, model: str, variant: str,
                extra: Optional[Dict] = None) -> Dict:
    """Trace ``module`` on a random batch of one, strip it and save it; the manifest entry."""
    x = torch.randn([1] + list(input_chw), generator=torch.Generator().manual_seed(0))
    traced, shapes, outs = trace_stripped(module, x)
    return save_entry(traced, shapes, folder, model, variant,
                      dict({'input': list(input_chw), 'out_shapes': outs}, **(extra or {})))


def compact_from(orig: nn.Module, groups, name: str, variant: str, largs, tables: Dict,
                 specs: Optional[str]):
    """The compact model of ``variant``: from ``specs/<model>__<variant>.json`` or pruned here.

    Returns None (with a message) for a latency variant without a spec or a table.
    """
    import copy

    import _latency_models as LM
    import latency
    from mmgfp.core import apply_spec, load_spec
    path = osp.join(specs, f'{name}__{variant}.json') if specs else None
    if path and osp.isfile(path):
        print(f'[pack] {name} {variant}: channel spec from {path}', flush=True)
        return apply_spec(copy.deepcopy(orig), load_spec(path)).eval()
    table = tables.get(name)
    if LM.VARIANTS[variant]['delta'] == 'latency' and table is None:
        print(f'[pack] {name} {variant}: skipped (no --latency-table for {name} and no spec '
              f'in --specs)', flush=True)
        return None
    compact, info = LM.prune(orig, groups, variant, name, largs, largs.seed + 1, table)
    print(f'[pack] {name} {variant}: pruned here, remaining '
          f'{latency.fmt_rem(info["remaining"])}', flush=True)
    return compact.eval()


def flops_acts(module: nn.Module, x: torch.Tensor) -> Dict[str, float]:
    import _latency_models as LM
    cnt = LM.Counter(module)
    with torch.no_grad():
        module(x)
    cnt.close()
    return {'flops': cnt.macs, 'acts': cnt.acts}


def pack_model(name: str, args, largs) -> List[Dict]:
    """Every variant of one model, traced, stripped and saved; their manifest entries."""
    import _latency_models as LM
    import latency
    from mmgfp.apis.deploying.onnx_export import TensorPath
    from mmgfp.core.latency import LatencyTable
    orig, groups, _ = latency.build(name, largs)
    side = args.det_size if LM.is_detector(name) else args.cls_size
    chw = [3, side, side]
    x = torch.randn([1] + chw, generator=torch.Generator().manual_seed(0))
    tables = {n: LatencyTable.load(p) for n, p in args.latency_table.items()}
    base = flops_acts(TensorPath(orig.eval()), x)
    entries = [pack_module(TensorPath(orig), chw, args.out, name, 'original',
                           {'flops_ratio': 1.0, 'acts_ratio': 1.0, 'gmacs': base['flops'] / 1e9})]
    for variant in args.variants:
        compact = compact_from(orig, groups, name, variant, largs, tables, args.specs)
        if compact is None:
            continue
        c = flops_acts(TensorPath(compact), x)
        entries.append(pack_module(
            TensorPath(compact), chw, args.out, name, variant,
            {'flops_ratio': c['flops'] / base['flops'], 'acts_ratio': c['acts'] / base['acts'],
             'gmacs': c['flops'] / 1e9, **LM.VARIANTS[variant]}))
        print(f'[pack] {name} {variant}: FLOPs {entries[-1]["flops_ratio"]:.3f}, '
              f'{entries[-1]["file_kb"]:.0f} kB', flush=True)
    return entries


def parse_args(argv: Optional[List[str]] = None):
    import _latency_models as LM
    import latency
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=MODELS, choices=MODELS)
    p.add_argument('--variants', nargs='+', default=['acts', 'flops', 'acts-d8', 'latency'],
                   choices=list(LM.VARIANTS))
    p.add_argument('--det-size', type=int, default=512, help='detector input side (traced)')
    p.add_argument('--cls-size', type=int, default=224, help='classifier input side (traced)')
    p.add_argument('--specs', help='folder of <model>__<variant>.json channel specs to reuse '
                                   '(benchmarks/latency.py --save-specs)')
    p.add_argument('--latency-table', nargs='+', default=[], metavar='MODEL=PATH',
                   help='latency tables for the latency variants, e.g. resnet50=table.json')
    p.add_argument('--out', default=osp.join(HERE, 'models'), help='the pack folder')
    p.add_argument('--archive', default=osp.join(HERE, 'models.tar.xz'),
                   help="also write the pack folder as this .tar.xz ('' for none)")
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args(argv)
    tables = {}
    for item in args.latency_table:
        model, sep, path = item.partition('=')
        if not sep or model not in MODELS:
            p.error(f'--latency-table {item!r}: write MODEL=PATH with MODEL one of {MODELS}')
        if not osp.isfile(path):
            p.error(f'--latency-table {item!r}: {path} does not exist; make it with '
                    'tools/profile_latency.py or benchmarks/latency.py')
        tables[model] = path
    args.latency_table = tables
    # pruning as benchmarks/latency.py does it (same defaults), at one thread
    args.prune = latency.parse_args(['--threads', '1', '--no-table', '--variants', 'acts'])
    return args


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import _common as C
    C.quiet_logs()
    os.makedirs(args.out, exist_ok=True)
    entries = []
    if osp.isfile(osp.join(args.out, 'manifest.json')):  # keep the models not repacked now
        entries = [e for e in run_gpu.load_manifest(args.out)['entries']
                   if e['model'] not in args.models]
    for name in args.models:
        entries += pack_model(name, args, args.prune)
        write_manifest(args.out, entries)  # usable even if a later model fails
    total_kb = sum(e['file_kb'] for e in entries)
    print(f'[pack] {len(entries)} models, {total_kb / 1024:.1f} MB in {args.out}')
    if args.archive:
        archive(args.out, args.archive)
    return entries


def archive(folder: str, path: str) -> None:
    """``folder``'s files as a ``.tar.xz`` (names relative to it; about a third of the size)."""
    import tarfile
    with tarfile.open(path, 'w:xz') as tar:
        for name in sorted(os.listdir(folder)):
            tar.add(osp.join(folder, name), arcname=name)
    print(f'[pack] archive {path}: {osp.getsize(path) / 1024 ** 2:.1f} MB')


if __name__ == '__main__':
    main()
