# MobileNetV2 (width 1.0) classifier trained from scratch on the 32x32 digits classification
# set.
#
# Model: MMPretrain's own MobileNetV2 config (mmpretrain::_base_/models/mobilenet_v2_1x.py, the
# model of mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py) with a 10-class head. The full
# in1k config also carries ImageNet data settings that cannot be combined with the digits data
# base (MMEngine forbids duplicate keys among bases), so the model, data and runtime bases are
# listed separately. Data: configs/_base_/datasets/digits_cls.py, generated on first use into
# data/digits_cls/. Nothing is downloaded.
#
# Train: python tools/train.py configs/digits/mobilenetv2_digits.py
# The final checkpoint is work_dirs/mobilenetv2_digits/epoch_30.pth, which the *_gfp_*.py pruning
# configs load.
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
default_scope = 'mmpretrain'

_base_ = [
    'mmpretrain::_base_/models/mobilenet_v2_1x.py',
    '../_base_/datasets/digits_cls.py',
    'mmpretrain::_base_/default_runtime.py',
]

model = dict(
    data_preprocessor={{_base_.data_preprocessor}},
    head=dict(num_classes=10, topk=(1, )))

# 30 epochs of the 1,400 training images (44 iterations of batch 32 each): MobileNetV2 learns
# more slowly from scratch than ResNet-18 but each iteration is cheaper.
max_epochs = 30
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=10)
val_cfg = dict()
test_cfg = dict()

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs,
         T_max=max_epochs - 1, eta_min=1e-5, convert_to_iter_based=True),
]
auto_scale_lr = dict(enable=False, base_batch_size=32)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=2))

randomness = dict(seed=0)
