# ATSS with a ResNet-18 FPN, trained from scratch on the digits detection set.
#
# MMDetection ships no model-only base for ATSS, and its full ATSS config carries COCO data
# settings that cannot be combined with the digits data base (MMEngine forbids duplicate keys
# among bases). So the backbone, neck and data preprocessor come from MMDetection's own
# RetinaNet model config (the same ResNet + FPN), shrunk exactly as in
# retinanet_r18_fpn_digits.py, and the head and assigner are replaced by ATSS's (one square
# anchor per location, 16..128 px on P2..P5, GIoU loss). Nothing is downloaded.
#
# Train: python tools/train.py configs/digits/atss_r18_fpn_digits.py
# The final checkpoint is work_dirs/atss_r18_fpn_digits/iter_500.pth, which the *_gfp_*.py
# pruning configs load.
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
default_scope = 'mmdet'

_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    '../_base_/datasets/digits_det.py',
    'mmdet::_base_/default_runtime.py',
]

model = dict(
    type='ATSS',
    backbone=dict(
        depth=18,
        frozen_stages=-1,  # from scratch: every stage and BN layer trains
        norm_eval=False,
        init_cfg=None),
    neck=dict(
        in_channels=[64, 128, 256, 512],
        out_channels=64,
        start_level=0,
        add_extra_convs=False,
        num_outs=4),
    bbox_head=dict(
        _delete_=True,
        type='ATSSHead',
        num_classes=10,
        in_channels=64,
        feat_channels=64,
        stacked_convs=2,
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
        anchor_generator=dict(
            type='AnchorGenerator',
            ratios=[1.0],
            octave_base_scale=4,
            scales_per_octave=1,
            strides=[4, 8, 16, 32]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(
            type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    train_cfg=dict(
        _delete_=True,
        assigner=dict(type='ATSSAssigner', topk=9),
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    test_cfg=dict(nms_pre=500, score_thr=0.05, max_per_img=50))

# 500 iterations of batch 8 = 4 epochs of the 1,000 training canvases: about 5 minutes on two
# CPU cores. Longer schedules keep improving (see the numbers in the comment at the top).
max_iters = 500
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=250)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=10.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.8)], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=8)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=250, max_keep_ckpts=2),
    visualization=dict(type='DetVisualizationHook', draw=False))
log_processor = dict(by_epoch=False)

randomness = dict(seed=0)
