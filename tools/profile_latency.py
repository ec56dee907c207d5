"""Measure the latency table of a model on the device it will run on (for delta='latency').

    python tools/profile_latency.py CONFIG --device cpu|cuda --dtype fp32|fp16 [--channels-last]
        --batch N --input-size H W --out TABLE.json [--threads T] [--checkpoint CKPT]
        [--backend torch|onnxruntime [--providers P ...] [--opt-level all]]
    python tools/profile_latency.py CONFIG --batch N --input-size H W --export-plan plan.json
        [--calibrate-groups [--group-rounds R]]
    python tools/profile_latency.py CONFIG --table-in TABLE.json --calibrate-on SPEC.json|DIR
        --out TABLE2.json [--point-rounds R]
    python tools/profile_latency.py CONFIG --plan-in plan.json --calibrate-on SPEC.json|DIR
        --export-point point.json

Times every conv/linear layer that pruning can narrow (with its norm and activation) at its
real input sizes over a grid of channel counts, plus the whole model, and writes the table.
Run it on the deploy device with the deploy settings; an existing --out with the same device,
torch version and settings is reused (--force measures again). Then prune with
``FisherPruningHook(delta='latency', target_metric='latency', latency_table='TABLE.json')``.
For steady CPU figures pin the process to a free core (``taskset -c N``) and give --threads.

``--backend onnxruntime`` times every block, the model and its half-width calibration copy
exported to ONNX and run in ONNX Runtime with the given threads, providers and graph
optimisation level (as the deployment sets them), each block without the layout conversions
at its graph's edges (in context) and, with one thread, in CPU time; the key records the
runtime, its version, the provider, ``block_timing`` and ``clock``. ``--calibrate-groups``
then times the model with each prunable group alone at half width against the model (paired
rounds, ``--group-rounds``) and stores what each saves: the table fits one factor per group
(``mmgfp/core/latency_groups.py``); a cached table without them gets them added.
``--export-plan plan.json`` measures nothing: it writes what to time (every
layer's calls, blocks and widths; the model and the half-width copy as TorchScript and ONNX
beside it) for ``mmgfp/apis/latency/runner.py``, one file that needs only torch, to make the
table on a deploy device without OpenMMLab::

    python runner.py plan.json --out table.json [--device cuda --dtype fp16 --batch 32]

With ``--calibrate-groups`` the plan also holds the model with each prunable group alone at
half width (``plan.group000.pt`` / ``.onnx``, ...; ResNet-50: 37 groups, 17 MB in all): the
runner times them (``--group-rounds`` paired rounds) and the table gets its group factors.

``--calibrate-on SPEC.json`` (with ``--table-in``, a table of this config) times the compact
that the channel spec makes (or a ``tools/deploy_pruned.py`` output DIR: its ``channels.json``)
against the original in the table's runtime, batch, input size and clock (paired
rounds), and writes the table with the compact added as a measured point to ``--out``: the
table then predicts that compact as measured and corrects predictions near its saving
(``mmgfp/core/latency_points.py``). Prune again with the new table. For a table made by the
runner, ``--plan-in plan.json --calibrate-on SPEC.json --export-point point.json`` writes the
compact (weightless TorchScript and ONNX beside ``point.json``) and its widths instead, and
the runner times it on the deploy device, in the table's runtime::

    python runner.py plan.json --table table.json --add-point point.json --out table2.json
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Profile per-layer latency into a JSON table')
    p.add_argument('config', help='an mmdet/mmpretrain config (path or scope::path)')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default: cpu)")
    p.add_argument('--dtype', default='fp32', choices=['fp32', 'fp16'])
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--input-size', type=int, nargs=2, default=[320, 320], metavar=('H', 'W'))
    p.add_argument('--out', help='the table (JSON); reused if it fits')
    p.add_argument('--export-plan', metavar='PLAN.json',
                   help='write the plan for runner.py instead of measuring here')
    p.add_argument('--keep-weights', action='store_true',
                   help='with --export-plan / --export-point: keep the weights in the model '
                   'files (default: stripped, refilled with random values by runner.py)')
    p.add_argument('--backend', default='torch', choices=['torch', 'onnxruntime'],
                   help='runtime to time in (default: torch eager)')
    p.add_argument('--providers', nargs='+', default=None,
                   help='onnxruntime providers, first preferred (default: CPUExecutionProvider)')
    p.add_argument('--opt-level', default='all', choices=['disable', 'basic', 'extended', 'all'],
                   help='onnxruntime graph optimisation level (default: all)')
    p.add_argument('--threads', type=int, default=None,
                   help="CPU threads while timing (default: torch's)")
    p.add_argument('--checkpoint', default=None, help='weights (timing does not need them)')
    p.add_argument('--points', type=int, default=5, help='initial widths per axis')
    p.add_argument('--rounds', type=int, default=5, help='timed runs per point (median)')
    p.add_argument('--tol', type=float, default=0.1,
                   help='relative interpolation miss that adds a width; alignment spike size')
    p.add_argument('--no-align', action='store_true', help='do not probe alignment')
    p.add_argument('--force', action='store_true', help='measure even if --out fits')
    p.add_argument('--calibrate-groups', action='store_true',
                   help='then time each prunable group alone at half width in the model and '
                   'store a factor per group (added to a cached --out that lacks them); with '
                   '--export-plan: write those models into the plan for runner.py to time')
    p.add_argument('--group-rounds', type=int, default=None,
                   help='paired rounds per group with --calibrate-groups (default: '
                   'max(2 * --rounds, 11))')
    p.add_argument('--table-in', metavar='TABLE.json',
                   help='with --calibrate-on: the table to add the measured compact to')
    p.add_argument('--calibrate-on', metavar='SPEC.json|DIR',
                   help='time the compact this channel spec (or the channels.json of a '
                   'deploy_pruned DIR) makes against the original and add it to --table-in '
                   'as a measured point (written to --out)')
    p.add_argument('--point-rounds', type=int, default=15,
                   help='paired rounds with --calibrate-on (default: 15)')
    p.add_argument('--plan-in', metavar='PLAN.json',
                   help='with --calibrate-on and --export-point: the plan whose table the '
                   'compact is to be added to on the deploy device')
    p.add_argument('--export-point', metavar='POINT.json',
                   help='write the compact of --calibrate-on (without weights unless '
                   '--keep-weights) and its widths for runner.py PLAN --table TABLE '
                   '--add-point POINT.json instead of timing it here')
    args = p.parse_args(argv)
    if args.plan_in or args.export_point:
        if not (args.plan_in and args.export_point and args.calibrate_on) or args.table_in:
            p.error('--export-point POINT.json goes with --plan-in PLAN.json and --calibrate-on '
                    'SPEC.json|DIR (not --table-in: that adds the compact to a table here)')
    elif bool(args.table_in) != bool(args.calibrate_on):
        p.error('--calibrate-on SPEC.json and --table-in TABLE.json go together (or '
                '--calibrate-on with --plan-in PLAN.json and --export-point POINT.json)')
    if args.point_rounds < 1:
        p.error(f'--point-rounds must be >= 1, got {args.point_rounds}')
    if sum(map(bool, (args.out, args.export_plan, args.export_point))) != 1:
        p.error('give --out TABLE.json (measure here) or --export-plan PLAN.json (measure with '
                'runner.py on the deploy device) or --export-point POINT.json, one of them')
    if args.group_rounds is not None and not args.calibrate_groups:
        p.error('--group-rounds needs --calibrate-groups')
    for name in ('batch', 'points', 'rounds', 'group_rounds'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.threads is not None and args.threads < 1:
        p.error(f'--threads must be >= 1, got {args.threads}')
    if min(args.input_size) < 1:
        p.error(f'--input-size must be positive, got {args.input_size}')
    return args


def summary(table, seconds: float) -> str:
    from collections import Counter

    from mmgfp.apis.latency.profile import explained
    aligns = Counter(layer.align for layer in table.layers.values())
    points = sum(layer.entry.get('points_timed', 0) for layer in table.layers.values())
    return '\n'.join([
        f"key: {table.key}",
        f'{len(table.layers)} layers ({points} widths timed when profiled), this run '
        f'{seconds:.0f} s; whole model '
        f'{table.total_us / 1e3:.2f} ms, of which the layers explain '
        f'{explained(table):.0%} at full width; {table.scaled_remainder:.0%} of the '
        "rest shrinks with the layers' outputs and the layers' savings count "
        f'x{table.layer_scale:.2f} (fitted on a half-width copy that measured '
        f"{(table.calibration or {}).get('ratio', float('nan')):.3f} of the model)",
        'alignment found: ' + ', '.join(f'{a}: {n} layers' for a, n in sorted(aligns.items())),
        group_line(table)])


def group_line(table) -> str:
    """What the group calibration found, or that there is none."""
    f = sorted(table.group_factors.values())
    if not f:
        return 'no group calibration (--calibrate-groups adds one)'
    return (f'{len(f)} groups calibrated: factors {f[0]:.2f} to {f[-1]:.2f}, median '
            f'{f[len(f) // 2]:.2f}')


def export_plan(args, cfg) -> int:
    """Write the plan (``--export-plan``) and say how to run it."""
    import os
    from mmgfp.apis.latency import runner
    from mmgfp.apis.latency.profile import plan_config
    plan = plan_config(cfg, args.config, args.export_plan, args.batch, args.input_size,
                       args.checkpoint, points=args.points, rounds=args.rounds, tol=args.tol,
                       align=not args.no_align, weights=args.keep_weights,
                       calibrate_groups=args.calibrate_groups, group_rounds=args.group_rounds)
    folder = os.path.dirname(os.path.abspath(args.export_plan))
    groups = plan.get('groups', {}).get('models', [])
    extra = (f' and {len(groups)} groups alone at half width (.group000.pt/.onnx to '
             f".group{len(groups) - 1:03d}.*, {plan['groups']['rounds']} paired rounds each)"
             if groups else '')
    print(f"wrote {args.export_plan}: {len(plan['layers'])} layers; beside it "
          f"{', '.join(v for k, v in plan['models'].items() if k != 'input_shape')}{extra} "
          f"(in {folder})\non the deploy device (torch only), with runner.py and weightless.py "
          f"copied there from {os.path.dirname(runner.__file__)}: python runner.py "
          f"{args.export_plan} --out table.json [--device cuda --dtype fp16 --batch N]")
    return 0


def spec_path(args, other: str) -> str:
    """The channel spec of ``--calibrate-on``; it and ``other`` must exist."""
    spec = args.calibrate_on
    if osp.isdir(spec):
        spec = osp.join(spec, 'channels.json')  # a tools/deploy_pruned.py output folder
    for path in (other, spec):
        if not osp.isfile(path):
            raise SystemExit(f'error: {path} does not exist')
    return spec


def export_point(args, cfg) -> int:
    """Write the compact of ``--calibrate-on`` as a point of ``--plan-in`` for runner.py."""
    from mmgfp.apis.latency.point_calib import compact_from_spec, write_point
    from mmgfp.apis.latency.profile import config_model
    from mmgfp.apis.latency.runner import check_plan, read_json
    spec = spec_path(args, args.plan_in)
    try:
        plan = read_json(args.plan_in, 'plan')
        check_plan(plan)  # before building the model at its batch and input size
        model, groups, fwd = config_model(cfg, plan['key']['batch'],
                                          plan['key']['input_size'], args.checkpoint)
        compact = compact_from_spec(model, spec)
        write_point(args.export_point, plan, model.eval(), groups, compact, fwd,
                    args.keep_weights)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    print(f'wrote {args.export_point} (the compact of {spec} for {args.plan_in}); on the deploy '
          f'device, beside the plan and the table runner.py made from it: python runner.py '
          f'{args.plan_in} --table table.json --add-point {args.export_point} --out '
          'table_point.json')
    return 0


def calibrate_on(args, cfg) -> int:
    """Add the compact of ``--calibrate-on`` to ``--table-in`` as a measured point."""
    from mmgfp.apis.latency.point_calib import calibrate_on as add_point
    from mmgfp.apis.latency.point_calib import compact_from_spec
    from mmgfp.apis.latency.profile import config_model
    from mmgfp.apis.latency.timing import threads_set
    from mmgfp.core import LatencyTable
    spec = spec_path(args, args.table_in)
    try:
        table = LatencyTable.load(args.table_in)
        model, groups, fwd = config_model(cfg, table.key['batch'], table.key['input_size'],
                                          args.checkpoint)
        table.check_groups(groups)
        compact = compact_from_spec(model, spec)
        with threads_set(table.key.get('threads')):
            table = add_point(table, model, compact, fwd, rounds=args.point_rounds)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    table.save(args.out)
    print(f'wrote {args.out}')
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    import mmgfp  # noqa: F401
    from mmgfp.apis.checking.check import load_config
    from mmgfp.apis.latency.profile import profile_config
    if args.checkpoint and not osp.isfile(args.checkpoint):
        raise SystemExit(f'error: checkpoint {args.checkpoint} does not exist')
    try:
        cfg = load_config(args.config)
    except FileNotFoundError as e:
        raise SystemExit(f'error: {e}')
    t0 = time.perf_counter()
    if args.export_plan:
        return export_plan(args, cfg)
    if args.export_point:
        return export_point(args, cfg)
    if args.calibrate_on:
        return calibrate_on(args, cfg)
    try:
        table, _ = profile_config(
            cfg, args.config, args.device, args.dtype, args.channels_last, args.batch,
            args.input_size, args.checkpoint, threads=args.threads, points=args.points,
            rounds=args.rounds, tol=args.tol, align=not args.no_align, out=args.out,
            force=args.force, backend=args.backend, providers=args.providers,
            opt_level=args.opt_level, calibrate_groups=args.calibrate_groups,
            group_rounds=args.group_rounds)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    print(summary(table, time.perf_counter() - t0))
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
