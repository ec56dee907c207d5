# Group Fisher Pruning of MMDetection's RetinaNet-R50-FPN (COCO) to 50% of its FLOPs.
# delta='flops': importance per FLOP removed; retinanet_r50_fpn_gfp_acts.py is the same with
# delta='acts'. Everything but the GFP lines below is
# mmdet::retinanet/retinanet_r50_fpn_1x_coco.py as MMDetection ships it.
#
# Schedule of the paper (Liu et al., "Group Fisher Pruning for Practical Network Compression",
# ICML 2021) as its authors' RetinaNet/ATSS configs set it (github.com/jshilong/FisherPruning):
# start from the trained COCO model with the whole backbone trainable, SGD at a constant lr of
# 0.002 on 8 GPUs x 2 images, and remove the least important unit every 10 iterations. Here a
# unit is 8 channels (divisor=8 keeps every width a multiple of 8), so a step removes 8 channels
# where the paper removed 1 (interval=80 would match its channels per iteration).
#
# A simulation of this schedule with made-up importances reached 50% of the FLOPs after 107
# (costliest units first) to 1,217 (cheapest first) selections, i.e. at most 12,170 iterations:
# 1.7 epochs of COCO at 8 x 2 images (about 7,330 iterations each). max_epochs leaves a margin;
# the gfp_flops scalar in the log shows the progress. Not run here (no GPU, no COCO): these
# numbers are a suggestion, not a measurement.
#
# Grouping: each ResNet stage's residual stream, the FPN laterals and outputs (with P6/P7) and
# the head shared by all five levels are coupled groups; the classifier output stays whole.
#
# Commands (8 GPUs x 2 images; with fewer, add --auto-scale-lr and raise interval as
# configs/README.md says):
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/coco/retinanet_r50_fpn_gfp_flops.py --launcher pytorch
#   python tools/deploy_pruned.py configs/coco/retinanet_r50_fpn_gfp_flops.py \
#       work_dirs/retinanet_r50_fpn_gfp_flops/pruned_flops_0.50.pth \
#       --out-dir work_dirs/retinanet_r50_fpn_gfp_flops/compact
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/coco/retinanet_r50_fpn_gfp_finetune.py --launcher pytorch
# The hook saves pruned_flops_0.75.pth and pruned_flops_0.50.pth (weights and masks) with their
# channel specs (.json) in the work dir as the FLOPs cross 75% and 50%; after the target the run
# trains on with the masks fixed until max_epochs (stopping it once pruned_flops_0.50.pth is
# written loses nothing the fine-tuning needs; if a run ends before, resume it with a larger
# train_cfg.max_epochs).
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)

load_from = 'https://download.openmmlab.com/mmdetection/v2.0/retinanet/retinanet_r50_fpn_1x_coco/retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth'  # noqa: E501

# The paper prunes the stem and the first stage too, so nothing stays frozen; the ImageNet
# initialisation is skipped because load_from replaces every weight.
model = dict(backbone=dict(frozen_stages=-1, init_cfg=None))

custom_hooks = [
    dict(
        type='FisherPruningHook',
        interval=10,
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

# A constant, low learning rate while pruning (the base config's is 0.01).
optim_wrapper = dict(optimizer=dict(lr=0.002))
param_scheduler = []
train_cfg = dict(max_epochs=3)
