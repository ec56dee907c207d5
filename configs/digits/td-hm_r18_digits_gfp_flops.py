# Group Fisher pruning of td-hm_r18_digits.py (top-down heatmap pose on the digits keypoints)
# down to 50% of its FLOPs, then training on with the masks fixed.
# delta='flops': Fisher importance per FLOP.
#
# Checkpoint convention: starts from the FINAL checkpoint of the baseline in the default work
# dir of tools/train.py, relative to the repository root. Train the baseline first, then prune:
#   python tools/train.py configs/digits/td-hm_r18_digits.py
#   python tools/train.py configs/digits/td-hm_r18_digits_gfp_flops.py
# The hook masks 8 channels every 4 iterations (32 iterations make an epoch). Crossing 75% / 50%
# of the FLOPs saves the checkpoint (weights + masks) and the channel spec as
# pruned_flops_0.75.{pth,json} and pruned_flops_0.50.{pth,json} in this config's work dir;
# tools/deploy_pruned.py turns one into a physically smaller model whose compact config works
# with mmpose's tools/test.py and inferencer (init_model + inference_topdown).
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
default_scope = 'mmpose'

_base_ = './td-hm_r18_digits.py'

load_from = 'work_dirs/td-hm_r18_digits/epoch_8.pth'

custom_hooks = [
    dict(
        type='FisherPruningHook',
        interval=4,
        delta='flops',
        target=0.5,
        target_metric='flops',
        channels_per_step=8,
        divisor=1,  # the quarter-width ResNet has 16-channel layers
        save_thresholds=(0.75, 0.5)),
]

prune_epochs = 4  # the acts run reached the target at iteration 84 (epoch 3 of 8)
max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=4)

# A trained model: a constant, lower learning rate while pruning, then a cosine decay.
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=True, begin=prune_epochs, end=max_epochs,
         T_max=max_epochs - prune_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
