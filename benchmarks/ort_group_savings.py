"""Does an ONNX Runtime table predict what each prunable group (or a set of groups) saves?

For every prunable group (those whose key contains one of ``--groups``, default all), the
whole model with that group alone at ``--fraction`` of its width (rounded up to a multiple of
8 units) is exported and timed in ONNX Runtime against the unpruned model (one thread, CPU
time, paired rounds, median ratio and its standard error), and the measured ratio is printed
beside the table's prediction, with and without the table's group factors::

    taskset -c 1 .venv/bin/python benchmarks/ort_group_savings.py \\
        mmpretrain::resnet/resnet50_8xb32_in1k.py --input-size 224 224 \\
        --table benchmarks/results/latency_ort/table_resnet50_ort_ctx_b1_t1_224.json \\
        --json benchmarks/results/latency_ort/resnet50_ort_ctx_group_savings.json

``--together '[{"layer1.1.conv1": 16, "layer1.1.conv2": 32}]'`` times sets of groups narrowed
together instead (group keys without the ``backbone.`` prefix are looked up with it; widths in
channels). Random weights, batch 1. A single group saves 1-14% of ResNet-50, so on a loaded
machine single figures are noisy; the standard error says how noisy.
"""
import argparse
import json
import math
import os.path as osp
import sys
import tempfile

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--input-size', type=int, nargs=2, default=[224, 224])
    p.add_argument('--table', required=True)
    p.add_argument('--rounds', type=int, default=15, help='paired rounds per model')
    p.add_argument('--fraction', type=float, default=0.5, help='width of each group alone')
    p.add_argument('--groups', nargs='+', default=None, help='only keys containing one of these')
    p.add_argument('--together', default=None,
                   help='JSON list of {group: channels}: time each set narrowed together')
    p.add_argument('--json')
    return p.parse_args(argv)


def cases(groups, args):
    """``[(label, {key: units})]``: each group alone, or the ``--together`` sets."""
    from mmgfp.apis.latency.group_calib import aligned_units
    if args.together:
        out = []
        for widths in json.loads(args.together):
            units = {}
            for k, c in widths.items():
                key = k if k in groups.groups else f'backbone.{k}'
                units[key] = math.ceil(c / groups.groups[key].block)
            out.append((' + '.join(f'{k}:{c}' for k, c in widths.items()), units))
        return out
    return [(g.key, {g.key: aligned_units(g.units, args.fraction)}) for g in groups.prunable
            if not args.groups or any(s in g.key for s in args.groups)]


def main(argv=None):
    args = parse_args(argv)
    from mmgfp.apis.checking.check import load_config
    from mmgfp.apis.latency.group_calib import _caller
    from mmgfp.apis.latency.plan import narrowed
    from mmgfp.apis.latency.profile import config_model
    from mmgfp.apis.latency.runner import Backend, paired_ratio
    from mmgfp.core import LatencyTable
    torch.set_num_threads(1)
    table = LatencyTable.load(args.table)
    plain = {k: v for k, v in table.to_dict().items() if k != 'group_calibration'}
    plain = LatencyTable.from_dict(plain)
    model, groups, fwd = config_model(load_config(args.config), 1, tuple(args.input_size))
    model.eval()
    run, rows = Backend('onnxruntime', threads=1), []
    with tempfile.TemporaryDirectory() as tmp:
        full = _caller(model, fwd, run, tmp, 'full')
        for label, units in cases(groups, args):
            chans = {k: u * groups.groups[k].block for k, u in units.items()}

            def kept(k, chans=chans):
                return chans.get(k, groups.groups[k].channels)

            thin = _caller(narrowed(model, groups, units), fwd, run, tmp, 'thin')
            ratio, se = paired_ratio(full, thin, run, args.rounds, 2)
            rows.append({'groups': chans, 'measured': ratio, 'se': se,
                         'predicted': table.predict(groups, kept) / table.total_us,
                         'predicted_plain': plain.predict(groups, kept) / plain.total_us})
            print(f"{label:45s} measured {ratio:.3f} +- {se:.3f} predicted "
                  f"{rows[-1]['predicted']:.3f} (without group factors "
                  f"{rows[-1]['predicted_plain']:.3f})", flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
