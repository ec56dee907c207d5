# Group Fisher Pruning of MMSegmentation's BiSeNetV2 (Cityscapes, 1024x1024 crops) to 50% of its
# FLOPs: a real-time segmentor people can start from. delta='acts': importance per unit of
# activation memory freed (the paper's default). Everything but the GFP lines below is
# mmseg::bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py as MMSegmentation ships it.
#
# Schedule: the recipe MMPose ships for RTMPose-s (projects/rtmpose/rtmpose/pruning: interval
# 10, the base learning rate x0.1 held constant while pruning, normalization 'act' = our
# delta='acts'), on BiSeNetV2's own data, batch (4 GPUs x 4 crops) and optimizer; one unit of 8
# channels (divisor=8) per step. 20k iterations (1/8 of the base schedule) leave room for
# 2,000 selections; the gfp_flops scalar in the log shows the progress. Not run here (no GPU, no
# Cityscapes): a suggestion, not a measurement.
#
# Grouping (tools/analyze_groups.py on this config): the detail and semantic branches, the
# guided aggregation layer and the decode head are coupled groups; the four auxiliary heads
# (they only add losses in training) read the semantic branch's stages, so their input
# channels are pruned with those stages and their hidden channels are groups of their own. The
# deployed config keeps them (their weights sliced): fine-tuning trains with them as the base
# config does, and they are not run at test time.
#
# Commands (4 GPUs):
#   torchrun --nproc_per_node 4 tools/train.py configs/cityscapes/bisenetv2_fcn_gfp_acts.py \
#       --launcher pytorch
#   python tools/deploy_pruned.py configs/cityscapes/bisenetv2_fcn_gfp_acts.py \
#       work_dirs/bisenetv2_fcn_gfp_acts/pruned_flops_0.50.pth \
#       --out-dir work_dirs/bisenetv2_fcn_gfp_acts/compact
#   torchrun --nproc_per_node 4 tools/train.py configs/cityscapes/bisenetv2_fcn_gfp_finetune.py \
#       --launcher pytorch
_base_ = 'mmseg::bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)

load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/bisenetv2/bisenetv2_fcn_4x4_1024x1024_160k_cityscapes/bisenetv2_fcn_4x4_1024x1024_160k_cityscapes_20210902_015551-bcf10f09.pth'  # noqa: E501

custom_hooks = [
    dict(
        type='FisherPruningHook',
        interval=10,
        delta='acts',
        target=0.5,
        target_metric='flops',
        channels_per_step=1,
        divisor=8,  # widths stay multiples of 8 (fast GPU kernels; see configs/coco)
        save_thresholds=(0.75, 0.5)),
]

# A constant learning rate of 0.1x the base (0.05) while pruning.
optim_wrapper = dict(optimizer=dict(lr=0.005))
param_scheduler = []
train_cfg = dict(max_iters=20000)
