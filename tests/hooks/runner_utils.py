"""Small real configs for end-to-end tests (mmdet/mmpretrain configs on generated digits), and
what every Runner end-to-end test does with them: train, find the pruning hook, read its masks."""
import os.path as osp
import textwrap
import uuid

DET_TEMPLATE = '''
_base_ = 'mmdet::{base}'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
data_root = '{data_root}/'
model = dict(
    backbone=dict(depth=18, init_cfg=None, norm_eval=False, frozen_stages=-1),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=32),
    bbox_head=dict(num_classes=10, in_channels=32, feat_channels=32, stacked_convs=2),
    test_cfg=dict(nms_pre=100, max_per_img=20, score_thr=0.0))
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                          'scale_factor'))]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='DigitsCocoDataset', data_root=data_root, generate_cfg={gen},
                 ann_file='annotations/train.json', data_prefix=dict(img='train/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=1), pipeline=pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='DigitsCocoDataset', data_root=data_root, generate_cfg={gen},
                 ann_file='annotations/val.json', data_prefix=dict(img='val/'),
                 test_mode=True, pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/val.json',
                     metric='bbox', format_only=False)
test_evaluator = val_evaluator
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters},
                 val_interval=1000)
param_scheduler = []
optim_wrapper = dict(optimizer=dict(type='{optimizer}', lr={lr}, weight_decay=0.0001),
                     clip_grad=dict(max_norm=10))
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval={ckpt_interval},
                                     by_epoch=False, max_keep_ckpts=-1),
                     logger=dict(type='LoggerHook', interval=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
custom_hooks = [dict(type='FisherPruningHook', interval={interval}, delta='{delta}',
                     target={target}, target_metric='flops', channels_per_step={per_step},
                     save_thresholds=({save},))]
'''

CLS_TEMPLATE = '''
_base_ = 'mmpretrain::{base}'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
data_root = '{data_root}'
model = dict(backbone=dict(init_cfg=None), head=dict(num_classes=10, topk=(1,)){model_extra})
data_preprocessor = dict(num_classes=10, mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False)
pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=32),
            dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(_delete_=True, type='DigitsClsDataset', data_root=data_root, split='train', generate_cfg={gen},
                 pipeline=pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(_delete_=True, type='DigitsClsDataset', data_root=data_root, split='val', generate_cfg={gen},
                 pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator
train_cfg = dict(_delete_=True, by_epoch=False, max_iters={max_iters}, val_interval=1000)
param_scheduler = []
optim_wrapper = dict(optimizer=dict(_delete_=True, type='{optimizer}', lr={lr},
                                    weight_decay=0.0001))
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval={ckpt_interval},
                                     by_epoch=False, max_keep_ckpts=-1),
                     logger=dict(type='LoggerHook', interval=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
custom_hooks = [dict(type='FisherPruningHook', interval={interval}, delta='{delta}',
                     target={target}, target_metric='flops', channels_per_step={per_step},
                     save_thresholds=({save},))]
'''

DET_GEN = dict(num_train=24, num_val=8, seed=0)
CLS_GEN = dict(num_train=64, num_val=32, seed=0)


def write_config(path, template, **kw):
    defaults = dict(max_iters=12, interval=2, delta='acts', target=0.97, per_step=32, save=0.98,
                    ckpt_interval=4, optimizer='SGD', lr=0.01, model_extra='')
    defaults.update(kw)
    with open(path, 'w') as f:
        f.write(textwrap.dedent(template.format(**defaults)))
    return path


def det_config(tmp_path, data_root, base='retinanet/retinanet_r18_fpn_1x_coco.py', name='det',
               **kw):
    return write_config(osp.join(str(tmp_path), f'{name}.py'), DET_TEMPLATE, base=base,
                        data_root=data_root, gen=DET_GEN, **kw)


def cls_config(tmp_path, data_root, base='resnet/resnet18_8xb32_in1k.py', name='cls', **kw):
    return write_config(osp.join(str(tmp_path), f'{name}.py'), CLS_TEMPLATE, base=base,
                        data_root=data_root, gen=CLS_GEN, **kw)


def train_runner(config: str, work_dir, **overrides):
    """Build a Runner from ``config`` (with ``overrides`` merged), train it and return it."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(config)
    cfg.work_dir = str(work_dir)
    cfg.merge_from_dict(overrides)
    # MMEngine names a run's logger and visualizer '<config name>_<timestamp in seconds>': two
    # runs of same-named configs started within one second would share them (and one log file).
    cfg.experiment_name = f'{osp.splitext(osp.basename(config))[0]}_{uuid.uuid4().hex[:8]}'
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def pruning_hook(runner):
    """The runner's FisherPruningHook."""
    from mmgfp.hooks import FisherPruningHook
    return next(h for h in runner.hooks if isinstance(h, FisherPruningHook))


def hook_masks(runner):
    """A copy of the pruning hook's keep masks."""
    return {k: v.clone() for k, v in pruning_hook(runner).pruner.masker.keep.items()}


def hook_fisher(runner):
    """A copy of the Fisher information the pruning hook's recorder holds."""
    return {k: v.clone() for k, v in pruning_hook(runner).pruner.recorder.fisher.items()}


def assert_same_run(full, resumed):
    """A resumed run ended where the uninterrupted ``full`` run ended: the same masks, and the
    same floating-point weights and buffers up to float rounding."""
    import torch
    ma, mb = hook_masks(full), hook_masks(resumed)
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    for (n, p), (_, q) in zip(full.model.state_dict().items(),
                              resumed.model.state_dict().items()):
        if p.is_floating_point():
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), n
