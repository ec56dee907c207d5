"""GFPDistillHook(during=...): the teacher teaches while pruning, or only after it, with real
Runners; the phase follows the pruning hook's state, also after a resume."""
import os.path as osp

import pytest
import torch

import mmgfp  # noqa: F401
from mmgfp.hooks import GFPDistillHook
from mmgfp.hooks.distill_hook import TEACHER_KEY
from runner_utils import cls_config, det_config, pruning_hook, train_runner

NO_VAL = dict(val_dataloader=None, val_cfg=None, val_evaluator=None)
PRUNE = dict(type='FisherPruningHook', interval=1, delta='acts', target=0.9,
             target_metric='flops', channels_per_step=16, save_thresholds=())


def _train(config, work_dir, hooks, **overrides):
    return train_runner(config, work_dir, **dict(NO_VAL, custom_hooks=hooks, **overrides))


def _distilled(runner, key):
    """How many iterations logged ``key`` (resumed runs: with the restored history)."""
    scalars = runner.message_hub.log_scalars
    return len(scalars[f'train/{key}'].data[0]) if f'train/{key}' in scalars else 0


def test_head_scores_distilled_while_pruning_only(tmp_path, det_data):
    config = det_config(tmp_path, det_data, max_iters=4, ckpt_interval=100)
    head = dict(module='bbox_head', type='sigmoid_kl', output=0, weight=1.0, tau=1.0)
    runner = _train(config, tmp_path / 'w', [dict(PRUNE, channels_per_step=64), dict(
        type='GFPDistillHook', losses=[head], during='pruning')])
    prune = pruning_hook(runner)
    assert prune.finished and 0 < prune.steps < 4, 'pruning must end within the run'
    key = 'loss_distill_sigmoid_kl_bbox_head'
    assert _distilled(runner, key) == prune.steps  # the iterations that pruned, no more
    values = runner.message_hub.log_scalars[f'train/{key}'].data[0]
    assert all(v > 0 for v in values)
    assert _distilled(runner, 'loss') == 4


def test_finetuning_phase_follows_the_restored_pruning_state(tmp_path, cls_data):
    """Pruning ends on iteration 1; a run resumed at iteration 2 must distil from iteration 3
    on (the pruning hook restores ``finished`` on its first iteration, before this hook asks),
    with the teacher the checkpoint stores."""
    config = cls_config(tmp_path, cls_data, max_iters=4, ckpt_interval=2)
    hooks = [PRUNE, dict(type='GFPDistillHook', during='finetuning', fisher='task')]
    part = _train(config, tmp_path / 'w', hooks, **{'train_cfg.max_iters': 2})
    assert pruning_hook(part).steps == 1 and pruning_hook(part).finished
    with open(osp.join(part.log_dir, f'{part.timestamp}.log')) as f:
        assert "fisher='task' changes nothing here" in f.read()
    assert _distilled(part, 'loss_distill_kl_head') == 1  # iteration 2 only
    resumed = _train(config, tmp_path / 'w', hooks, resume=True)
    assert resumed.iter == 4 and pruning_hook(resumed).finished
    assert _distilled(resumed, 'loss_distill_kl_head') == 3  # 2, 3 and 4
    saved = torch.load(tmp_path / 'w' / 'iter_2.pth', weights_only=True)[TEACHER_KEY]
    teacher = next(h for h in resumed.hooks if isinstance(h, GFPDistillHook)).teacher
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in saved.items())


def test_during_is_checked():
    with pytest.raises(ValueError, match='`during` must be one of'):
        GFPDistillHook(during='finetune')


def test_task_weight_applies_while_the_teacher_teaches(tmp_path, cls_data):
    """during='finetuning', task_weight=0: the pruning iterations train on the labels; after
    them the optimised loss is the distillation term alone, the task loss logged beside it."""
    config = cls_config(tmp_path, cls_data, max_iters=4, ckpt_interval=100)
    runner = _train(config, tmp_path / 'w', [PRUNE, dict(
        type='GFPDistillHook', during='finetuning', task_weight=0.0)])
    steps = pruning_hook(runner).steps
    assert 0 < steps < 4
    scalars = runner.message_hub.log_scalars
    loss = scalars['train/loss'].data[0]
    kd = scalars['train/loss_distill_kl_head'].data[0]
    task = scalars['train/task'].data[0]
    assert len(kd) == len(task) == 4 - steps
    # a classifier's own term is named 'loss' (it shadows MMEngine's total in the log): it is
    # weighted 0 while the teacher teaches, and logged unweighted as 'task'
    assert all(x == 0 for x in loss[steps:]) and all(x > 0 for x in loss[:steps])
    assert all(t > 0 for t in task) and all(x > 0 for x in kd)

