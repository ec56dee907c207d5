"""End to end: profile a CPU latency table, then prune to a latency target with a real Runner."""
import glob
import os.path as osp
import uuid

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import mmgfp  # noqa: F401
from mmgfp.core import LatencyTable
from runner_utils import cls_config

pytestmark = pytest.mark.slow


def train_to_latency(config, work_dir, latency_table):
    """Train ``config`` with a hook pruning to a predicted latency of 0.9 (steps of 256 units
    every 2 iterations, a checkpoint at 0.95); the runner and its hook."""
    from mmgfp.hooks import FisherPruningHook
    cfg = Config.fromfile(config)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f'latency_{uuid.uuid4().hex[:8]}'
    cfg.custom_hooks = [dict(type='FisherPruningHook', interval=2, delta='latency',
                             target=0.9, target_metric='latency', channels_per_step=256,
                             latency_table=latency_table, save_thresholds=(0.95, ))]
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner, next(h for h in runner.hooks if isinstance(h, FisherPruningHook))


def test_prune_to_a_latency_target_with_a_cpu_table(tmp_path, cls_data):
    from mmgfp.apis.latency.profile import profile_config
    config = cls_config(tmp_path, cls_data, max_iters=10)
    table_path = str(tmp_path / 'cpu_table.json')
    # deployed at 64x64 (trained at 32x32): convolutions, not per-op overhead, dominate
    table, _ = profile_config(Config.fromfile(config), config, input_size=(64, 64), threads=1,
                              points=3, rounds=3, warmup=1, align=False, out=table_path,
                              progress=False)
    assert table.key['input_size'] == [64, 64] and table.key['batch'] == 1
    busy = dict(table.to_dict(), profiled={'other_cpus': 1.9, 'cpus': 2, 'threads': 1,
                                           'seconds': 60})
    LatencyTable.from_dict(busy).save(table_path)  # as if profiled on a loaded machine

    work_dir = tmp_path / 'work'
    runner, hook = train_to_latency(config, work_dir, table_path)
    assert hook.finished, 'a predicted latency of 0.9 must be reached within the run'
    rem = hook.pruner.remaining()
    assert rem['latency'] <= 0.9 and rem['flops'] < 1
    # the table measured no alignment: divisor='auto' gives every group steps of 1 channel
    assert set(hook.pruner.divisors.values()) == {1}
    assert hook.pruner.predicted_latency() == pytest.approx(table.total_us * rem['latency'])
    scalars = runner.message_hub.log_scalars
    assert scalars['train/gfp_latency'].current() == pytest.approx(rem['latency'])
    ckpt = torch.load(osp.join(str(work_dir), 'pruned_latency_0.95.pth'), weights_only=True)
    assert ckpt['mmgfp']['latency_key'] == table.key  # which device the pruning was for
    logs = ''.join(open(p).read() for p in glob.glob(osp.join(str(work_dir), '*', '*.log')))
    assert f'latency table {table_path} measured on cpu: ' in logs
    assert 'table was timed while other processes kept 1.90 of the 2 CPU(s)' in logs
    assert 'divisor=auto, from the latency table' in logs


def test_divisor_auto_without_a_table_is_8():
    from mmgfp.hooks import FisherPruningHook
    from mmgfp.hooks.fisher_pruning_hook import DEFAULT_DIVISOR
    hook = FisherPruningHook()
    assert hook.divisor == 'auto' and hook.table is None and DEFAULT_DIVISOR == 8


def test_the_table_is_profiled_when_training_starts(tmp_path, cls_data):
    """latency_table=dict(...): profiled on the training device at the deploy input size, written
    to the work dir, used for pruning; a second run with the same settings reuses the file."""
    import json
    config = cls_config(tmp_path, cls_data, max_iters=6)
    work = tmp_path / 'work'
    settings = dict(input_size=(64, 64), threads=1, points=3, rounds=3, warmup=1, align=False)
    runner, hook = train_to_latency(config, work, settings)
    path = str(work / 'latency_table.json')
    assert hook.latency_table == path and osp.isfile(path)
    key = json.loads(open(path).read())['key']
    assert key['input_size'] == [64, 64] and key['batch'] == 1 and key['threads'] == 1
    assert key['device'].startswith('cpu') and hook.table.key == key
    assert hook.finished and hook.pruner.remaining()['latency'] <= 0.9
    logs = ''.join(open(p).read() for p in glob.glob(osp.join(str(work), '*', '*.log')))
    assert 'profiling the latency table on cpu (batch 1, input 64x64, fp32)' in logs
    # the checkpoint records the table's key in plain types: it loads with weights_only
    ckpt = torch.load(str(work / 'pruned_latency_0.95.pth'), weights_only=True)
    assert ckpt['mmgfp']['latency_key'] == key and type(key['torch']) is str
    stamp = osp.getmtime(path)
    _, again = train_to_latency(config, work, settings)
    assert osp.getmtime(path) == stamp, 'the second run must reuse the profiled table'
    assert again.table.to_dict() == hook.table.to_dict()


@pytest.mark.parametrize('settings, message', [
    (dict(input_sze=(64, 64)), r"unknown keys \['input_sze'\]"),
    (dict(input_size=64), r'input_size must be \(H, W\)'),
    (dict(batch=0), 'batch must be a positive integer'),
    (dict(dtype='bf16'), "dtype must be 'fp32' or 'fp16'"),
    (dict(device='gpu'), "device must be 'cpu' or 'cuda\\[:N\\]', but got 'gpu'"),
    (dict(threads=0), 'threads must be a positive integer'),
    (dict(channels_last='yes'), "channels_last must be True or False, but got 'yes'"),
])
def test_bad_profile_settings_fail_when_the_hook_is_built(settings, message):
    from mmgfp.hooks import FisherPruningHook
    with pytest.raises(ValueError, match=message):
        FisherPruningHook(delta='latency', target_metric='latency', latency_table=settings)
