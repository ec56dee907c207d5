"""Does an ONNX Runtime table predict what each prunable group saves inside the model?

For every prunable group, the whole model with that group alone at half its width (rounded up
to a multiple of 8) is exported and timed in ONNX Runtime against the unpruned model (one
thread, CPU time, interleaved, median of ``--rounds``), and the measured saving (a fraction of
the model's time) is printed beside the table's prediction::

    taskset -c 1 .venv/bin/python benchmarks/ort_group_savings.py \\
        mmpretrain::resnet/resnet50_8xb32_in1k.py --input-size 224 224 \\
        --table benchmarks/results/latency_ort/table_resnet50_ort_ctx_b1_t1_224.json \\
        --json benchmarks/results/latency_ort/resnet50_ort_ctx_group_savings.json

Random weights, batch 1. A single group saves 1-14% of the model, so on a loaded machine the
per-group figures are noisy; what stands out across groups is the table's bias.
"""
import argparse
import json
import os.path as osp
import sys
import tempfile

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--input-size', type=int, nargs=2, default=[224, 224])
    p.add_argument('--table', required=True)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--json')
    args = p.parse_args()
    from mmgfp.apis.checking.check import load_config
    from mmgfp.apis.latency.group_calib import half_one_group
    from mmgfp.apis.latency.plan import export_models
    from mmgfp.apis.latency.profile import config_model
    from mmgfp.apis.latency.runner import Backend, compare_calls
    from mmgfp.core import LatencyTable
    torch.set_num_threads(1)
    table = LatencyTable.load(args.table)
    model, groups, fwd = config_model(load_config(args.config), 1, tuple(args.input_size))
    model.eval()
    run, tmp, rows = Backend('onnxruntime', threads=1), tempfile.mkdtemp(), []
    files = export_models({'full': model}, fwd, osp.join(tmp, 'm'), torchscript=False)
    x = torch.randn(files['input_shape'])
    full = run.file_callable(osp.join(tmp, files['full_onnx']), x)
    for g in groups.prunable:
        thin, half = half_one_group(model, groups, g.key)
        pred = table.predict(groups, lambda k: half * g.block if k == g.key else
                             groups.groups[k].channels)
        f = export_models({'t': thin}, fwd, osp.join(tmp, 'g'), torchscript=False)
        us = compare_calls({'full': full, 't': run.file_callable(osp.join(tmp, f['t_onnx']), x)},
                           'cpu', args.rounds, 1, run.clock)
        rows.append({'group': g.key, 'channels': g.channels,
                     'pred_saved': 1 - pred / table.total_us,
                     'meas_saved': 1 - us['t'] / us['full']})
        print(f"{g.key:45s} {g.channels:5d} predicted {rows[-1]['pred_saved']:.3f} measured "
              f"{rows[-1]['meas_saved']:.3f}", flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
