"""GFPDistillHook(unlabeled_dataloader=...): the teacher also teaches on images without labels."""
import pytest
import torch

import mmgfp  # noqa: F401
from mmgfp.hooks import FisherPruningHook, GFPDistillHook
from mmgfp.hooks.distill_hook import STATE_KEY, TEACHER_KEY
from mmgfp.hooks.distill_unlabeled import (UnlabeledBatches, train_loader_settings,
                                           unlabeled_loader_cfg)
from runner_utils import DET_GEN, assert_same_run, det_config, train_runner

NO_VAL = dict(val_dataloader=None, val_cfg=None, val_evaluator=None)
KEY = 'train/loss_distill_cwd_neck_unlabeled'


def _train(config, work_dir, hooks, **overrides):
    return train_runner(config, work_dir, **dict(NO_VAL, custom_hooks=hooks, **overrides))


def _hook(runner, cls):
    return next(h for h in runner.hooks if isinstance(h, cls))


def _prune(**kw):
    return dict(dict(type='FisherPruningHook', interval=2, delta='acts', target=0.9,
                     target_metric='flops', channels_per_step=8, save_thresholds=()), **kw)


def _images(root):
    """The validation canvases as images without labels: no LoadAnnotations in the pipeline,
    so the batches carry no boxes at all."""
    return dict(dataset=dict(
        type='DigitsCocoDataset', data_root=root + '/', generate_cfg=DET_GEN,
        ann_file='annotations/val.json', data_prefix=dict(img='val/'), test_mode=True,
        pipeline=[dict(type='LoadImageFromFile'), dict(type='Resize', scale=(96, 96),
                                                       keep_ratio=True),
                  dict(type='PackDetInputs')]))


def test_images_without_labels_add_a_term_and_train_the_student(tmp_path, det_data):
    config = det_config(tmp_path, det_data, max_iters=4, ckpt_interval=4)
    hook = dict(type='GFPDistillHook', unlabeled_dataloader=_images(det_data),
                save_teacher=False)
    runner = _train(config, tmp_path / 'u', [_prune(), hook])
    scalars = runner.message_hub.log_scalars
    values = scalars[KEY].data[0]
    assert len(values) == 4 and all(0 < v < float('inf') for v in values)
    assert 'train/loss_distill_cwd_neck' in scalars  # the labelled batch's term stays
    dist = _hook(runner, GFPDistillHook)
    assert dist._unlabeled.drawn == 4  # one batch per iteration
    batch = next(dist._unlabeled)  # batch_size from train_dataloader
    assert len(batch['inputs']) == 2 and len(batch['data_samples'][0].gt_instances) == 0
    ckpt = torch.load(tmp_path / 'u' / 'iter_4.pth', weights_only=True)
    assert ckpt[STATE_KEY] == dict(unlabeled_batches=4)  # also without the teacher's weights
    assert TEACHER_KEY not in ckpt
    # the term trains: the same run without the unlabelled images ends elsewhere (weights,
    # not buffers: this detector's backbone keeps its BN statistics, norm_eval=True)
    plain = _train(config, tmp_path / 'p', [_prune(), dict(type='GFPDistillHook')])
    assert KEY not in plain.message_hub.log_scalars
    a, b = dict(runner.model.named_parameters()), dict(plain.model.named_parameters())
    assert any(not torch.allclose(a[k], b[k]) for k in a)


@pytest.mark.parametrize('fisher', ['all', 'task'])
def test_images_without_labels_do_not_rank_channels(tmp_path, det_data, fisher):
    """Iteration 1 starts from the same weights: its Fisher terms equal the run without the
    unlabelled images, for the loss that ranks (task + labelled distillation, or task)."""
    config = det_config(tmp_path, det_data, max_iters=1, ckpt_interval=100)
    prune = _prune(interval=100)  # accumulate only
    with_u = _train(config, tmp_path / 'u', [prune, dict(
        type='GFPDistillHook', unlabeled_dataloader=_images(det_data), unlabeled_weight=10.0,
        fisher=fisher)])
    without = _train(config, tmp_path / 'p', [prune, dict(type='GFPDistillHook',
                                                          fisher=fisher)])
    fa = _hook(with_u, FisherPruningHook).pruner.recorder.fisher
    fb = _hook(without, FisherPruningHook).pruner.recorder.fisher
    assert fa.keys() == fb.keys() and any(bool(v.any()) for v in fa.values())
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], rtol=1e-5, atol=1e-12, msg=k)


def test_resume_goes_on_with_the_next_unlabelled_batch(tmp_path, det_data):
    config = det_config(tmp_path, det_data, max_iters=6, interval=2, target=0.8, per_step=8,
                        ckpt_interval=3)
    hooks = [_prune(target=0.8),
             dict(type='GFPDistillHook', unlabeled_dataloader=_images(det_data))]
    full = _train(config, tmp_path / 'full', hooks)
    _train(config, tmp_path / 'part', hooks, **{'train_cfg.max_iters': 3})
    resumed = _train(config, tmp_path / 'part', hooks, resume=True)
    assert resumed.iter == 6 and _hook(resumed, GFPDistillHook)._unlabeled.drawn == 6
    # a run that only loads the weights (load_from, not resume) starts the loader afresh
    again = _train(config, tmp_path / 'again', hooks, **{'train_cfg.max_iters': 1},
                   load_from=str(tmp_path / 'part' / 'iter_3.pth'))
    assert _hook(again, GFPDistillHook)._unlabeled.drawn == 1
    assert_same_run(full, resumed)


def test_unlabelled_batches_go_on_after_the_loader_ends_and_skip_on_resume():
    class Sampler:
        epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    class Loader(list):
        sampler = Sampler()

    batches = UnlabeledBatches(Loader([1, 2, 3]))
    assert [next(batches) for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]
    assert Loader.sampler.epochs == [1, 2] and batches.drawn == 7
    resumed = UnlabeledBatches(Loader([1, 2, 3]), skip=4)
    assert next(resumed) == 2 and resumed.drawn == 5
    with pytest.raises(RuntimeError, match='gives no batch'):
        next(UnlabeledBatches(Loader([])))


def test_unlabelled_loader_config_takes_what_it_lacks_from_the_training_loader():
    train = dict(batch_size=8, num_workers=2, persistent_workers=True,
                 batch_sampler=dict(type='AspectRatioBatchSampler'),
                 collate_fn=dict(type='yolov5_collate'),
                 sampler=dict(type='DefaultSampler', shuffle=True), dataset=dict(type='X'))
    # not the batch sampler or collate_fn (they may read sizes or labels); no persistent
    # workers without workers (torch refuses them)
    cfg = unlabeled_loader_cfg(dict(dataset=dict(type='Y'), num_workers=0), train)
    assert cfg == dict(dataset=dict(type='Y'), num_workers=0, batch_size=8,
                       sampler=dict(type='InfiniteSampler', shuffle=True))
    cfg = unlabeled_loader_cfg(dict(dataset=dict(type='Y')), train)
    assert cfg['num_workers'] == 2 and cfg['persistent_workers'] is True
    with pytest.raises(ValueError, match='needs `batch_size`'):
        unlabeled_loader_cfg(dict(dataset=dict(type='Y')), None)


class _Runner:
    """What train_loader_settings reads of a Runner: ``cfg`` and ``train_dataloader``."""

    def __init__(self, cfg, loader=None):
        self.cfg, self._loader = cfg, loader

    @property
    def train_dataloader(self):
        if self._loader is None:  # as Runner.train_dataloader without a train loop
            raise AttributeError("'NoneType' object has no attribute 'dataloader'")
        return self._loader


def test_a_runner_made_in_python_lends_its_built_loader_settings():
    from mmengine.config import Config
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler
    given = dict(batch_size=8, dataset=dict(type='X'))
    assert train_loader_settings(_Runner(Config(dict(train_dataloader=given)))) == given
    # Runner(model=..., train_dataloader=...) keeps an empty cfg: the built loader speaks
    loader = DataLoader(list(range(10)), batch_size=3, num_workers=0, pin_memory=False)
    assert train_loader_settings(_Runner(Config(), loader)) == dict(
        batch_size=3, num_workers=0, persistent_workers=False, pin_memory=False)
    sampled = DataLoader(list(range(10)), batch_sampler=BatchSampler(
        SequentialSampler(range(10)), batch_size=4, drop_last=False))
    assert train_loader_settings(_Runner(Config(), sampled))['batch_size'] == 4
    assert train_loader_settings(_Runner(Config())) is None


def test_runner_made_in_python_distils_on_images_without_labels(tmp_path, det_data):
    """Without a config the hook takes batch_size from the built training loader (found by
    the accuracy benchmark's unpruned_kd, whose Runner is made from a model object)."""
    from mmengine.config import Config
    from mmengine.registry import MODELS
    from mmengine.runner import Runner
    cfg = Config.fromfile(det_config(tmp_path, det_data, max_iters=2, ckpt_interval=100))
    model = MODELS.build(cfg.model)
    keys = ('train_dataloader', 'train_cfg', 'optim_wrapper', 'default_scope', 'env_cfg')
    runner = Runner(model=model, work_dir=str(tmp_path / 'py'),
                    custom_hooks=[dict(type='GFPDistillHook', save_teacher=False,
                                       unlabeled_dataloader=_images(det_data))],
                    default_hooks=dict(checkpoint=None),
                    **{k: cfg[k] for k in keys if k in cfg})
    assert not runner.cfg.get('train_dataloader')  # what made the hook refuse before
    runner.train()
    assert len(runner.message_hub.log_scalars[KEY].data[0]) == 2
    batch = next(_hook(runner, GFPDistillHook)._unlabeled)
    assert len(batch['inputs']) == cfg.train_dataloader.batch_size


def test_bad_unlabelled_arguments_are_named():
    with pytest.raises(ValueError, match='at least `dataset'):
        GFPDistillHook(unlabeled_dataloader='data/unlabelled')
    with pytest.raises(ValueError, match='every entry of `losses` is fg_mse'):
        GFPDistillHook(losses=[dict(module='neck', type='fg_mse')],
                       unlabeled_dataloader=dict(dataset=dict(type='X')))
    with pytest.raises(ValueError, match='`unlabeled_weight` must be a finite number'):
        GFPDistillHook(unlabeled_weight=-1)
