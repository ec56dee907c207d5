# Group Fisher Pruning of MMPose's RTMPose-s (COCO, 256x192) to 51% of its FLOPs, about the size
# of RTMPose-t: the recipe that MMPose ships for MMRazor
# (projects/rtmpose/rtmpose/pruning/group_fisher_prune_rtmpose-s_8xb256-420e_coco-256x192.py in
# github.com/open-mmlab/mmpose), which no longer runs since MMRazor does not import on current
# PyTorch, written for mmgfp's hook. Same settings as that recipe: start from the trained
# RTMPose-s (AIC+COCO pre-trained, 420 epochs), normalise importance by activation memory
# (normalization_type='act' there, delta='acts' here), remove one channel every 10 iterations,
# save the model when the FLOPs cross 51% (target_flop_ratio=0.51, measured at 1x3x256x192),
# train with the base config's schedule at a tenth of its learning rate (lr_ratio=0.1).
# Everything else is mmpose::body_2d_keypoint/rtmpose/coco/rtmpose-s_8xb256-420e_coco-256x192.py
# as MMPose ships it, including its EMA and pipeline-switch hooks.
#
# mmgfp's grouping (python tools/check_model.py CONFIG): 37 groups, 20 prunable. Not prunable:
# the channels of each CSP block's concatenation (CSPNeXt's channel attention multiplies the
# concatenation of two layers by one layer's output, which the tracer does not split), the
# gated attention unit's u/v/base projection (split three ways), its output (ScaleNorm reduces
# over it) and the SimCC classifiers (outputs).
#
# Commands (8 GPUs x 256 images, as the base config):
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/coco/rtmpose-s_coco-256x192_gfp_acts.py --launcher pytorch
#   python tools/deploy_pruned.py configs/coco/rtmpose-s_coco-256x192_gfp_acts.py \
#       work_dirs/rtmpose-s_coco-256x192_gfp_acts/pruned_flops_0.51.pth \
#       --out-dir work_dirs/rtmpose-s_coco-256x192_gfp_acts/compact
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/coco/rtmpose-s_coco-256x192_gfp_finetune.py --launcher pytorch
# Not run here (no GPU, no COCO): MMPose's README reports the MMRazor run of this recipe.
_base_ = 'mmpose::body_2d_keypoint/rtmpose/coco/rtmpose-s_8xb256-420e_coco-256x192.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)

# the checkpoint mmpose's metafile gives for the base config (MMRazor's recipe names the same file)
load_from = 'https://download.openmmlab.com/mmpose/v1/projects/rtmposev1/rtmpose-s_simcc-coco_pt-aic-coco_420e-256x192-8edcf0d7_20230127.pth'  # noqa: E501

# load_from replaces every weight: the backbone's ImageNet initialisation is skipped.
model = dict(backbone=dict(init_cfg=None))

# the base config's EMA and pipeline-switch hooks, then the pruning hook
custom_hooks = _base_.custom_hooks + [
    dict(
        type='FisherPruningHook',
        interval=10,
        delta='acts',
        target=0.51,
        target_metric='flops',
        channels_per_step=1,
        # one channel per step, as MMRazor's GroupFisher; divisor=8 keeps widths multiples
        # of 8, which GPUs run fastest (README, "Latency")
        divisor=1,
        save_thresholds=(0.51, )),
]

# A tenth of the base config's learning rate (4e-3) while pruning.
optim_wrapper = dict(optimizer=dict(lr=4e-4))
