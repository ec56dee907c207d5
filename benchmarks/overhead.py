"""Training-time overhead of FisherPruningHook while it accumulates Fisher statistics.

Run from the repository root::

    .venv/bin/python benchmarks/overhead.py                 # both models, about 3-4 minutes
    .venv/bin/python benchmarks/overhead.py --models resnet50 --rounds 4 --json out.json
    .venv/bin/python benchmarks/overhead.py --profile        # also profile the hook's cost
    .venv/bin/python benchmarks/overhead.py --premask 0.25   # a quarter of the channels masked
    .venv/bin/python benchmarks/overhead.py --premask 0.25 --mask-on input  # masks on inputs only
    .venv/bin/python benchmarks/overhead.py --distill        # also: the teacher's cost

Each iteration is a real MMEngine train step, ``model.train_step(batch, optim_wrapper)``: data
preprocessor, loss forward, backward and an SGD step, on random demo batches and randomly
initialised models (no pretrained weights). Two variants of the same model run in one process:

* ``without``: no mmgfp hooks on the model;
* ``with``: what FisherPruningHook does on every iteration while it is pruning: the channel
  masks attached (``ChannelMasker.attach``), the Fisher recorder started, and
  ``recorder.begin_iter(batch)`` / ``recorder.end_iter()`` around the step.

The variants alternate in blocks (A B, then B A, ...) so that slow drift (thermal, allocator,
other load) cancels, after warm-up iterations of each. Reported: median milliseconds per
iteration of each variant, their ratio, and the median of the per-round ratios (with its range).
``--premask 0.25`` first masks a quarter of every group's channels, so that the hooked variant
also pays for the masks' multiplications, as it does later in a pruning run (the plain variant
has no hooks, hence no masks). The one-off cost of a pruning step (``pruner.step(1)`` plus the three ``remaining()`` calls the
hook makes after it) is reported separately, and amortised over the hook's default
``interval=10``.

``--distill`` adds a second A/B measurement: the hooked iteration against the same iteration
with :class:`GFPDistillHook` (its default losses) running the teacher and adding the
distillation term; reported as ``distill_*`` columns, with the teacher's weights in MB (the
memory it holds for the whole run; its no-grad forward keeps no activations for backward) and,
on CUDA, the peak memory of each variant.
"""
import argparse
import cProfile
import io
import pstats
import sys
import time

import torch

import _common as C

MODELS = {
    # name: (input size, batch size)
    'retinanet_r50': ((128, 128), 2),
    'resnet50': ((96, 96), 8),
}


def premask(pruner, fraction: float, seed: int = 0) -> None:
    """Mask a random ``fraction`` of the units of every prunable group (at least one kept)."""
    gen = torch.Generator().manual_seed(seed)
    for key, keep in pruner.masker.keep.items():
        n = keep.numel()
        drop = min(int(round(fraction * n)), n - 1)
        new = torch.ones(n, dtype=torch.bool)
        new[torch.randperm(n, generator=gen)[:drop]] = False
        pruner.masker.set_keep(key, new)


def setup(name, input_size, batch_size, lr, mask_on='auto', seed=0):
    from mmengine.optim import OptimWrapper

    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.inputs import demo_batch, loss_forward
    from mmgfp.core import FisherPruner, build_groups
    torch.manual_seed(seed)
    model = build_model(C.load_config(name))
    model.train()
    batches = [demo_batch(model, batch_size, input_size, seed=seed + i) for i in range(2)]
    t0 = time.perf_counter()
    groups = build_groups(model, loss_forward(batches[0]))
    t_groups = time.perf_counter() - t0
    pruner = FisherPruner(model, groups, mask_on=mask_on)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9,
                                         weight_decay=1e-4))
    return model, batches, pruner, optim, t_groups, groups


class Variant:
    """Switches the model between the plain and the hooked training iteration."""

    def __init__(self, model, pruner, optim, batch_size):
        self.model, self.pruner, self.optim = model, pruner, optim
        self.batch_size = batch_size
        self.losses = []

    def enable_hook(self, on: bool) -> None:
        rec = self.pruner.recorder
        if on:
            rec.start()  # attaches the masks and taps their hooks
        else:
            rec.stop()
            self.pruner.masker.detach()

    def plain(self, batch) -> None:
        log = self.model.train_step(batch, self.optim)
        self.losses.append(float(log['loss']))

    def hooked(self, batch) -> None:
        rec = self.pruner.recorder
        rec.begin_iter(len(batch['inputs']))  # FisherPruningHook.before_train_iter
        log = self.model.train_step(batch, self.optim)
        rec.end_iter(1.0)  # FisherPruningHook.after_train_iter (not a pruning iteration)
        self.losses.append(float(log['loss']))


class DistillVariant(Variant):
    """'without': the pruning hook's iteration; 'with': the same plus GFPDistillHook."""

    def __init__(self, var: Variant, losses=None):
        import types

        from mmgfp.hooks import GFPDistillHook
        super().__init__(var.model, var.pruner, var.optim, var.batch_size)
        var.enable_hook(False)  # the teacher is copied from the model without masks
        self.kd = GFPDistillHook() if losses is None else GFPDistillHook(losses=losses)
        self.kd.attach(var.model)
        # pruned channels left out of the feature loss, as with FisherPruningHook in a Runner
        self.kd._prune_hook = types.SimpleNamespace(pruner=var.pruner, finished=False)
        self.losses = var.losses

    def enable_hook(self, on: bool) -> None:
        super().enable_hook(True)
        self.kd.active = on

    def plain(self, batch) -> None:
        self.hooked(batch)


def distill_cost(var: Variant, batches, args, guard) -> dict:
    """``--distill``: milliseconds and memory of the hooked iteration with and without the
    teacher (interleaved as in :func:`measure`)."""
    dv = DistillVariant(var, args.distill_losses)
    cuda = next(var.model.parameters()).is_cuda
    times, rr = measure(dv, batches, args.warmup, args.rounds, args.block, guard,
                        args.clock)
    peak = {}
    if cuda:
        for mode in ('without', 'with'):
            torch.cuda.reset_peak_memory_stats()
            dv.enable_hook(mode == 'with')
            dv.hooked(batches[0])
            peak[f'distill_{mode}_peak_mb'] = torch.cuda.max_memory_allocated() / 2**20
    Variant.enable_hook(dv, False)  # masks and recorder off, as measure() leaves them
    dv.kd.active = False
    dv.kd.detach(var.model)
    without, with_ = C.median(times['without']), C.median(times['with'])
    teacher = sum(t.numel() * t.element_size()
                  for t in dv.kd.teacher.state_dict().values()) / 2**20
    return dict(peak, distill_without_ms=without * 1e3, distill_with_ms=with_ * 1e3,
                distill_ratio=with_ / without, distill_round_ratio_median=C.median(rr),
                distill_losses=list(dv.kd.losses), teacher_mb=teacher)


def _losses(text: str) -> list:
    """``--distill-losses``: GFPDistillHook ``losses`` (``_accuracy_kd.parse_losses``)."""
    from _accuracy_kd import parse_losses
    try:
        return parse_losses(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def measure(var: Variant, batches, warmup: int, rounds: int, block: int, guard: C.Guard,
            clock: str = 'wall'):
    times = {'without': [], 'with': []}
    timer = C.timed if clock == 'wall' else _cpu_timed
    round_ratio = []
    it = 0

    def run(mode, n):
        nonlocal it
        var.enable_hook(mode == 'with')
        fn = var.hooked if mode == 'with' else var.plain
        out = []
        for _ in range(n):
            b = batches[it % len(batches)]
            it += 1
            out.append(timer(lambda: fn(b)))
        return out

    for _ in range(warmup):  # alternate single warm-up iterations
        run('without', 1)
        run('with', 1)
    for r in range(rounds):
        order = ('without', 'with') if r % 2 == 0 else ('with', 'without')
        got = guard.run(lambda: {m: run(m, block) for m in order})
        for m in order:
            times[m].extend(got[m])
        round_ratio.append(C.median(got['with']) / C.median(got['without']))
    var.enable_hook(False)
    return times, round_ratio


def _cpu_timed(fn) -> float:
    """CPU seconds this process spent in one call (user + system, all its threads).

    On a machine shared with other jobs, wall time counts the time slices they take; CPU time
    does not (their cache traffic still slows it). With ``--threads 1`` nothing spins in an
    OpenMP barrier, so CPU time is the work done.
    """
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def prune_step_cost(pruner, var, batches, repeats=3):
    """Milliseconds of one pruning iteration's extra work: step(1) and three remaining()."""
    var.enable_hook(True)
    var.hooked(batches[0])  # make sure statistics exist
    var.enable_hook(False)
    state = pruner.recorder.state_dict()
    masks = pruner.masker.state_dict()
    out = []
    for _ in range(repeats):
        pruner.recorder.load_state_dict(state)
        pruner.masker.load_state_dict(masks)
        t0 = time.perf_counter()
        pruner.step(1)
        for _ in range(3):  # _log_state, _save_crossed, _reached
            pruner.remaining()
        out.append(time.perf_counter() - t0)
    pruner.masker.load_state_dict(masks)
    pruner.recorder.reset()
    return C.median(out) * 1e3


def _op_times(var: Variant, batches, mode: str, iters: int):
    """Self CPU milliseconds per iteration of every torch op, and call counts."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    var.enable_hook(mode == 'with')
    fn = var.hooked if mode == 'with' else var.plain
    fn(batches[0])  # warm
    with tprofile(activities=[ProfilerActivity.CPU]) as tp:
        for i in range(iters):
            fn(batches[i % len(batches)])
    var.enable_hook(False)
    return {e.key: (e.self_cpu_time_total / 1e3 / iters, e.count / iters)
            for e in tp.key_averages()}


def profile(var: Variant, batches, iters: int, top: int) -> str:
    """Where the hooked iteration spends its extra time.

    1. cProfile of hooked iterations, restricted to mmgfp's functions (Python-side cost of the
       mask pre-hooks and of the gradient hooks, including the torch ops they call);
    2. torch.profiler self CPU time per op, per iteration, with and without the hook, sorted by
       the difference (the ops the hook adds or makes slower).
    """
    var.enable_hook(True)
    var.hooked(batches[0])
    prof = cProfile.Profile()
    prof.enable()
    for i in range(iters):
        var.hooked(batches[i % len(batches)])
    prof.disable()
    var.enable_hook(False)
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s).sort_stats('cumulative')
    st.print_stats(r'mmgfp', top)
    text = [f'cProfile of {iters} hooked iterations, mmgfp functions by cumulative time '
            '(cumtime includes the torch ops they call):', s.getvalue()]
    base = _op_times(var, batches, 'without', iters)
    hooked = _op_times(var, batches, 'with', iters)
    rows = []
    for key in set(base) | set(hooked):
        b, bc = base.get(key, (0.0, 0))
        h, hc = hooked.get(key, (0.0, 0))
        rows.append({'op': key[:60], 'without_ms': b, 'with_ms': h, 'delta_ms': h - b,
                     'calls_without': bc, 'calls_with': hc})
    rows.sort(key=lambda r: -r['delta_ms'])
    tot_b = sum(v[0] for v in base.values())
    tot_h = sum(v[0] for v in hooked.values())
    text.append(f'torch.profiler self CPU per iteration ({iters} iterations each): without '
                f'{tot_b:.1f} ms, with {tot_h:.1f} ms; ops by added time:')
    text.append(C.table(rows[:top], ['op', 'without_ms', 'with_ms', 'delta_ms',
                                      'calls_without', 'calls_with'],
                        ['op', 'without (ms/iter)', 'with (ms/iter)', 'added (ms/iter)',
                         'calls/iter without', 'calls/iter with']))
    return '\n'.join(text)


def main(argv=None):
    from mmgfp.core.masks import MASK_ON
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    p.add_argument('--warmup', type=int, default=3, help='warm-up iterations per variant')
    p.add_argument('--rounds', type=int, default=6, help='A/B rounds (each variant once)')
    p.add_argument('--block', type=int, default=3, help='iterations per variant per round')
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                   help="'cpu': CPU time of this process per iteration instead of wall time "
                        '(for a machine shared with other jobs; use with --threads 1)')
    p.add_argument('--det-size', type=int, default=128, help='detector input side')
    p.add_argument('--det-batch', type=int, default=2)
    p.add_argument('--cls-size', type=int, default=96, help='classifier input side')
    p.add_argument('--cls-batch', type=int, default=8)
    p.add_argument('--profile', action='store_true', help='profile the hooked iterations')
    p.add_argument('--profile-iters', type=int, default=3)
    p.add_argument('--max-foreign', type=float, default=0.2,
                   help='discard and redo rounds during which other processes used more '
                        'than this many cores')
    p.add_argument('--max-wait', type=float, default=1200,
                   help='seconds to spend waiting out contention, per model')
    p.add_argument('--wait-idle', type=float, default=0, metavar='SECONDS',
                   help='first wait up to this long for other processes to go quiet')
    p.add_argument('--premask', type=float, default=0.0, metavar='FRACTION',
                   help='mask this fraction of every group\'s channels first (the hooked '
                        'variant then also pays the masks\' multiplications, as later in a '
                        'pruning run)')
    p.add_argument('--mask-on', choices=MASK_ON, default='auto',
                   help="where consumers apply the masks (FisherPruner's mask_on; 'input' is "
                        'how mmgfp worked before the weight masks)')
    p.add_argument('--distill', action='store_true',
                   help='also measure the iteration with GFPDistillHook (teacher + loss)')
    p.add_argument('--distill-losses', metavar='JSON', type=_losses,
                   help='--distill with these GFPDistillHook `losses` (a JSON list, e.g. '
                        '\'[{"module": "bbox_head", "type": "sigmoid_kl", "output": 0}]\': '
                        "the teacher then runs to the head); default: the hook's")
    p.add_argument('--json', help='write the results here')
    args = p.parse_args(argv)
    if args.distill_losses is not None and not args.distill:
        p.error('--distill-losses chooses the losses of --distill: give --distill too')
    torch.set_num_threads(args.threads)
    C.quiet_logs()
    sizes = {'retinanet_r50': ((args.det_size,) * 2, args.det_batch),
             'resnet50': ((args.cls_size,) * 2, args.cls_batch)}
    if not getattr(args, 'worker', False):
        print('[wait] ' + C.wait_idle(args.wait_idle), flush=True)
    monitor = C.CpuMonitor()
    rows, profiles = [], {}
    t_start = time.perf_counter()
    for name in args.models:
        (size, batch) = sizes[name]
        print(f'[overhead] {name}: {size[0]}x{size[1]}, batch {batch} ...', flush=True)
        model, batches, pruner, optim, t_groups, groups = setup(
            name, size, batch, args.lr, args.mask_on)
        if args.premask:
            premask(pruner, args.premask)
        var = Variant(model, pruner, optim, batch)
        guard = C.Guard(args.max_foreign, args.max_wait)
        times, rr = measure(var, batches, args.warmup, args.rounds, args.block, guard,
                           args.clock)
        without, with_ = C.median(times['without']), C.median(times['with'])
        prune_ms = guard.run(lambda: prune_step_cost(pruner, var, batches))
        interval = 10
        row = {
            'model': name, 'premask': args.premask, 'mask_on': args.mask_on, 'clock': args.clock,
            'input': f'{size[0]}x{size[1]}', 'batch': batch,
            'groups': f'{len(groups.prunable)}/{len(groups.groups)}',
            'consumer_hooks': len(pruner.masker._layers),
            'iters_each': len(times['with']),
            'without_ms': without * 1e3, 'with_ms': with_ * 1e3,
            'ratio': with_ / without,
            'round_ratio_median': C.median(rr), 'round_ratio_min': min(rr),
            'round_ratio_max': max(rr),
            'prune_step_ms': prune_ms,
            'ratio_with_prune_steps_interval10': (with_ * 1e3 * interval + prune_ms) /
            (without * 1e3 * interval),
            'build_groups_s': t_groups, 'guard': guard.summary(), 'guard_state': guard.state(),
            'losses_finite': all(l == l and abs(l) != float('inf') for l in var.losses),
            'times_without_ms': [t * 1e3 for t in times['without']],
            'times_with_ms': [t * 1e3 for t in times['with']],
        }
        if args.distill:
            row.update(distill_cost(var, batches, args, guard))
            print(f'[overhead] {name} distillation: {row["distill_without_ms"]:.1f} -> '
                  f'{row["distill_with_ms"]:.1f} ms ({row["distill_ratio"]:.3f}x), teacher '
                  f'{row["teacher_mb"]:.1f} MB', flush=True)
        rows.append(row)
        print(f'[overhead] {name}: without {row["without_ms"]:.1f} ms, with '
              f'{row["with_ms"]:.1f} ms, ratio {row["ratio"]:.3f}', flush=True)
        if args.profile:
            profiles[name] = profile(var, batches, args.profile_iters, 25)
        del model, batches, pruner, optim, var
    total = time.perf_counter() - t_start

    print('\nFisherPruningHook overhead per training iteration (train_step: preprocess + loss '
          'forward + backward + SGD), median over interleaved iterations')
    print(C.env_line())
    for r in rows:
        r['round_ratios'] = f'{r["round_ratio_min"]:.3f}-{r["round_ratio_max"]:.3f}'
    print(C.table(rows, ['model', 'premask', 'mask_on', 'input', 'batch', 'groups', 'iters_each',
                         'without_ms', 'with_ms', 'ratio', 'round_ratio_median', 'round_ratios',
                         'prune_step_ms', 'ratio_with_prune_steps_interval10'],
                  ['model', 'masked', 'mask on', 'input', 'batch', 'prunable/groups', 'iters each',
                   'without (ms/iter)', 'with hook (ms/iter)', 'ratio', 'ratio (median of rounds)',
                   'round range', 'prune step (ms)', 'ratio incl. prune steps @interval 10']))
    print('target: ratio <= 1.05; "prune step" = pruner.step(1) + 3x remaining(), '
          'run once per `interval` iterations')
    if not all(r['losses_finite'] for r in rows):
        print('warning: some losses were not finite (random weights); timings may be skewed')
    for r in rows:
        print(f'{r["model"]}: {r["guard"]}')
    print(f'total time {total:.0f} s; ' + monitor.report())
    for name, text in profiles.items():
        print(f'\n===== profile: {name} =====\n{text}')
    C.write_json(args.json, {'benchmark': 'overhead', 'args': vars(args), 'rows': rows,
                             'profiles': profiles, 'total_s': total,
                             'foreign_cores': monitor.foreign_cores()})
    return rows


if __name__ == '__main__':
    sys.exit(0 if main() is not None else 1)
