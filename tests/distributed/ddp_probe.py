"""A test-only hook for the DDP tests: records what each rank holds, and can lose a rank.

Loaded by the test configs with ``custom_imports=['mmgfp', 'ddp_probe']`` (the test puts this
folder on ``PYTHONPATH``). Checkpoints are written by rank 0 only, so the state of the other
ranks is only visible through files like these.
"""
import os
import os.path as osp
from typing import Optional, Sequence

import torch
from mmengine.dataset import DefaultSampler
from mmengine.dist import barrier, get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import DATA_SAMPLERS, HOOKS

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


@DATA_SAMPLERS.register_module()
class GFPTestRankOrderSampler(DefaultSampler):
    """One process reading the samples of a ``world``-rank DDP run, one rank after the other.

    Per DDP iteration rank r reads the next ``batch`` indices of what ``DefaultSampler`` (same
    seed and epoch) gives rank r; this sampler yields those batches for ranks 0..world-1 in
    turn. With ``batch`` per step and ``accumulative_counts=world`` one process then takes each
    optimiser step on exactly the batches of one DDP iteration, each loss normalised over its
    own batch as on its rank.

    Args:
        dataset: The data set.
        world (int): Ranks of the DDP run to mimic.
        batch (int): Batch size per rank.
        **kwargs: ``shuffle``, ``seed``, ``round_up`` of ``DefaultSampler``.
    """

    def __init__(self, dataset, world: int, batch: int, **kwargs):
        super().__init__(dataset, **kwargs)
        self.world, self.batch = world, batch

    def _of_rank(self, rank: int) -> list:
        own = (self.rank, self.world_size, self.num_samples, self.total_size)
        self.rank, self.world_size = rank, self.world
        self.num_samples = -(-len(self.dataset) // self.world)
        self.total_size = self.num_samples * self.world
        try:
            return list(super().__iter__())
        finally:
            self.rank, self.world_size, self.num_samples, self.total_size = own

    def __iter__(self):
        ranks = [self._of_rank(r) for r in range(self.world)]
        return iter([i for start in range(0, len(ranks[0]), self.batch)
                     for part in ranks for i in part[start:start + self.batch]])

    def __len__(self) -> int:
        return self.world * -(-len(self.dataset) // self.world)
