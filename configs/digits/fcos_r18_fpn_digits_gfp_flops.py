# Group Fisher pruning of fcos_r18_fpn_digits.py down to 50% of its FLOPs, then
# fine-tuning with the masks fixed.
# delta='flops': Fisher importance per FLOP.
#
# Checkpoint convention: every *_gfp_{acts,flops}.py config starts from the FINAL checkpoint
# of its baseline in the default work dir of tools/train.py (work_dirs/<config name>), relative
# to where you run from (the repository root). Train the baseline first, then prune:
#   python tools/train.py configs/digits/fcos_r18_fpn_digits.py
#   python tools/train.py configs/digits/fcos_r18_fpn_digits_gfp_flops.py
# The hook masks `channels_per_step` channel units every `interval` iterations; with
# delta='acts' RetinaNet reached 50% of its FLOPs after about 350 iterations (delta='flops'
# gets there sooner: it removes the FLOP-heavy channels first). The remaining iterations
# fine-tune with the masks fixed. Crossing 75% / 50% of the FLOPs saves the checkpoint (weights
# + masks) and the channel spec as pruned_flops_0.75.{pth,json} and pruned_flops_0.50.{pth,json}
# in this config's work dir. tools/deploy_pruned.py turns such a checkpoint into a physically
# smaller model and writes a compact config that trains like any mmdet config.
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
default_scope = 'mmdet'

_base_ = './fcos_r18_fpn_digits.py'

load_from = 'work_dirs/fcos_r18_fpn_digits/iter_500.pth'

custom_hooks = [
    dict(
        type='FisherPruningHook',
        interval=5,
        delta='flops',
        target=0.5,
        target_metric='flops',
        channels_per_step=32,
        divisor=1,  # as the benchmark figures were made (the hook default, 'auto', is 8 here)
        save_thresholds=(0.75, 0.5)),
]

prune_iters = 350  # about when the target is reached
max_iters = 600
train_cfg = dict(max_iters=max_iters, val_interval=300)

# A trained model: a constant, lower learning rate while pruning, then a cosine decay.
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=False, begin=prune_iters, end=max_iters,
         T_max=max_iters - prune_iters, eta_min=1e-5),
]

default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=600, max_keep_ckpts=2))
