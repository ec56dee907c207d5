# FCN on a narrow dilated ResNet-18 (ResNetV1c, output stride 8), trained from scratch on the
# digits segmentation set: 11 classes (background and the ten digits), 64x64 canvases.
#
# Model: MMSegmentation's own FCN config (mmseg::_base_/models/fcn_r50-d8.py), shrunk for
# 64x64 canvases: ResNetV1c-18 with 16 base channels (a quarter of ResNet-18's widths), trained from
# scratch (no pretrained weights, nothing is downloaded), an FCN decode head of 64 channels on
# the last stage and the auxiliary FCN head on the third stage that MMSegmentation trains with
# (it only adds a loss: it is not run at test time). BN instead of SyncBN (one process). Data:
# configs/_base_/datasets/digits_seg.py, generated on first use into data/digits_seg/.
#
# Train: python tools/train.py configs/digits/fcn_r18-d8_digits.py
# The final checkpoint is work_dirs/fcn_r18-d8_digits/iter_1500.pth, which the *_gfp_*.py
# pruning configs load.
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
default_scope = 'mmseg'

_base_ = [
    'mmseg::_base_/models/fcn_r50-d8.py',
    '../_base_/datasets/digits_seg.py',
    'mmseg::_base_/default_runtime.py',
]

norm_cfg = dict(type='BN', requires_grad=True)
# Three in four pixels are background: weighted down, so that the digits are learnt early.
class_weight = [0.5] + [1.0] * 10
data_preprocessor = dict(size=(64, 64))
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(depth=18, base_channels=16, stem_channels=16, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=128, channels=64, num_classes=11, norm_cfg=norm_cfg,
                     loss_decode=dict(class_weight=class_weight)),
    auxiliary_head=dict(in_channels=64, channels=32, num_classes=11, norm_cfg=norm_cfg,
                        loss_decode=dict(class_weight=class_weight)))

# 1500 iterations of batch 8 = 20 epochs of the 600 training canvases (~4 min on 2 CPU cores).
max_iters = 1500
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=500)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# SGD with a poly decay, as MMSegmentation's own schedules (schedule_*k.py; lr 0.05 for the small
# batch). AdamW (lr 2e-3, cosine) learnt only the background in 500 iterations (mIoU 7.1, the loss
# flat from iteration 50); SGD reached mIoU 21 at 500 iterations, 50 at 1000 and 62 at 1500.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=1e-4, power=0.9, by_epoch=False, begin=30, end=max_iters),
]

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))

randomness = dict(seed=0)
