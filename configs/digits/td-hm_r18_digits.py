# Top-down heatmap pose estimation on the digits keypoint set (five stroke keypoints per digit).
#
# Model: MMPose's SimpleBaseline (TopdownPoseEstimator + ResNet + HeatmapHead, as
# mmpose::body_2d_keypoint/topdown_heatmap/coco/td-hm_res50_8xb64-210e_coco-256x192.py), shrunk
# for 64x64 crops of 18-36 px digits: a ResNet-18 of a quarter width (16..64 channels) trained
# from scratch (nothing is downloaded), read at stride 16 (stage 3), two deconvolutions to 16x16
# heatmaps. The backbone has three stages only: mmpose's ResNet runs every stage it builds, and a
# fourth one, read by nothing, was 17% of the FLOPs and 70% of the parameters for no output. Data: configs/_base_/datasets/digits_pose.py, generated on first use into
# data/digits_pose/.
#
# Train: python tools/train.py configs/digits/td-hm_r18_digits.py
# The final checkpoint is work_dirs/td-hm_r18_digits/epoch_8.pth, which the *_gfp_*.py pruning
# configs load. Test: python tools/test.py configs/digits/td-hm_r18_digits.py CHECKPOINT
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
default_scope = 'mmpose'

_base_ = [
    'mmpose::_base_/default_runtime.py',
    '../_base_/datasets/digits_pose.py',
]

codec = dict(type='MSRAHeatmap', input_size=(64, 64), heatmap_size=(16, 16), sigma=1)

model = dict(
    type='TopdownPoseEstimator',
    data_preprocessor=dict(
        type='PoseDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True),
    backbone=dict(
        type='ResNet', depth=18, stem_channels=16, base_channels=16, num_stages=3,
        strides=(1, 2, 2), dilations=(1, 1, 1), out_indices=(2, )),
    head=dict(
        type='HeatmapHead',
        in_channels=64,
        out_channels=5,
        deconv_out_channels=(32, 32),
        deconv_kernel_sizes=(4, 4),
        loss=dict(type='KeypointMSELoss', use_target_weight=True),
        decoder=codec),
    # digits are not mirror-symmetric: no flip test
    test_cfg=dict(flip_test=False))

# No RandomFlip (digits are not mirror-symmetric): a mild shift/scale/rotation jitter instead.
train_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale', padding=1.25),
    dict(type='RandomBBoxTransform', shift_factor=0.1, scale_factor=(0.8, 1.2),
         rotate_factor=15),
    dict(type='TopdownAffine', input_size=codec['input_size']),
    dict(type='GenerateTarget', encoder=codec),
    dict(type='PackPoseInputs'),
]
val_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale', padding=1.25),
    dict(type='TopdownAffine', input_size=codec['input_size']),
    dict(type='PackPoseInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=val_pipeline))
test_dataloader = val_dataloader

# 8 epochs of the ~1,000 training digits (batch 32): about 250 iterations.
train_cfg = dict(by_epoch=True, max_epochs=8, val_interval=4)
val_cfg = dict()
test_cfg = dict()
optim_wrapper = dict(optimizer=dict(type='Adam', lr=4e-3))
param_scheduler = [
    dict(type='LinearLR', begin=0, end=30, start_factor=0.01, by_epoch=False),
    dict(type='MultiStepLR', begin=0, end=8, milestones=[6], gamma=0.1, by_epoch=True),
]
auto_scale_lr = dict(base_batch_size=32)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=4, max_keep_ckpts=1))
randomness = dict(seed=0)
