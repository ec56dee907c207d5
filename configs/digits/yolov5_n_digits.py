# YOLOv5-n (MMYOLO) trained from scratch on the digits detection set.
#
# Model: MMYOLO's own fast YOLOv5-n config (YOLOv5DetDataPreprocessor, yolov5_collate), with
# 10 classes, 128x128 images and anchors for 10-35 px digits. Data: the digits detection set
# (configs/_base_/datasets/digits_det.py), generated on first use into data/digits_det/; a
# plain resize + letterbox pipeline (no Mosaic/Albu: albumentations is not installed and the
# digits need no heavy augmentation); no EMA.
#
# `mmgfp.yolo` imports mmyolo through mmgfp's bridge of its version gate (mmyolo 0.6.0 asserts
# mmcv < 2.1.0 at import; see docs/en/user_guides/prune_yolo.md).
#
# Train: python tools/train.py configs/digits/yolov5_n_digits.py
# The final checkpoint is work_dirs/yolov5_n_digits/iter_300.pth, which
# yolov5_n_digits_gfp_acts.py loads.
_base_ = 'mmyolo::yolov5/yolov5_n-v61_syncbn_fast_8xb16-300e_coco.py'
custom_imports = dict(imports=['mmgfp', 'mmgfp.yolo'], allow_failed_imports=False)
default_scope = 'mmyolo'

data_root = 'data/digits_det/'
num_classes = 10
img_scale = (128, 128)  # width, height
anchors = [[(8, 10), (12, 16), (16, 12)],  # P3/8
           [(16, 22), (22, 30), (30, 22)],  # P4/16
           [(30, 40), (40, 30), (40, 50)]]  # P5/32

model = dict(
    backbone=dict(norm_cfg=dict(type='BN', momentum=0.03, eps=0.001)),
    bbox_head=dict(
        head_module=dict(num_classes=num_classes),
        prior_generator=dict(base_sizes=anchors),
        # the base's weights scaled for 10 classes and 128x128 images as it scales them
        loss_cls=dict(loss_weight=0.5 * num_classes / 80),
        loss_obj=dict(loss_weight=1.0 * (img_scale[0] / 640)**2)),
    test_cfg=dict(nms_pre=1000, score_thr=0.001, max_per_img=50))

# The data set is registered in MMDetection's scope; its pipeline is built there, so the
# MMYOLO transforms are named with their scope.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmdet.LoadAnnotations', with_bbox=True),
    dict(type='mmyolo.YOLOv5KeepRatioResize', scale=img_scale),
    dict(type='mmyolo.LetterResize', scale=img_scale, allow_scale_up=False,
         pad_val=dict(img=114)),
    dict(type='mmdet.PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape')),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmyolo.YOLOv5KeepRatioResize', scale=img_scale),
    dict(type='mmyolo.LetterResize', scale=img_scale, allow_scale_up=False,
         pad_val=dict(img=114)),
    dict(type='mmdet.LoadAnnotations', with_bbox=True),
    dict(type='mmdet.PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                    'pad_param')),
]
train_dataloader = dict(
    _delete_=True,
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='yolov5_collate'),
    dataset=dict(
        type='mmdet.DigitsCocoDataset',
        data_root=data_root,
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline))
val_dataloader = dict(
    _delete_=True,
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='mmdet.DigitsCocoDataset',
        data_root=data_root,
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='mmdet.CocoMetric',
                     ann_file=data_root + 'annotations/val.json', metric='bbox')
test_evaluator = val_evaluator

max_iters = 300
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=300)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=10.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=30, end=max_iters,
         T_max=max_iters - 30, eta_min=1e-5),
]
default_hooks = dict(
    param_scheduler=dict(_delete_=True, type='ParamSchedulerHook'),
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(_delete_=True, type='CheckpointHook', by_epoch=False, interval=300,
                    max_keep_ckpts=2),
    visualization=dict(type='mmdet.DetVisualizationHook', draw=False))
custom_hooks = []  # no EMA
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
