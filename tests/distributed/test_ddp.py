"""Pruning under MMEngine DDP: 2 CPU processes (gloo) started by ``tools/dist_train.sh``.

The run is mmpretrain's ResNet-18 config on generated digits, made exactly comparable to one
process: no random augmentation, BN in eval mode (``norm_eval``, with running statistics
measured on the data: a sample's result does not depend on the rest of the batch), a fixed
sampler seed. The one-process reference reads, per optimiser step, the batch of rank 0 and then
the batch of rank 1 of that DDP iteration (``GFPTestRankOrderSampler``) with
``accumulative_counts=2``, at twice the iterations and hook interval. It then computes what the
ranks compute, bit for bit: the same batches of 4 through the same single-threaded kernels;
MMEngine halves each loss as DDP halves each gradient (exact in floating point); DDP's
all-reduce adds the two ranks' gradients as the accumulation adds them (a sum of two is
exact-commutative). The hook sums the Fisher terms over ranks and divides the gradients by the
world size, so its statistics equal the reference's up to the order of float64 additions, and
the same channels go. The killed run loses rank 1 between two pruning steps, after a
checkpoint, and the job is restarted with ``--resume``.

Why not one process with batch 8 (what this test compared until issue 20): its gradients sum
the 8 samples in another order than two ranks of 4 do, so the weights differ in the last bit
(~1e-7 relative). Through a ReLU that is not noise: a pre-activation that lies within ~1e-6 of
zero in one run (seen: layer3.0, sample 1, channel 50, -2.6e-7 vs +1.2e-6 at iteration 2)
passes its gradient in one run and not in the other. With 32-pixel inputs layer3 maps are 2x2,
so one position is ~0.1% of the gradient; the weights then move apart, more values cross zero
and the runs ended 1% apart with other channels pruned. Whether such a value occurs depended on
the starting point, which this process computes with torch's default thread count, i.e. the
cores available: the BN statistics measured with 1 thread (``taskset -c 0``) differ from those
with 2 in the last bit, and only the 1-thread start hit a near-zero value within 12 iterations.
mmgfp was not at fault: on one batch both ways give Fisher terms equal to 1e-16.
"""
import json
import os
import os.path as osp
import signal
import socket
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(osp.dirname(HERE))
sys.path[:0] = [osp.join(ROOT, 'tests', 'hooks'), HERE]  # runner_utils; ddp_probe for configs
from runner_utils import CLS_GEN, cls_config  # noqa: E402

MAX_ITERS, INTERVAL, CKPT_INTERVAL = 12, 3, 4
MID = 8  # a checkpoint between the pruning steps at iterations 6 and 9
BATCH, WORLD = 4, 2
TIMEOUT = 300  # seconds per launch: a hang fails the test instead of blocking CI

DDP_CONFIG = '''
_base_ = './cls.py'
custom_imports = dict(imports=['mmgfp', 'ddp_probe'], allow_failed_imports=False)
# BN normalises with the running statistics of the loaded model: no dependence on the batch
model = dict(backbone=dict(norm_eval=True))
load_from = '{start}'
train_cfg = dict(max_iters={max_iters})
train_dataloader = dict(batch_size={batch}, sampler=dict(type='{sampler}', seed=0{sampler_args}))
optim_wrapper = dict(accumulative_counts={accum})
default_hooks = dict(checkpoint=dict(interval={ckpt}))
env_cfg = dict(dist_cfg=dict(backend='gloo', timeout=120))
custom_hooks = [
    dict(type='FisherPruningHook', interval={interval}, delta='acts', target=0.5,
         target_metric='flops', channels_per_step={per_step}, save_thresholds=({save},),
         divisor=1),  # single channels: PER_STEP selections of one channel each
    dict(type='GFPTestRankProbe', dump_iters=[{mid}]{lose}),
]
'''
PER_STEP, SAVE = 24, 0.98
# The one-process reference computes exactly what the ranks compute (see the module
# docstring), so any step size works; a real one, so the weights move visibly.
LR = 1e-3


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    from mmgfp.datasets.digits import prepare_digits_cls
    tmp = tmp_path_factory.mktemp('ddp')
    data_root = str(tmp / 'digits')
    prepare_digits_cls(data_root, **CLS_GEN)
    cls_config(tmp, data_root, max_iters=MAX_ITERS, interval=INTERVAL, per_step=PER_STEP,
               save=SAVE, ckpt_interval=CKPT_INTERVAL, optimizer='SGD', lr=LR)
    paths = {}
    start = str(tmp / 'start.pth')
    for name, lose, k in (('ddp', '', 1), ('ddp_lose', f', lose_rank=1, lose_after={MID}', 1),
                          ('single', '', WORLD)):
        # one process: a step per WORLD batches (accumulated), the ranks' batches in turn
        sampler = ('GFPTestRankOrderSampler', f', world={WORLD}, batch={BATCH}') if k > 1 \
            else ('DefaultSampler', '')
        paths[name] = str(tmp / f'{name}.py')
        with open(paths[name], 'w') as f:
            f.write(DDP_CONFIG.format(
                batch=BATCH, sampler=sampler[0], sampler_args=sampler[1], accum=k,
                max_iters=MAX_ITERS * k, interval=INTERVAL * k, per_step=PER_STEP, save=SAVE,
                mid=MID * k, lose=lose, start=start,
                ckpt=CKPT_INTERVAL if k == 1 else 100000))  # the reference saves none
    _starting_point(paths['ddp'], start)
    paths['start'] = start
    return paths


def _starting_point(config, out):
    """The model to prune, as after training: BN running statistics measured on the data.

    Fresh BN statistics (mean 0, variance 1) do not centre anything, and half the channels
    would be dead on every sample: zero Fisher everywhere, and ties would decide.
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(config)
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    cfg.model.setdefault('data_preprocessor', cfg.get('data_preprocessor'))  # as the Runner
    model = MODELS.build(cfg.model)  # PyTorch's default init: residual branches are live
    nn.init.normal_(model.head.fc.weight, std=0.01)  # as mmpretrain's head init
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
        bn.train()
    with torch.no_grad():
        for batch in Runner.build_dataloader(cfg.train_dataloader):
            model(**model.data_preprocessor(batch, False), mode='tensor')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _launch(args, work_dir, nproc=WORLD):
    """Train with tools/dist_train.sh (nproc > 1) or tools/train.py; (return code, log)."""
    os.makedirs(work_dir, exist_ok=True)
    if nproc > 1:
        cmd = ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), args[0], str(nproc)]
    else:
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), args[0]]
    cmd += ['--work-dir', str(work_dir)] + list(args[1:])
    log_path = osp.join(str(work_dir), 'launch.log')
    earlier = open(log_path, 'rb').read() if osp.exists(log_path) else b''  # other launches
    for _ in range(2):
        # the port is free when drawn but only bound again once the ranks have started (seconds
        # of imports later): another process may take it meanwhile, so such a launch runs again
        env = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable,
                   PORT=str(_free_port()),
                   PYTHONPATH=os.pathsep.join([HERE, ROOT, os.environ.get('PYTHONPATH', '')]))
        start = osp.getsize(log_path) if osp.exists(log_path) else 0
        with open(log_path, 'ab') as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
        attempt_log = open(log_path, 'rb').read()[start:]
        # the log of earlier launches into this work dir and of this attempt, not of a
        # failed one before it
        text = (earlier + attempt_log).decode(errors='replace')
        if rc == 0 or nproc == 1 or b'address already in use' not in attempt_log.lower():
            break
    assert rc is not None, f'{cmd} hung for {TIMEOUT}s; log tail:\n{text[-3000:]}'
    return rc, text


def _ok(args, work_dir, nproc=WORLD):
    rc, text = _launch(args, work_dir, nproc)
    assert rc == 0, f'training failed (exit {rc}); log tail:\n{text[-4000:]}'
    return str(work_dir)


def _load(work_dir, name):
    return torch.load(osp.join(work_dir, name), weights_only=True)


@pytest.fixture(scope='module')
def ddp_run(config, tmp_path_factory):
    return _ok([config['ddp']], tmp_path_factory.mktemp('ddp_run'))


@pytest.fixture(scope='module')
def single_run(config, tmp_path_factory):
    # one process, reading per optimiser step the batches of both ranks one after the other
    return _train_here(config['single'], tmp_path_factory.mktemp('single_run'))


def _train_here(config, work_dir):
    """One process, in this one: saves a process start (most of a short run's time)."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(config)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = cfg.visualizer.name = f'gfp_single_{osp.basename(work_dir)}'
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched ranks (OMP_NUM_THREADS=1): the same kernels
    try:
        Runner.from_cfg(cfg).train()
    finally:
        torch.set_num_threads(threads)
    return str(work_dir)


def _assert_same_masks(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f'{what}: masks of group {k} differ'


def _assert_same_updates(start, a, b, what, rtol=1e-3):
    """The weights moved away from ``start`` by the same updates, up to float rounding."""
    diff = moved = 0.0
    for k, w in start.items():
        if w.is_floating_point():
            diff += float((a[k] - b[k]).double().pow(2).sum())
            moved += float((b[k] - w).double().pow(2).sum())
    assert moved > 0, f'{what}: the weights did not change'
    assert (diff / moved)**0.5 < rtol, f'{what}: updates differ by {(diff / moved)**0.5:.2e}'


def _pruned(masks):
    return sum(int((~m).sum()) for m in masks.values())


def _assert_statistics_match(a, b, what):
    """The same Fisher statistics up to float rounding; the actual ratio is reported."""
    assert a.keys() == b.keys()
    total_a = sum(float(v.sum()) for v in a.values())
    total_b = sum(float(v.sum()) for v in b.values())
    assert total_b > 0
    assert total_a / total_b == pytest.approx(1.0, rel=1e-4), f'{what}: ratio {total_a / total_b}'
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6 * float(b[k].max()),
                                   msg=lambda m, k=k: f'{what}, group {k}: {m}')


# -- the recorder's reduction, with threads standing in for ranks (no processes) --------------
class _Net(nn.Module):
    """conv -> relu -> conv -> relu -> pool -> linear"""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean((2, 3)))


def _recorder(model, x):
    from mmgfp.core import FisherPruner, build_groups
    pruner = FisherPruner(model, build_groups(model, lambda m: m(x)))
    pruner.recorder.start()
    return pruner


def _record(rec, model, x, y, grad_scale, reduce=None):
    rec.begin_iter(len(x))
    F.cross_entropy(model(x), y).backward()  # averaged over this process's samples
    rec.end_iter(grad_scale, reduce)


def _summing_group(world):
    """reduce callables that sum a tensor over ``world`` threads, like all_reduce."""
    barrier, flats = threading.Barrier(world, timeout=30), [None] * world

    def make(rank):
        def reduce(flat):
            flats[rank] = flat.clone()
            barrier.wait()
            flat.copy_(sum(flats))
            barrier.wait()
        return reduce

    return [make(r) for r in range(world)]


@pytest.mark.parametrize('grad_scale, ratio', [(WORLD, 1.0), (1.0, WORLD**2)])
def test_recorder_sums_ranks(grad_scale, ratio):
    """Ranks summing their terms hold the statistics of one process on the whole batch.

    With gradients divided by the world size they are equal; without, each rank's loss is
    averaged over a batch WORLD times smaller, and the statistics are WORLD**2 times larger.
    """
    torch.manual_seed(0)
    x, y = torch.randn(BATCH * WORLD, 3, 8, 8), torch.randint(0, 5, (BATCH * WORLD, ))
    single_model = _Net()
    single = _recorder(single_model, x).recorder
    _record(single, single_model, x, y, 1.0)
    models = [_Net() for _ in range(WORLD)]
    for m in models:
        m.load_state_dict(single_model.state_dict())
    ranks = [_recorder(m, x).recorder for m in models]
    reduces = _summing_group(WORLD)
    errors = []

    def run(r):
        try:
            part = slice(r, None, WORLD)  # DefaultSampler: rank r gets perm[r::world]
            _record(ranks[r], models[r], x[part], y[part], grad_scale, reduces[r])
        except Exception as e:  # surfaced below: a thread's assertion would be lost
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r, )) for r in range(WORLD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads), errors
    assert single.fisher.keys() == ranks[0].fisher.keys() and len(single.fisher) == 2
    for k, ref in single.fisher.items():
        assert float(ref.sum()) > 0
        assert torch.equal(ranks[0].fisher[k], ranks[1].fisher[k])
        torch.testing.assert_close(ranks[0].fisher[k], ref * ratio, rtol=1e-5, atol=0)
        assert ranks[0].hits[k] == ranks[1].hits[k] == WORLD * single.hits[k] > 0


def test_ranks_with_other_groups_are_refused(monkeypatch):
    import mmgfp.hooks.fisher_pruning_hook as hook_module
    x = torch.randn(2, 3, 8, 8)
    hook = hook_module.FisherPruningHook()
    hook.pruner = _recorder(_Net(), x)
    layout = [(k, v.numel()) for k, v in sorted(hook.pruner.recorder.fisher.items())]
    monkeypatch.setattr(hook_module, 'all_gather_object', lambda obj: [obj, layout[:1]])
    with pytest.raises(RuntimeError, match='rank 1 traced other channel groups than rank 0'):
        hook._check_ranks_agree()
    monkeypatch.setattr(hook_module, 'all_gather_object', lambda obj: [obj, list(layout)])
    hook._check_ranks_agree()  # the same groups everywhere: accepted


def test_cpu_launch_names_the_backend_to_use():
    import tools.train as train_tool
    from mmengine.config import Config
    if torch.cuda.is_available():
        pytest.skip('checks the launch without CUDA')
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='ucc'))))
    with pytest.raises(ValueError, match="backend must be gloo .*but got 'ucc'.*backend=gloo"):
        train_tool.setup_cpu_distributed(cfg)


# -- real DDP runs ------------------------------------------------------------------------------
@pytest.mark.slow
def test_ranks_agree_and_match_single_process(ddp_run, single_run):
    r0, r1 = (_load(ddp_run, f'rank{r}_iter{MAX_ITERS}.pth') for r in range(WORLD))
    one = _load(single_run, f'rank0_iter{MAX_ITERS * WORLD}.pth')
    assert r0['wrapped'] and r1['wrapped'] and not one['wrapped']
    # the one process read, per step, what rank 0 and then rank 1 read in that DDP iteration
    assert one['samples'] == [s for pair in zip(r0['samples'], r1['samples']) for s in pair]
    assert r0['samples'] != r1['samples']
    # every rank removed the same channels and holds the same weights
    _assert_same_masks(r0['masks'], r1['masks'], 'rank 0 vs rank 1')
    for k in r0['state_dict']:
        assert torch.equal(r0['state_dict'][k], r1['state_dict'][k]), k
    assert r0['steps'] == r1['steps'] == MAX_ITERS // INTERVAL
    # ... and the single process on the same samples removed exactly those
    assert one['steps'] == r0['steps']
    assert _pruned(one['masks']) >= PER_STEP * one['steps']  # >= 1 unit per selection
    _assert_same_masks(r0['masks'], one['masks'], 'DDP vs single process')
    for k, w in one['state_dict'].items():  # the same computation, to the last bit
        gap = float((r0['state_dict'][k] - w).abs().max())
        assert torch.equal(r0['state_dict'][k], w), f'DDP vs single process: {k} differs by {gap}'
    # statistics between two pruning steps: identical on the ranks, equal to one process's
    m0, m1 = (_load(ddp_run, f'rank{r}_iter{MID}.pth') for r in range(WORLD))
    m_one = _load(single_run, f'rank0_iter{MID * WORLD}.pth')
    for k in m0['fisher']:
        assert torch.equal(m0['fisher'][k], m1['fisher'][k]), k
    assert m0['hits'] == m1['hits'] == m_one['hits']  # per-rank calls summed = sub-batches'
    _assert_statistics_match(m0['fisher'], m_one['fisher'], 'DDP vs single process')
    # the spec files written by rank 0 agree as well
    spec_ddp = json.load(open(osp.join(ddp_run, 'channels_final.json')))
    spec_one = json.load(open(osp.join(single_run, 'channels_final.json')))
    assert spec_ddp == spec_one


@pytest.mark.slow
def test_checkpoint_holds_statistics_of_all_ranks(ddp_run):
    ckpt = _load(ddp_run, f'iter_{MID}.pth')
    state = ckpt['mmgfp']
    assert state['finished'] is False, 'the checkpoint must fall mid-pruning'
    probe = _load(ddp_run, f'rank1_iter{MID}.pth')  # rank 0 wrote the checkpoint
    _assert_same_masks(state['pruner']['masks'], probe['masks'], 'checkpoint vs rank 1')
    fisher = state['pruner']['recorder']['fisher']
    assert sum(float(v.sum()) for v in fisher.values()) > 0
    for k in fisher:
        assert torch.equal(fisher[k], probe['fisher'][k]), f'group {k}: saved statistics ' \
            'are not the sum over ranks'
    # the threshold checkpoint and its spec were written (by rank 0, without a hang)
    assert osp.isfile(osp.join(ddp_run, f'pruned_flops_{SAVE:.2f}.pth'))
    assert osp.isfile(osp.join(ddp_run, f'pruned_flops_{SAVE:.2f}.json'))


@pytest.mark.slow
def test_resume_after_losing_a_rank(config, ddp_run, tmp_path):
    work = tmp_path / 'lost'
    rc, text = _launch([config['ddp_lose']], work)
    assert rc != 0, 'losing a rank must fail the job'
    assert osp.isfile(work / f'iter_{MID}.pth')
    assert not osp.isfile(work / f'iter_{MID + CKPT_INTERVAL}.pth')
    # restart the whole job from its last checkpoint (no rank is lost this time)
    _ok([config['ddp'], '--resume'], work)
    log = open(work / 'launch.log', errors='replace').read()
    assert 'FisherPruningHook: masks restored from the checkpoint (resume)' in log
    full = _load(ddp_run, f'rank0_iter{MAX_ITERS}.pth')
    start = torch.load(config['start'], weights_only=True)['state_dict']
    for r in range(WORLD):
        resumed = _load(str(work), f'rank{r}_iter{MAX_ITERS}.pth')
        assert resumed['steps'] == full['steps']
        _assert_same_masks(resumed['masks'], full['masks'], f'resumed rank {r} vs uninterrupted')
        _assert_same_updates(start, resumed['state_dict'], full['state_dict'],
                             f'resumed rank {r} vs uninterrupted')
