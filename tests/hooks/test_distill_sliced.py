"""GFPDistillHook with a physically smaller (sliced) student: the teacher is built from the
unpruned model's config and loaded strictly from its checkpoint."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmgfp  # noqa: F401
from mmgfp.hooks import GFPDistillHook
from runner_utils import cls_config

KL = dict(module='head', type='kl', tau=4.0)


@pytest.fixture(scope='module')
def sliced(tmp_path_factory):
    """(config path, unpruned classifier, the same classifier with half of every group's
    channels sliced away, a preprocessed batch)."""
    from mmgfp.apis.deploying.deploy import build_model
    from mmgfp.apis.inputs import demo_batch, tensor_forward
    from mmgfp.core import ChannelMasker, apply_spec, build_groups, make_spec
    tmp = tmp_path_factory.mktemp('sliced')
    path = cls_config(tmp, str(tmp / 'unused'))
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    unpruned = build_model(Config.fromfile(path), init=True)
    batch = demo_batch(unpruned, 2, (32, 32))
    student = copy.deepcopy(unpruned)
    masker = ChannelMasker(student, build_groups(student, tensor_forward(batch)))
    for key, keep in masker.keep.items():
        if keep.numel() > 1:
            masker.set_keep(key, torch.arange(keep.numel()) % 2 == 0)
    apply_spec(student, make_spec(masker))
    assert student.head.fc.in_features < unpruned.head.fc.in_features
    return path, unpruned.eval(), student, student.data_preprocessor(batch, True)


def _save(tmp_path, model, cfg=None):
    ckpt = {'state_dict': model.state_dict()}
    if cfg is not None:
        ckpt['meta'] = {'cfg': Config.fromfile(cfg).pretty_text}
    torch.save(ckpt, tmp_path / 'unpruned.pth')
    return str(tmp_path / 'unpruned.pth')


def _distil(hook, student, data):
    """One training loss of the student with the hook on; the student is left as it was."""
    student = copy.deepcopy(student).train()
    hook.attach(student)
    hook.active = True
    losses = student.loss(data['inputs'], data['data_samples'])
    hook.detach(student)
    return student, losses


def test_teacher_from_the_checkpoints_config_equals_the_unpruned_model(tmp_path, sliced):
    path, unpruned, student, data = sliced
    hook = GFPDistillHook(losses=[KL], teacher=_save(tmp_path, unpruned, cfg=path))
    trained, losses = _distil(hook, student, data)
    with torch.no_grad():
        want = unpruned(data['inputs'], mode='tensor')
        got = hook.teacher(data['inputs'], mode='tensor')
    assert torch.equal(want, got)
    assert hook.teacher is not unpruned and not hook.teacher.training
    assert hook.teacher.head.fc.in_features == unpruned.head.fc.in_features
    term = losses['loss_distill_kl_head']
    assert float(term) > 0
    term.backward()
    assert trained.head.fc.weight.grad is not None and trained.head.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in hook.teacher.parameters())


def test_sliced_student_without_a_config_asks_for_teacher_cfg(tmp_path, sliced):
    path, unpruned, student, data = sliced
    ckpt = _save(tmp_path, unpruned)  # no meta['cfg']
    with pytest.raises(ValueError, match='teacher_cfg'):
        _distil(GFPDistillHook(losses=[KL], teacher=ckpt), student, data)
    for cfg in (path, Config.fromfile(path)):
        hook = GFPDistillHook(losses=[KL], teacher=ckpt, teacher_cfg=cfg)
        _, losses = _distil(hook, student, data)
        assert float(losses['loss_distill_kl_head']) > 0
    # a ready teacher passed to attach() (no checkpoint read at all)
    hook = GFPDistillHook(losses=[KL])
    student2 = copy.deepcopy(student).train()
    hook.attach(student2, teacher_model=copy.deepcopy(unpruned))
    assert hook.teacher.head.fc.in_features == unpruned.head.fc.in_features
    with pytest.raises(ValueError, match='neither `model`'):
        GFPDistillHook(teacher_cfg=dict(backbone=dict()))


def test_feature_distillation_of_a_sliced_map_is_refused(tmp_path, sliced):
    path, unpruned, student, data = sliced
    hook = GFPDistillHook(losses=[dict(module='backbone', type='cwd')],
                          teacher=_save(tmp_path, unpruned, cfg=path))
    with pytest.raises(ValueError, match='sliced student'):
        _distil(hook, student, data)


def _train_sliced(config, work_dir, student, hooks, **overrides):
    """Train ``student`` (a sliced model) with a Runner built from ``config``, whose
    ``cfg.model`` is the unpruned model, as a TP fine-tuning run would."""
    from mmengine.runner import Runner
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(dict(work_dir=str(work_dir), custom_hooks=hooks, val_dataloader=None,
                             val_cfg=None, val_evaluator=None, **overrides))
    runner = Runner.from_cfg(cfg)
    runner.model = copy.deepcopy(student).train()  # the optimizer is built from it in train()
    runner.train()
    return runner


def test_runner_builds_the_teacher_from_its_config_also_on_resume(tmp_path, sliced, cls_data):
    path, unpruned, student, _ = sliced
    config = cls_config(tmp_path, cls_data, max_iters=2, ckpt_interval=1)
    hooks = [dict(type='GFPDistillHook', losses=[KL], teacher=_save(tmp_path, unpruned))]
    first = _train_sliced(config, tmp_path / 'w', student, hooks,
                          **{'train_cfg.max_iters': 1})
    assert 'train/loss_distill_kl_head' in first.message_hub.log_scalars
    want = unpruned.state_dict()
    got = next(h for h in first.hooks if isinstance(h, GFPDistillHook)).teacher.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    # resumed: the stored teacher does not fit the sliced student either
    resumed = _train_sliced(config, tmp_path / 'w', student, hooks, resume=True)
    assert resumed.iter == 2
    got = next(h for h in resumed.hooks if isinstance(h, GFPDistillHook)).teacher.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert len(resumed.message_hub.log_scalars['train/loss_distill_kl_head'].data[0]) == 2
