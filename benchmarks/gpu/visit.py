"""One visit to a lent GPU: the measurements this project needs from it, in one command.

The lent machine has torch and CUDA but no OpenMMLab, no mmgfp install and no network; the
device tool copies the repository there and gives a few minutes. Everything here needs torch
only, and each step runs in its own process under its own time limit, writing under ``--out``
as it goes, so a step cut short loses only itself:

1. ``models``: ``benchmarks/gpu/run_gpu.py`` on ``models.tar.xz`` (original and compact
   ResNet-50, RetinaNet-R50, FCOS-R50; fp32 and fp16 channels_last, batch 1 and 32, eager and
   CUDA graph): are the compacts faster on the GPU?
2. ``tables``: the latency plans of ``plans.tar.xz`` (the same three models, written here by
   ``tools/profile_latency.py CONFIG --export-plan``, without weights) measured by
   ``mmgfp/apis/latency/runner.py`` at fp16 channels_last, batch 32 and then 1: GPU latency
   tables to prune with here (``latency_table=``), to pack and measure on the next visit.

Run::

    python benchmarks/gpu/visit.py --out $OUT                          # on the GPU
    python benchmarks/gpu/visit.py --out $OUT --steps tables           # one step
    .venv/bin/python benchmarks/gpu/visit.py --out /tmp/visit --device cpu --quick  # CPU path

``--quick`` (the CPU path, tested in ``tests/benchmarks/test_gpu_visit.py``): fp32, batch 1,
eager, fewer rounds. ``summary.json`` in ``--out`` lists every step's command, exit status,
seconds and files.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(osp.dirname(HERE))
LATENCY = osp.join(ROOT, 'mmgfp', 'apis', 'latency')
STEPS = ('models', 'tables')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='folder for the results (the device\'s $OUT)')
    p.add_argument('--steps', nargs='+', default=list(STEPS), choices=STEPS)
    p.add_argument('--device', default='cuda')
    p.add_argument('--pack', default=osp.join(HERE, 'models.tar.xz'))
    p.add_argument('--plans', default=osp.join(HERE, 'plans.tar.xz'),
                   help='folder of plan JSONs (and their model files) or its .tar.xz')
    p.add_argument('--batches', nargs='+', type=int, default=[32, 1],
                   help='table batches, in order (default: 32 then 1)')
    p.add_argument('--models-limit', type=int, default=270, help='seconds for step models')
    p.add_argument('--table-limit', type=int, default=100, help='seconds per table')
    p.add_argument('--quick', action='store_true',
                   help='the CPU path: fp32, batch 1, eager, few rounds')
    return p.parse_args(argv)


def run_step(cmd: List[str], log: str, limit: int) -> Dict:
    """Run ``cmd`` with its output in ``log``; its exit status (124 when cut at ``limit`` s)."""
    t0 = time.perf_counter()
    with open(log, 'w') as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    took = time.perf_counter() - t0
    print(f'[visit] rc {rc} in {took:.0f} s: {" ".join(osp.basename(c) for c in cmd[1:4])}',
          flush=True)
    return {'cmd': cmd[1:], 'rc': rc, 'seconds': round(took, 1), 'log': osp.basename(log)}


def models_step(args) -> List[Dict]:
    cmd = [sys.executable, osp.join(HERE, 'run_gpu.py'), '--device', args.device, '--pack',
           args.pack, '--json', osp.join(args.out, 'gpu_latency.json')]
    if args.quick:
        cmd += ['--settings', 'fp32', '--batches', '1', '--modes', 'eager', '--rounds', '2',
                '--warmup', '1', '--target-ms', '1']
    return [run_step(cmd, osp.join(args.out, 'models.log'), args.models_limit)]


def plan_folder(path: str) -> str:
    """The plans' folder: ``path``, or the ``.tar.xz`` archive extracted (run_gpu's unpack)."""
    sys.path.insert(0, HERE)
    from run_gpu import unpack
    return unpack(path)


def runner_copy() -> str:
    """runner.py and weightless.py copied alone to a temporary folder, as on a deploy device
    (run from mmgfp/apis/latency, its profile.py would hide the stdlib's ``profile``)."""
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix='mmgfp_runner_')
    for name in ('runner.py', 'weightless.py'):
        shutil.copy(osp.join(LATENCY, name), folder)
    return osp.join(folder, 'runner.py')


def tables_step(args) -> List[Dict]:
    folder, runner = plan_folder(args.plans), runner_copy()
    plans = sorted(f for f in os.listdir(folder) if f.endswith('.json'))
    if not plans:
        raise SystemExit(f'error: no plan (*.json) in {args.plans}; write them with '
                         'tools/profile_latency.py CONFIG --export-plan PLAN.json')
    os.makedirs(osp.join(args.out, 'tables'), exist_ok=True)
    setting = ['--dtype', 'fp32'] if args.quick else ['--dtype', 'fp16', '--channels-last']
    tag = 'fp32' if args.quick else 'fp16_cl'
    done = []
    for batch in ([1] if args.quick else args.batches):
        for plan in plans:
            name = f'{osp.splitext(plan)[0]}_{args.device.split(":")[0]}_{tag}_b{batch}'
            cmd = [sys.executable, runner, osp.join(folder, plan), '--out',
                   osp.join(args.out, 'tables', name + '.json'), '--device', args.device,
                   '--batch', str(batch)] + setting
            done.append(run_step(cmd, osp.join(args.out, 'tables', name + '.log'),
                                 args.table_limit))
    return done


def main(argv=None) -> Dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    summary = {'steps': {}}
    for step in args.steps:
        summary['steps'][step] = (models_step if step == 'models' else tables_step)(args)
        with open(osp.join(args.out, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == '__main__':
    main()
