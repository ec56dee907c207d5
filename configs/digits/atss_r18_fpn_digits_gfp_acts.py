# Group Fisher pruning of atss_r18_fpn_digits.py with delta='acts' (importance per unit of activation memory, the paper's default),
# down to 50% of the baseline's FLOPs, then fine-tuning with the masks fixed.
#
# Checkpoint convention: every *_gfp_{acts,flops}.py config starts from the FINAL checkpoint
# of its baseline in the default work dir of tools/train.py (work_dirs/<config name>), relative
# to where you run from (the repository root). Train the baseline first, then prune:
#   python tools/train.py configs/digits/atss_r18_fpn_digits.py
#   python tools/train.py configs/digits/atss_r18_fpn_digits_gfp_acts.py
# The hook masks `channels_per_step` channel units every `interval` iterations, which reaches
# the target after roughly 350 iterations; the rest is fine-tuning with the masks
# fixed. Crossing 75% / 50% of the FLOPs saves pruned_flops_0.75.{pth,json} and
# pruned_flops_0.50.{pth,json} in work_dirs/atss_r18_fpn_digits_gfp_acts/ (weights + masks, and the
# channel spec). tools/deploy_pruned.py turns such a checkpoint into a physically smaller
# model and writes a compact config that trains like any mmdet config.
_base_ = './atss_r18_fpn_digits.py'

load_from = 'work_dirs/atss_r18_fpn_digits/iter_500.pth'

custom_hooks = [
    dict(
        type='FisherPruningHook',
        interval=5,
        delta='acts',
        target=0.5,
        target_metric='flops',
        channels_per_step=16,
        save_thresholds=(0.75, 0.5)),
]

prune_iters = 350  # about when the target is reached
max_iters = 700
train_cfg = dict(max_iters=max_iters, val_interval=350)

# A trained model: a constant, lower learning rate while pruning, then a cosine decay.
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=False, begin=prune_iters, end=max_iters,
         T_max=max_iters - prune_iters, eta_min=1e-5),
]

default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=700, max_keep_ckpts=2))
