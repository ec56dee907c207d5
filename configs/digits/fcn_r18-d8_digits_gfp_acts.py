# Group Fisher pruning of fcn_r18-d8_digits.py down to 50% of its FLOPs, then fine-tuning with
# the masks fixed. delta='acts': Fisher importance per unit of activation memory (the paper's
# default).
#
# Checkpoint convention: starts from the FINAL checkpoint of the baseline in the default work
# dir of tools/train.py (work_dirs/<config name>), relative to where you run from (the
# repository root). Train the baseline first, then prune:
#   python tools/train.py configs/digits/fcn_r18-d8_digits.py
#   python tools/train.py configs/digits/fcn_r18-d8_digits_gfp_acts.py
# The hook masks `channels_per_step` channel units every `interval` iterations; the auxiliary
# head (it runs only in the loss) is traced with the rest of the model: its input channels
# follow the backbone stage it reads and its own channels are a group of their own. Crossing
# 75% / 50% of the FLOPs saves the checkpoint (weights + masks) and the channel spec as
# pruned_flops_0.75.{pth,json} and pruned_flops_0.50.{pth,json} in this config's work dir.
# tools/deploy_pruned.py turns such a checkpoint into a physically smaller model and writes a
# compact config that mmseg's tools and inference API take as they are.
_base_ = './fcn_r18-d8_digits.py'

load_from = 'work_dirs/fcn_r18-d8_digits/iter_1500.pth'

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

prune_iters = 150  # about when the target is reached
max_iters = 300
train_cfg = dict(max_iters=max_iters, val_interval=150)

# A trained model: a constant, lower learning rate while pruning, then a cosine decay.
optim_wrapper = dict(optimizer=dict(lr=5e-3))  # a tenth of the baseline's
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=False, begin=prune_iters, end=max_iters,
         T_max=max_iters - prune_iters, eta_min=1e-5),
]
