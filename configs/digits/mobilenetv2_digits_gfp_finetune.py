# Fine-tune a pruned MobileNetV2 classifier with its channel masks fixed (no further pruning).
#
# Checkpoint convention: loads the checkpoint that mobilenetv2_digits_gfp_acts.py saves when the model
# crosses 50% of its FLOPs (weights and masks), from the default work dir of tools/train.py,
# relative to the repository root. Run, in order:
#   python tools/train.py configs/digits/mobilenetv2_digits.py
#   python tools/train.py configs/digits/mobilenetv2_digits_gfp_acts.py
#   python tools/train.py configs/digits/mobilenetv2_digits_gfp_finetune.py
# For the delta='flops' result, override both paths, e.g.
#   --cfg-options load_from=work_dirs/mobilenetv2_digits_gfp_flops/pruned_flops_0.50.pth \
#       custom_hooks.0.init_spec=work_dirs/mobilenetv2_digits_gfp_flops/pruned_flops_0.50.json
# The masks come from the checkpoint; `init_spec` (the channel spec saved next to it) is used
# when the loaded checkpoint carries no pruning state, e.g. to fine-tune the baseline weights
# under a given channel spec. The model keeps its full shapes with masked channels; for a
# physically smaller model, run tools/deploy_pruned.py on this run's final checkpoint
# (work_dirs/mobilenetv2_digits_gfp_finetune/epoch_15.pth): it carries the same masks.
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
default_scope = 'mmpretrain'

_base_ = './mobilenetv2_digits.py'

load_from = 'work_dirs/mobilenetv2_digits_gfp_acts/pruned_flops_0.50.pth'

custom_hooks = [
    dict(
        type='FisherPruningHook',
        prune=False,
        init_spec='work_dirs/mobilenetv2_digits_gfp_acts/pruned_flops_0.50.json'),
]

max_epochs = 15
train_cfg = dict(max_epochs=max_epochs, val_interval=5)

# The baseline's AdamW at a quarter of its peak LR, one warm-up epoch, then a cosine decay.
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs,
         T_max=max_epochs - 1, eta_min=1e-5, convert_to_iter_based=True),
]

default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=15, max_keep_ckpts=2))
