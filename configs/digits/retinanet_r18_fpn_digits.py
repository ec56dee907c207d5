# RetinaNet with a ResNet-18 FPN, trained from scratch on the digits detection set.
#
# Model: MMDetection's own RetinaNet config (mmdet::_base_/models/retinanet_r50_fpn.py), shrunk
# for 128x128 canvases with 10-35 px digits: ResNet-18 trained from scratch (no pretrained
# weights, nothing is downloaded), FPN on all four stages to P2..P5 (strides 4..32) with 64
# channels, and anchors of 12..136 px (two scales per octave). Data:
# configs/_base_/datasets/digits_det.py, generated on first use into data/digits_det/.
#
# Train: python tools/train.py configs/digits/retinanet_r18_fpn_digits.py
# The final checkpoint is work_dirs/retinanet_r18_fpn_digits/iter_500.pth, which the
# *_gfp_*.py pruning configs load.
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
default_scope = 'mmdet'

_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    '../_base_/datasets/digits_det.py',
    'mmdet::_base_/default_runtime.py',
]

model = dict(
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
        num_classes=10,
        in_channels=64,
        feat_channels=64,
        stacked_convs=2,
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
        anchor_generator=dict(
            octave_base_scale=3,
            scales_per_octave=2,
            ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32])),
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
