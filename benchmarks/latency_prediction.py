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
"""
import argparse
import copy
import os
import sys
import time

import torch

import _common as C


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default='retinanet_r50')
    p.add_argument('--table', required=True, help='made by tools/profile_latency.py')
    p.add_argument('--target', type=float, default=0.5)
    p.add_argument('--channels-per-step', type=int, default=64)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--time-core', type=int, default=None, help='pin timing to this CPU core')
    p.add_argument('--json')
    p.add_argument('--spec-out', help="write the latency-targeted compact's channel spec here "
                   '(for tools/profile_latency.py --calibrate-on)')
    args = p.parse_args(argv)
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
    if args.spec_out:
        from mmgfp.core.spec import save_spec
        save_spec(info['latency, divisor auto'].pop('spec'), args.spec_out)
    if args.time_core is not None:
        os.sched_setaffinity(0, {args.time_core})
    data = demo_batch(model, table.key['batch'], table.key['input_size'], seed=1)
    wall = None
    if table.key.get('backend') == 'onnxruntime':
        from mmgfp.apis.latency.check import time_onnxruntime
        opts = {'backend': 'onnxruntime', 'device': 'cpu', 'threads': table.key['threads'],
                'batch': table.key['batch'], 'input_size': table.key['input_size']}
        ms = time_onnxruntime(models, opts, args.rounds, 1)  # one thread: CPU time
        wall = time_onnxruntime(models, opts, args.rounds, 1, clock='wall')
    else:
        ms = compare_latency({k: prepare(m, 'cpu') for k, m in models.items()},
                             tensor_forward(data), rounds=args.rounds, warmup=1,
                             threads=table.key['threads'])
    wall = wall or ms
    for k in models:
        pred = info[k]['predicted_ms']
        rows.append({'variant': k, 'flops': info[k]['remaining']['flops'], 'measured_ms': ms[k],
                     'predicted_ms': pred, 'measured_ratio': ms[k] / ms['original'],
                     'predicted_ratio': pred / info['original']['predicted_ms'],
                     'pred_over_meas': pred / ms[k], 'wall_ratio': wall[k] / wall['original']})
    print(f'\n{args.config}, table {args.table} ({table.key["device"]}, '
          f'{table.key["threads"]} thread(s), batch {table.key["batch"]}, input '
          f'{table.key["input_size"]}); median of {args.rounds} interleaved rounds')
    print(C.env_line())
    from mmgfp.apis.latency.timing import device_name
    from mmgfp.core.latency_calib import origin_warning
    warning = origin_warning(table.key, {'device': device_name('cpu'),
                                         'backend': table.key.get('backend', 'torch')})
    if warning:
        print(warning)
    print(C.table(rows, ['variant', 'flops', 'measured_ms', 'predicted_ms', 'measured_ratio',
                         'predicted_ratio', 'pred_over_meas', 'wall_ratio'],
                  ['variant', 'FLOPs left', 'measured (ms)', 'predicted (ms)',
                   'measured ratio', 'predicted ratio', 'predicted / measured',
                   'wall-clock ratio']))
    C.write_json(args.json, {'benchmark': 'latency_prediction', 'args': vars(args),
                             'rows': rows, 'key': table.key})
    return rows


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
