"""A test-only hook for the DDP tests: records what each rank holds, and can lose a rank.

Loaded by the test configs with ``custom_imports=['mmgfp', 'ddp_probe']`` (the test puts this
folder on ``PYTHONPATH``). Checkpoints are written by rank 0 only, so the state of the other
ranks is only visible through files like these.
"""
import os
import os.path as osp
from typing import Optional, Sequence

import torch
from mmengine.dist import barrier, get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from mmgfp.hooks import FisherPruningHook


@HOOKS.register_module()
class GFPTestRankProbe(Hook):
    """Write ``rank<r>_iter<i>.pth`` (masks, Fisher statistics, weights) for every rank.

    Args:
        dump_iters (Sequence[int]): Iterations (1-based, after the pruning hook ran) to dump
            at; the end of training is always dumped. Defaults to ().
        lose_rank (int, optional): This rank exits hard (as a crashed or killed worker would)
            when iteration ``lose_after + 1`` starts. Defaults to None.
        lose_after (int): See ``lose_rank``. Defaults to 0.
    """
    priority = 'LOW'  # after FisherPruningHook (NORMAL), before CheckpointHook (VERY_LOW)

    def __init__(self, dump_iters: Sequence[int] = (), lose_rank: Optional[int] = None,
                 lose_after: int = 0):
        self.dump_iters = set(dump_iters)
        self.lose_rank = lose_rank
        self.lose_after = lose_after
        self.samples = []  # image files of every iteration's batch, in order

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.samples.append([osp.basename(s.img_path) for s in data_batch['data_samples']])
        if self.lose_rank is not None and runner.iter == self.lose_after:
            barrier()  # rank 0 has finished writing the checkpoint of the previous iteration
            if get_rank() == self.lose_rank:
                os._exit(3)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 in self.dump_iters:
            self._dump(runner, runner.iter + 1)

    def after_train(self, runner) -> None:
        self._dump(runner, runner.iter)

    def _dump(self, runner, it: int) -> None:
        hook = next(h for h in runner.hooks if isinstance(h, FisherPruningHook))
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        rec = hook.pruner.recorder
        torch.save({'masks': hook.pruner.masker.state_dict(),
                    'fisher': {k: v.clone() for k, v in rec.fisher.items()},
                    'hits': dict(rec.hits), 'steps': hook.steps, 'finished': hook.finished,
                    'wrapped': is_model_wrapper(runner.model), 'samples': list(self.samples),
                    'state_dict': {k: v.detach().clone() for k, v in model.state_dict().items()}},
                   osp.join(runner.work_dir, f'rank{get_rank()}_iter{it}.pth'))
