# Group Fisher pruning of resnet18_digits.py down to 50% of its FLOPs, then fine-tuning
# with the masks fixed.
# delta='flops': Fisher importance per FLOP.
#
# Checkpoint convention: every *_gfp_{acts,flops}.py config starts from the FINAL checkpoint
# of its baseline in the default work dir of tools/train.py (work_dirs/<config name>), relative
# to where you run from (the repository root). Train the baseline first, then prune:
#   python tools/train.py configs/digits/resnet18_digits.py
#   python tools/train.py configs/digits/resnet18_digits_gfp_flops.py
# The hook masks `channels_per_step` channel units every `interval` iterations (44 iterations
# make an epoch); with delta='acts' the target was reached after about 5 epochs. The remaining
# epochs fine-tune with the masks fixed. Crossing 75% / 50% of the FLOPs saves the checkpoint
# (weights + masks) and the channel spec as pruned_flops_0.75.{pth,json} and
# pruned_flops_0.50.{pth,json} in this config's work dir. tools/deploy_pruned.py turns such a
# checkpoint into a physically smaller model and writes a compact config that trains like any
# mmpretrain config.
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
default_scope = 'mmpretrain'

_base_ = './resnet18_digits.py'

load_from = 'work_dirs/resnet18_digits/epoch_10.pth'

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

prune_epochs = 5  # about when the target is reached
max_epochs = 10
train_cfg = dict(max_epochs=max_epochs, val_interval=5)

# A trained model: a constant, lower learning rate while pruning, then a cosine decay.
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=True, begin=prune_epochs, end=max_epochs,
         T_max=max_epochs - prune_epochs, eta_min=1e-5, convert_to_iter_based=True),
]

default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=2))
