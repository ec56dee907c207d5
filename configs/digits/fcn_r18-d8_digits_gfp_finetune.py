# Fine-tune a pruned FCN with its channel masks fixed (no further pruning).
#
# Checkpoint convention: loads the checkpoint that fcn_r18-d8_digits_gfp_acts.py saves when the
# model crosses 50% of its FLOPs (weights and masks), from the default work dir of
# tools/train.py, relative to the repository root. Run, in order:
#   python tools/train.py configs/digits/fcn_r18-d8_digits.py
#   python tools/train.py configs/digits/fcn_r18-d8_digits_gfp_acts.py
#   python tools/train.py configs/digits/fcn_r18-d8_digits_gfp_finetune.py
# The masks come from the checkpoint; `init_spec` (the channel spec saved next to it) is used
# when the loaded checkpoint carries no pruning state. For a physically smaller model, run
# tools/deploy_pruned.py on this run's final checkpoint
# (work_dirs/fcn_r18-d8_digits_gfp_finetune/iter_300.pth): it carries the same masks.
_base_ = './fcn_r18-d8_digits.py'

load_from = 'work_dirs/fcn_r18-d8_digits_gfp_acts/pruned_flops_0.50.pth'

custom_hooks = [
    dict(
        type='FisherPruningHook',
        prune=False,
        init_spec='work_dirs/fcn_r18-d8_digits_gfp_acts/pruned_flops_0.50.json'),
]

max_iters = 300
train_cfg = dict(max_iters=max_iters, val_interval=150)

optim_wrapper = dict(optimizer=dict(lr=5e-3))  # a tenth of the baseline's
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=20, end=max_iters,
         T_max=max_iters - 20, eta_min=1e-5),
]
