# Group Fisher Pruning of MMPretrain's RegNetX-3.2GF (ImageNet) to 50% of its FLOPs.
# delta='flops': importance per FLOP removed; regnetx-3.2gf_gfp_acts.py is the same with
# delta='acts'. Everything but the GFP lines below is
# mmpretrain::regnet/regnetx-3.2gf_8xb64_in1k.py as MMPretrain ships it.
#
# Schedule (Liu et al., "Group Fisher Pruning for Practical Network Compression", ICML 2021):
# start from the trained ImageNet model, keep training at a constant low lr and remove the least
# important unit every `interval` iterations until the target. The authors released no
# classification configs; interval=25 and lr 0.004 are what a public re-implementation of their
# hook used for ResNet-50 and RegNetX (FisherPruning-Pytorch). Here a unit is 8 channels
# (divisor=8 keeps every width a multiple of 8).
#
# A simulation of this schedule with made-up importances reached 50% of the FLOPs after 86
# (costliest units first) to 214 (cheapest first) selections, i.e. at most 5,350 iterations: 2.1
# epochs of ImageNet at 8 x 64 images (2,503 iterations each). max_epochs leaves a margin; the
# gfp_flops scalar in the log shows the progress. Not run here (no GPU, no ImageNet): these
# numbers are a suggestion, not a measurement.
#
# The paper's RegNetX figure (77.97% top-1 at 1.59 GFLOPs) is a RegNetX pruned to about the FLOPs
# of RegNetX-1.6GF; half of RegNetX-3.2GF lands there. Group convs (48 channels per group) lose
# whole groups: there a unit is 48 channels. mmpretrain's PreciseBNHook stays in custom_hooks.
#
# Commands (8 GPUs x 64 images; with fewer, add --auto-scale-lr and raise interval as
# configs/README.md says):
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/imagenet/regnetx-3.2gf_gfp_flops.py --launcher pytorch
#   python tools/deploy_pruned.py configs/imagenet/regnetx-3.2gf_gfp_flops.py \
#       work_dirs/regnetx-3.2gf_gfp_flops/pruned_flops_0.50.pth \
#       --out-dir work_dirs/regnetx-3.2gf_gfp_flops/compact
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/imagenet/regnetx-3.2gf_gfp_finetune.py --launcher pytorch
# The hook saves pruned_flops_0.75.pth and pruned_flops_0.50.pth (weights and masks) with their
# channel specs (.json) in the work dir as the FLOPs cross 75% and 50%; after the target the run
# trains on with the masks fixed until max_epochs (stopping it once pruned_flops_0.50.pth is
# written loses nothing the fine-tuning needs; if a run ends before, resume it with a larger
# train_cfg.max_epochs).
_base_ = 'mmpretrain::regnet/regnetx-3.2gf_8xb64_in1k.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)

load_from = 'https://download.openmmlab.com/mmclassification/v0/regnet/regnetx-3.2gf_8xb64_in1k_20211213-1fdd82ae.pth'  # noqa: E501

custom_hooks = _base_.custom_hooks + [  # keep mmpretrain's PreciseBNHook
    dict(
        type='FisherPruningHook',
        interval=25,
        delta='flops',
        target=0.5,
        target_metric='flops',
        channels_per_step=1,
        # Widths stay multiples of 8 (one selection removes 8 channels): GPU kernels, fp16 most,
        # run fastest at such widths, and a width off them can make the pruned model slower
        # than the original (issue 11; docs, latency_aware). It is also what the hook's default
        # divisor='auto' gives without a latency table; with a table of the deploy GPU
        # (tools/profile_latency.py --device cuda), latency_table=PATH and divisor='auto'
        # follow the measured alignment of each group instead.
        divisor=8,
        save_thresholds=(0.75, 0.5)),
]

# A constant, low learning rate while pruning (the base config's is 0.4).
optim_wrapper = dict(optimizer=dict(lr=0.004))
param_scheduler = []
train_cfg = dict(max_epochs=3)
