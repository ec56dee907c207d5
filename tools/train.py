"""Train (and prune) with MMEngine's Runner: ``python tools/train.py CONFIG [options]``.

The usual OpenMMLab training entry point. A config with
``custom_hooks = [dict(type='FisherPruningHook', ...)]`` prunes while it trains; any other
mmdet/mmpretrain config trains as usual (e.g. fine-tuning a compact config written by
``tools/deploy_pruned.py``). ``mmgfp`` is imported first, so its hook, datasets and the
checkpoint-loading fix for torch >= 2.6 are in place even when the config forgets
``custom_imports``.

Distributed: ``bash tools/dist_train.sh CONFIG NUM_PROCS`` (torchrun, ``--launcher pytorch``);
on machines without CUDA the process group uses gloo (see :func:`setup_cpu_distributed`).
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmgfp  # noqa: E402,F401  (registration, safe checkpoint loading)
from mmengine.config import Config, DictAction  # noqa: E402

from mmgfp.apis.checking.check import load_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train (and prune) a model with mmgfp')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic mixed precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='enable automatically scaling LR')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or from the latest one in the '
                        'work dir when no path is given')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def setup_cpu_distributed(cfg: Config) -> None:
    """Let ``--launcher pytorch`` run on machines without a GPU (gloo backend).

    MMEngine 0.10 assumes one GPU per process: it calls ``torch.cuda.set_device`` when it starts
    the process group and wraps the model with ``device_ids=[LOCAL_RANK]``, and both fail
    without CUDA. Here the group is started the same way minus the device (the runner finds it
    started and keeps it), and the model is wrapped without device ids.
    """
    import datetime

    import torch
    import torch.distributed as dist
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    backend = dist_cfg.pop('backend', 'gloo')
    if backend == 'nccl':  # every OpenMMLab config's default; NCCL needs GPUs
        print('No CUDA device: distributed training uses the gloo backend instead of nccl.')
        backend = 'gloo'
    if backend not in ('gloo', 'mpi'):
        raise ValueError(f'No CUDA device, so env_cfg.dist_cfg.backend must be gloo (or mpi), '
                         f'but got {backend!r}; e.g. --cfg-options env_cfg.dist_cfg.backend=gloo')
    if dist_cfg.pop('init_backend', 'torch') != 'torch':
        raise ValueError('distributed training on CPU supports env_cfg.dist_cfg.init_backend '
                         "'torch' only")
    if dist_cfg.get('timeout') is not None:
        dist_cfg['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, **dist_cfg)
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if wrapper.get('type', 'MMDistributedDataParallel') == 'MMDistributedDataParallel':
        wrapper.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper


def build_cfg(args) -> Config:
    cfg = load_config(args.config)  # also takes mmdet::/mmpretrain:: names
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if optim_wrapper == 'AmpOptimWrapper':
            print('AMP training is already enabled in your config.')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and 'enable' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise RuntimeError('can not find "auto_scale_lr" or "auto_scale_lr.enable" in '
                               'your config file')
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_cfg(args)
    setup_cpu_distributed(cfg)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' not in cfg:
        runner = Runner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)
    runner.train()
    return runner


if __name__ == '__main__':
    main()
