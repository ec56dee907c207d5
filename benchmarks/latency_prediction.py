"""How well a latency table predicts the measured time of compact models (CPU).

Run from the repository root, after profiling the same model and settings::

    taskset -c 1 .venv/bin/python tools/profile_latency.py \\
        mmdet::retinanet/retinanet_r50_fpn_1x_coco.py --device cpu --batch 1 \\
        --input-size 320 320 --threads 1 --out work_dirs/latency/retinanet_r50_cpu_t1_320.json
    .venv/bin/python benchmarks/latency_prediction.py \\
        --table work_dirs/latency/retinanet_r50_cpu_t1_320.json --time-core 1

The model (random weights, random norm statistics) is pruned three ways with *random* Fisher
values (the prediction, not the choice, is under test): ``delta='latency'``, ``divisor='auto'``
to a predicted latency of ``--target``; ``delta='acts'`` with divisor 1 and 8 to ``--target`` of
the FLOPs. The compact models and the original then run the tensor path (eval, no_grad) at the
table's batch and input size, interleaved, pinned to ``--time-core``; predicted and measured
times are printed side by side. With an ONNX Runtime table (``tools/profile_latency.py
--backend onnxruntime``) the models are exported (tensor path) and timed in ONNX Runtime with
the table's threads, on the table's clock (process CPU time for one thread, see
``mmgfp.apis.latency.runner.Backend``) and again on the wall clock (``wall-clock ratio``).

``--modelopt-spec results/latency_specs/<model>__modelopt.json`` adds NVIDIA ModelOpt FastNAS's
compact of the same model as a fourth row, ``modelopt (stored widths)``: rebuilt from the
widths ``benchmarks/latency.py --variants modelopt --save-specs`` stored (no search here), timed
in the same interleaved rounds, its FLOPs and predicted time counted from its kept widths per
group (``benchmarks/_latency_modelopt.py``; ModelOpt is imported only with this option).
"""
import argparse
import copy
import os
import sys
import time

import torch

import _common as C

MODELOPT_ROW = 'modelopt (stored widths)'


def fake_fisher(pruner, seed):
    gen = torch.Generator().manual_seed(seed)
    for key, f in pruner.recorder.fisher.items():
        f.copy_(torch.rand(f.numel(), generator=gen, dtype=torch.float64) + 0.01)
        pruner.recorder.hits[key] = 1


def prune(model, groups, table, kw, metric, target, per_step):
    from mmgfp.core import FisherPruner, apply_spec, make_spec
    m = copy.deepcopy(model)
    pruner = FisherPruner(m, groups, latency_table=table, **kw)
    t0, steps = time.perf_counter(), 0
    while pruner.remaining()[metric] > target:
        fake_fisher(pruner, steps)
        steps += 1
        if not pruner.step(per_step, until=lambda: pruner.remaining()[metric] <= target):
            break
    spec = make_spec(pruner.masker)
    info = {'remaining': pruner.remaining(), 'predicted_ms': pruner.predicted_latency() / 1e3,
            'steps': steps, 'prune_s': time.perf_counter() - t0, 'spec': spec}
    return apply_spec(m.eval(), spec), info


def check_modelopt_spec(path, config):
    """The stored ModelOpt subnet file at ``path`` (as ``_latency_modelopt.load`` reads it),
    after importing ModelOpt.

    Args:
        path (str): The file, as ``benchmarks/latency.py --save-specs`` names it
            (``<model>__modelopt.json``).
        config (str): The ``--config`` it is for; where both it and the file name's model are
            benchmark models (``_common.CONFIGS``) they must be the same.

    Raises:
        ValueError: ``path`` is missing, not JSON or not a ModelOpt subnet file, is named for
            another benchmark model, or ModelOpt cannot be imported (the message says how to
            install it).
    """
    import json

    import _latency_modelopt as LMO
    if not os.path.isfile(path):
        raise ValueError(f'--modelopt-spec {path}: no such file (benchmarks/latency.py '
                         '--variants modelopt --save-specs DIR writes DIR/<model>__modelopt.json)')
    try:
        stored = LMO.load(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'--modelopt-spec {path} is not a ModelOpt subnet file (not JSON: '
                         f'{e})') from None
    except (ValueError, TypeError):  # no 'subnet_config' key (TypeError: not an object)
        raise ValueError(f'--modelopt-spec {path} is not a ModelOpt subnet file (no '
                         '"subnet_config" key)') from None
    if not isinstance(stored['subnet_config'], dict):
        raise ValueError(f'--modelopt-spec {path} is not a ModelOpt subnet file '
                         '("subnet_config" is not an object)')
    named = os.path.basename(path).split('__')[0]
    model = {v: k for k, v in C.CONFIGS.items()}.get(config, config)
    if named in C.CONFIGS and model in C.CONFIGS and named != model:
        raise ValueError(f'--modelopt-spec {path} is the subnet of {named}, not of --config '
                         f'{config}')
    try:
        LMO.import_modelopt()
    except LMO.ModelOptMissing as e:
        raise ValueError(f'--modelopt-spec needs ModelOpt: {e}') from None
    return stored


def score_shape(stored, model):
    """``(batch, (H, W))`` of the batch ModelOpt searched on: the file's ``score_input``
    (``'4x3x128x128'``), else ``benchmarks/latency.py``'s defaults (classifiers 4 x 128,
    detectors 2 x 128)."""
    shape = str(stored.get('score_input', '')).split('x')
    if len(shape) == 4 and all(s.isdigit() for s in shape):
        return int(shape[0]), (int(shape[2]), int(shape[3]))
    return (2 if hasattr(model, 'bbox_head') or hasattr(model, 'rpn_head') else 4), (128, 128)


def modelopt_variant(model, groups, table, stored, path, config, seed=1):
    """ModelOpt's compact of ``model`` rebuilt from ``stored`` (read from ``path`` by
    :func:`check_modelopt_spec`) and its info as :func:`prune` gives it for the GFP rows.

    Args:
        model (nn.Module): The original model (left unchanged).
        groups (GroupSet): Its groups; the compact's widths are read per group.
        table (LatencyTable): Predicts the compact's time from its kept widths per group.
        stored (dict): The subnet file's contents (``subnet_config`` and the search's facts).
        path (str): The file (for messages).
        config (str): The model's config (for messages).
        seed (int): Seed of the random batch the tensor path is rebuilt with; ``latency.py``
            searched on ``--seed`` + 1. Defaults to 1.

    Raises:
        ValueError: The subnet does not fit ``model`` (a file of another model).
    """
    import _latency_modelopt as LMO
    bs, size = score_shape(stored, model)
    x, samples = LMO.score_input(model, bs, size, seed)
    t0 = time.perf_counter()
    try:
        compact = LMO.rebuild(model, x, samples, stored['subnet_config'])
    except Exception as e:  # ModelOpt: RuntimeError for keys, AssertionError for widths
        said = ' '.join(str(e).split())
        said = said if len(said) <= 300 else said[:300] + '...'
        raise ValueError(f'--modelopt-spec {path} does not fit the model of --config {config} '
                         f'(ModelOpt: {type(e).__name__}: {said}); is it the subnet of '
                         'another model? latency.py names them <model>__modelopt.json') from e
    meta = {k: v for k, v in stored.items() if k != 'subnet_config'}
    info = LMO.compact_info(model, compact, groups, table, meta, False)  # meta: the search's facts
    info.update(predicted_ms=table.predict(groups, info['kept'].get) / 1e3, steps=0,
                prune_s=time.perf_counter() - t0)
    return compact.eval(), info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default='retinanet_r50')
    p.add_argument('--table', required=True, help='made by tools/profile_latency.py')
    p.add_argument('--target', type=float, default=0.5)
    p.add_argument('--channels-per-step', type=int, default=64)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--time-core', type=int, default=None, help='pin timing to this CPU core')
    p.add_argument('--modelopt-spec', metavar='PATH',
                   help='add ModelOpt FastNAS\'s compact rebuilt from this subnet file '
                   '(benchmarks/latency.py --variants modelopt --save-specs; e.g. '
                   'results/latency_specs/resnet50__modelopt.json) as a row '
                   f'"{MODELOPT_ROW}"; needs ModelOpt (tools/setup_env.sh)')
    p.add_argument('--json')
    p.add_argument('--spec-out', help="write the latency-targeted compact's channel spec here "
                   '(for tools/profile_latency.py --calibrate-on)')
    args = p.parse_args(argv)
    stored = None
    if args.modelopt_spec:
        try:
            stored = check_modelopt_spec(args.modelopt_spec, args.config)
        except ValueError as e:
            p.error(str(e))
    C.quiet_logs()
    from mmgfp.apis.checking.check import build_model, randomize_norms
    from mmgfp.apis.inputs import demo_batch, loss_forward, prepare_like_training, tensor_forward
    from mmgfp.apis.latency.profile import compare_latency, prepare
    from mmgfp.core import LatencyTable, build_groups
    table = LatencyTable.load(args.table)
    torch.set_num_threads(table.key['threads'])
    torch.manual_seed(0)
    model = build_model(C.load_config(args.config))
    randomize_norms(model, 0)
    prepare_like_training(model)
    model.train()
    groups = build_groups(model, loss_forward(demo_batch(model, 2, (128, 128))))
    models, rows = {'original': copy.deepcopy(model)}, []
    info = {'original': {'predicted_ms': table.total_us / 1e3, 'remaining': {'flops': 1.0}}}
    for name, kw, metric in (('latency, divisor auto', dict(delta='latency', divisor='auto'),
                              'latency'),
                             ('acts, divisor 1', dict(delta='acts', divisor=1), 'flops'),
                             ('acts, divisor 8', dict(delta='acts', divisor=8), 'flops')):
        models[name], info[name] = prune(model, groups, table, kw, metric, args.target,
                                         args.channels_per_step)
        print(f'[prediction] {name}: {info[name]["steps"]} steps, '
              f'{info[name]["prune_s"]:.0f} s', flush=True)
    if stored is not None:
        try:
            models[MODELOPT_ROW], info[MODELOPT_ROW] = modelopt_variant(
                model, groups, table, stored, args.modelopt_spec, args.config)
        except ValueError as e:
            p.error(str(e))
        print(f'[prediction] {MODELOPT_ROW}: rebuilt from {args.modelopt_spec}, '
              f'{info[MODELOPT_ROW]["prune_s"]:.0f} s', flush=True)
    if args.spec_out:
        from mmgfp.core.spec import save_spec
        save_spec(info['latency, divisor auto'].pop('spec'), args.spec_out)
    if args.time_core is not None:
        os.sched_setaffinity(0, {args.time_core})
    data = demo_batch(model, table.key['batch'], table.key['input_size'], seed=1)
    wall, faults = None, {}
    from mmgfp.apis.latency.runner import CpuShare, steady_allocator
    with CpuShare(table.key['threads']) as share:  # what else ran while timing
        if table.key.get('backend') == 'onnxruntime':
            from mmgfp.apis.latency.check import time_onnxruntime
            opts = {'backend': 'onnxruntime', 'device': 'cpu',
                    'threads': table.key['threads'], 'batch': table.key['batch'],
                    'input_size': table.key['input_size']}
            ms = time_onnxruntime(models, opts, args.rounds, 1)  # one thread: CPU time
            wall = time_onnxruntime(models, opts, args.rounds, 1, clock='wall')
        else:
            ms = compare_latency({k: prepare(m, 'cpu') for k, m in models.items()},
                                 tensor_forward(data), rounds=args.rounds, warmup=1,
                                 threads=table.key['threads'], faults=faults)
    wall = wall or ms
    for k in models:
        pred = info[k]['predicted_ms']
        rows.append({'variant': k, 'flops': info[k]['remaining']['flops'], 'measured_ms': ms[k],
                     'predicted_ms': pred, 'measured_ratio': ms[k] / ms['original'],
                     'predicted_ratio': pred / info['original']['predicted_ms'],
                     'pred_over_meas': pred / ms[k], 'wall_ratio': wall[k] / wall['original'],
                     'faults_per_run': faults.get(k)})
    print(f'\n{args.config}, table {args.table} ({table.key["device"]}, '
          f'{table.key["threads"]} thread(s), batch {table.key["batch"]}, input '
          f'{table.key["input_size"]}); median of {args.rounds} interleaved rounds')
    print(C.env_line())
    from mmgfp.apis.latency.timing import device_name
    from mmgfp.core.latency_calib import timing_warnings
    here = {'device': device_name('cpu'), 'backend': table.key.get('backend', 'torch'),
            'clock': table.key.get('clock'), 'threads': table.key['threads']}
    for line in [share.text()] + timing_warnings(table, here, share.result):
        if line:
            print(line)
    print(f'allocator: {steady_allocator()}'
          + ('; minor page faults per timed run: ' + ', '.join(
              f'{k} {v:.0f}' for k, v in faults.items()) if faults else ''))
    print(C.table(rows, ['variant', 'flops', 'measured_ms', 'predicted_ms', 'measured_ratio',
                         'predicted_ratio', 'pred_over_meas', 'wall_ratio'],
                  ['variant', 'FLOPs left', 'measured (ms)', 'predicted (ms)',
                   'measured ratio', 'predicted ratio', 'predicted / measured',
                   'wall-clock ratio']))
    out = {'benchmark': 'latency_prediction', 'args': vars(args), 'rows': rows,
           'key': table.key, 'profiled': share.result}
    if stored is not None:  # the search's facts (its FLOPs target, score, search time, ...)
        out['modelopt'] = info[MODELOPT_ROW]['modelopt']
    C.write_json(args.json, out)
    return rows


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
