"""GFPDistillHook with real MMEngine Runners on digits: losses, teacher, checkpoints, Fisher."""

import pytest
import torch
from mmengine.config import Config

import mmgfp  # noqa: F401
from mmgfp.hooks import FisherPruningHook, GFPDistillHook
from mmgfp.hooks.distill_hook import TEACHER_KEY
from runner_utils import assert_same_run, cls_config, det_config, hook_fisher, train_runner

NO_VAL = dict(val_dataloader=None, val_cfg=None, val_evaluator=None)


def _train(config, work_dir, hooks=None, **overrides):
    """Train without validation, with ``hooks`` as the custom hooks when given."""
    given = {} if hooks is None else {'custom_hooks': hooks}
    return train_runner(config, work_dir, **dict(NO_VAL, **given, **overrides))


def _hook(runner, cls):
    return next(h for h in runner.hooks if isinstance(h, cls))


def _prune(**kw):
    return dict(dict(type='FisherPruningHook', interval=2, delta='acts', target=0.9,
                     target_metric='flops', channels_per_step=8, save_thresholds=()), **kw)


def test_detector_distils_the_neck_from_the_loaded_model(tmp_path, det_data):
    config = det_config(tmp_path, det_data, max_iters=4, ckpt_interval=4)
    hooks = [_prune(), dict(type='GFPDistillHook')]
    runner = _train(config, tmp_path / 'w', hooks)
    dist = _hook(runner, GFPDistillHook)
    prune = _hook(runner, FisherPruningHook)
    scalars = runner.message_hub.log_scalars
    assert 'train/loss_distill_cwd_neck' in scalars  # logged like any loss, and in the sum
    values = scalars['train/loss_distill_cwd_neck'].data[0]
    assert len(values) == 4 and all(v > 0 and v == v for v in values)
    # the teacher is the model as it was before training: the checkpoint's teacher equals the
    # starting weights, which the student has left; it is in no optimizer, no runner.model
    ckpt = torch.load(tmp_path / 'w' / 'iter_4.pth', weights_only=True)
    teacher = ckpt[TEACHER_KEY]
    assert not any(k.startswith('teacher') for k in ckpt['state_dict'])
    assert teacher.keys() == ckpt['state_dict'].keys()
    moved = [k for k in teacher if teacher[k].is_floating_point() and
             not torch.equal(teacher[k], ckpt['state_dict'][k])]
    assert moved, 'the student trained; the teacher must not'
    opt_ids = {id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g['params']}
    assert not any(id(p) in opt_ids for p in dist.teacher.parameters())
    assert not dist.teacher.training and not any(p.requires_grad
                                                 for p in dist.teacher.parameters())
    assert 'loss' not in runner.model.__dict__, 'the loss method is restored after training'
    # every FPN level was traced to the group of the FPN outputs; its pruned channels are out
    keys = {dist._groups[('neck', i)] for i in range(5)}
    assert len(keys) == 1 and keys.pop() in prune.pruner.masker.keep


def test_foreground_imitation_reads_the_boxes_of_each_batch(tmp_path, det_data, monkeypatch):
    from mmgfp.core import distill
    seen = []
    box_masks = distill.box_masks

    def spy(boxes, input_hw, shapes):
        seen.append((sum(len(b) for b in boxes), tuple(input_hw), [tuple(s) for s in shapes]))
        return box_masks(boxes, input_hw, shapes)

    monkeypatch.setattr('mmgfp.hooks.distill_hook.box_masks', spy)
    config = det_config(tmp_path, det_data, max_iters=4, ckpt_interval=4)
    hooks = [_prune(), dict(type='GFPDistillHook', losses=[dict(module='neck', type='fg_mse')])]
    runner = _train(config, tmp_path / 'w', hooks)
    values = runner.message_hub.log_scalars['train/loss_distill_fg_mse_neck'].data[0]
    # (not zero on iteration 1: the teacher runs in eval mode, the student's norms in train)
    assert len(values) == 4 and all(0 < v < float('inf') for v in values)
    assert len(seen) == 4 and all(n > 0 for n, _, _ in seen), 'every batch has its boxes'
    # the kept channels of every level were looked up (pruned ones stay out, as for cwd)
    dist = _hook(runner, GFPDistillHook)
    assert set(dist._groups) == {('neck', i) for i in range(5)}
    n, (h, w), shapes = seen[0]
    assert len(shapes) == 5 and shapes[0][0] * 8 == h and shapes[0][1] * 8 == w  # P3..P7


def test_foreground_imitation_needs_a_detector(tmp_path, cls_data):
    config = cls_config(tmp_path, cls_data, max_iters=1)
    hooks = [dict(type='GFPDistillHook', losses=[dict(module='neck', type='fg_mse')])]
    with pytest.raises(ValueError, match="fg_mse.*MMDetection detectors, not MMPretrain"):
        _train(config, tmp_path / 'w', hooks)


@pytest.mark.parametrize('fisher', ['all', 'task'])
def test_resume_matches_uninterrupted(tmp_path, det_data, fisher):
    config = det_config(tmp_path, det_data, max_iters=6, interval=2, target=0.8, per_step=8,
                        ckpt_interval=3)
    hooks = [_prune(target=0.8), dict(type='GFPDistillHook', fisher=fisher)]
    full = _train(config, tmp_path / 'full', hooks)
    _train(config, tmp_path / 'part', hooks, **{'train_cfg.max_iters': 3})
    resumed = _train(config, tmp_path / 'part', hooks, resume=True)
    assert resumed.iter == 6
    a, b = _hook(full, GFPDistillHook).teacher, _hook(resumed, GFPDistillHook).teacher
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), f'teacher {n} differs after resume'
    assert_same_run(full, resumed)


def test_distillation_term_enters_the_fisher_information(tmp_path, cls_data):
    """Weight 0: the statistics of a run without the hook, bit for bit (the teacher adds no
    Fisher terms of its own); weight > 0: the distillation gradient changes them."""
    config = cls_config(tmp_path, cls_data, max_iters=2, ckpt_interval=100)
    prune = _prune(interval=100)  # accumulate only
    kl = dict(module='head', type='kl', tau=4.0)
    plain = hook_fisher(_train(config, tmp_path / 'a', [prune]))
    zero = _train(config, tmp_path / 'b', [prune, dict(type='GFPDistillHook',
                                                        losses=[dict(kl, weight=0.0)])])
    assert 'train/loss_distill_kl_head' in zero.message_hub.log_scalars
    weighted = hook_fisher(_train(config, tmp_path / 'c', [prune, dict(
        type='GFPDistillHook', losses=[dict(kl, weight=10.0)])]))
    zero = hook_fisher(zero)
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert any(not torch.allclose(plain[k], weighted[k], rtol=1e-3) for k in plain)
    # fisher='task': the channels are ranked as without the teacher (the first iteration's
    # terms, from the same weights, equal the plain run's), the student trained as with it
    # (no pruning step here, so the masks cannot differ)
    task_hook = dict(type='GFPDistillHook', losses=[dict(kl, weight=10.0)], fisher='task')
    one = cls_config(tmp_path, cls_data, name='one', max_iters=1, ckpt_interval=100)
    plain1 = hook_fisher(_train(one, tmp_path / 'd', [prune]))
    task1 = hook_fisher(_train(one, tmp_path / 'e', [prune, task_hook]))
    all1 = hook_fisher(_train(one, tmp_path / 'e2', [prune, dict(task_hook, fisher='all')]))
    for k in plain1:
        torch.testing.assert_close(task1[k], plain1[k], rtol=1e-5, atol=1e-12)
    assert any(not torch.allclose(all1[k], plain1[k], rtol=1e-3) for k in plain1)
    task_run = _train(config, tmp_path / 'f', [prune, task_hook])
    assert _hook(task_run, FisherPruningHook).pruner.recorder.iters == 2
    weighted_run = _train(config, tmp_path / 'g', [prune, dict(
        type='GFPDistillHook', losses=[dict(kl, weight=10.0)])])
    for (n, p), (_, q) in zip(weighted_run.model.state_dict().items(),
                              task_run.model.state_dict().items()):
        if p.is_floating_point():
            torch.testing.assert_close(q, p, msg=n)


def test_finetune_needs_the_unpruned_teacher(tmp_path, cls_data):
    """Fine-tuning from a pruned checkpoint distils from the teacher the checkpoint stores;
    one without a teacher is refused unless ``teacher=`` names the unpruned weights."""
    config = cls_config(tmp_path, cls_data, max_iters=4, ckpt_interval=4, target=0.9,
                        per_step=16)
    with_kd = [_prune(target=0.9, channels_per_step=16),
               dict(type='GFPDistillHook')]
    first = _train(config, tmp_path / 'kd', with_kd)
    start = _hook(first, GFPDistillHook).teacher.state_dict()
    assert _hook(first, FisherPruningHook).pruner.masker.pruned_anything
    finetune = [dict(type='FisherPruningHook', prune=False), dict(type='GFPDistillHook')]
    ft = _train(config, tmp_path / 'ft', finetune, load_from=str(tmp_path / 'kd' / 'iter_4.pth'),
                **{'train_cfg.max_iters': 1})
    got = _hook(ft, GFPDistillHook).teacher.state_dict()
    assert all(torch.equal(start[k], got[k]) for k in start)
    assert 'train/loss_distill_kl_head' in ft.message_hub.log_scalars
    # a pruned checkpoint without a teacher: refused, then accepted with teacher=
    ckpt = torch.load(tmp_path / 'kd' / 'iter_4.pth', weights_only=False)
    ckpt.pop(TEACHER_KEY)
    torch.save(ckpt, tmp_path / 'no_teacher.pth')
    torch.save({'state_dict': start}, tmp_path / 'unpruned.pth')
    with pytest.raises(RuntimeError, match='already pruned'):
        _train(config, tmp_path / 'ft2', finetune, load_from=str(tmp_path / 'no_teacher.pth'),
               **{'train_cfg.max_iters': 1})
    finetune[1]['teacher'] = str(tmp_path / 'unpruned.pth')
    ft3 = _train(config, tmp_path / 'ft3', finetune, load_from=str(tmp_path / 'no_teacher.pth'),
                 **{'train_cfg.max_iters': 1})
    got = _hook(ft3, GFPDistillHook).teacher.state_dict()
    assert all(torch.equal(start[k], got[k]) for k in start)
    # deploy: the compact checkpoint carries the student only
    import tools.deploy_pruned as deploy_tool
    out = deploy_tool.main([config, str(tmp_path / 'ft3' / 'iter_1.pth'), '--out-dir',
                            str(tmp_path / 'deploy')])
    compact = torch.load(out['checkpoint'], weights_only=True)
    assert TEACHER_KEY not in compact
    n_teacher = sum(v.numel() for v in start.values())
    assert sum(v.numel() for v in compact['state_dict'].values()) < n_teacher


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='module=NAME'):
        GFPDistillHook(losses=[dict(type='kl')])
    with pytest.raises(ValueError, match='type must be one of'):
        GFPDistillHook(losses=[dict(module='head', type='l2')])
    with pytest.raises(ValueError, match='tau > 0'):
        GFPDistillHook(losses=[dict(module='head', tau=0)])
    with pytest.raises(ValueError, match='unknown keys'):
        GFPDistillHook(losses=[dict(module='head', temperature=2)])
    with pytest.raises(ValueError, match="`fisher` must be one of"):
        GFPDistillHook(fisher='distill')
    hook = GFPDistillHook(losses=[dict(module='head')], fisher='task')
    with pytest.raises(ValueError, match='parse_losses'):  # not an MMEngine BaseModel
        hook.attach(_Plain())
    for bad in (-1.0, float('nan'), '0', True):
        with pytest.raises(ValueError, match='`task_weight` must be a finite number'):
            GFPDistillHook(task_weight=bad)


def test_weigh_task_scales_what_is_summed_and_logs_it_unweighted():
    from mmgfp.hooks.distill_hook import weigh_task
    cls, box = torch.tensor(2.0, requires_grad=True), [torch.tensor(1.0), torch.tensor(3.0)]
    out = weigh_task({'loss_cls': cls, 'loss_bbox': box, 'acc': torch.tensor(0.5)}, 0.25)
    assert float(out['loss_cls']) == 0.5 and [float(v) for v in out['loss_bbox']] == [0.25, 0.75]
    assert float(out['task_cls']) == 2.0 and [float(v) for v in out['task_bbox']] == [1.0, 3.0]
    assert not out['task_cls'].requires_grad and float(out['acc']) == 0.5
    with pytest.raises(ValueError, match="already logs 'task_cls'"):
        weigh_task({'loss_cls': cls, 'task_cls': cls}, 0.0)


def test_task_weight_zero_trains_on_the_teacher_alone(tmp_path, cls_data):
    from mmengine.registry import init_default_scope

    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.inputs import demo_batch
    cfg = Config.fromfile(cls_config(tmp_path, cls_data))
    init_default_scope('mmpretrain')
    model = build_model(cfg)
    model.train()
    data = model.data_preprocessor(demo_batch(model, 2, (32, 32)), True)
    plain = model(**data, mode='loss')['loss']
    for weight in (0.0, 0.5):
        hook = GFPDistillHook(task_weight=weight)
        hook.attach(model)
        hook.active = True
        losses = model(**data, mode='loss')
        hook.detach(model)
        assert torch.allclose(losses['task'], plain)
        assert torch.allclose(losses['loss'], weight * plain)
        total, _ = model.parse_losses(losses)  # what the optimizer gets: task_* not summed
        assert torch.allclose(total, weight * plain + losses['loss_distill_kl_head'])


class _Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(2, 2)


def test_compact_config_drops_the_distillation_hook(tmp_path, cls_data):
    """A compact config would copy its teacher from the compact weights: the hook goes."""
    from mmgfp.apis.deploying.deploy import compact_config
    cfg = Config.fromfile(cls_config(tmp_path, cls_data))
    cfg.custom_hooks = [_prune(), dict(type='GFPDistillHook'),
                        dict(type='mmgfp.GFPDistillHook'), dict(type='EMAHook')]
    new = compact_config(cfg, str(tmp_path / 'channels.json'), None)
    assert [h['type'] for h in new.custom_hooks] == ['EMAHook']


def test_terms_under_autocast_are_float32_and_finite(tmp_path, cls_data):
    """AMP's autocast (bfloat16 on CPU here) runs student and teacher in low precision; the
    distillation terms are computed in float32, as the scaler expects of a loss."""
    from mmengine.registry import init_default_scope

    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.inputs import demo_batch
    cfg = Config.fromfile(cls_config(tmp_path, cls_data))
    init_default_scope('mmpretrain')
    model = build_model(cfg)
    model.train()
    hook = GFPDistillHook(losses=[dict(module='head', type='kl', tau=2.0),
                                  dict(module='backbone', type='cwd')])
    hook.attach(model)
    hook.active = True
    data = model.data_preprocessor(demo_batch(model, 2, (32, 32)), True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model(**data, mode='loss')
    for key in ('loss_distill_kl_head', 'loss_distill_cwd_backbone'):
        assert losses[key].dtype == torch.float32 and torch.isfinite(losses[key])
    hook.detach(model)
    assert 'loss' not in model.__dict__
