# Fine-tuning of the compact RTMPose-s that Group Fisher Pruning left
# (rtmpose-s_coco-256x192_gfp_acts.py), as MMPose's MMRazor recipe does it
# (group_fisher_finetune_rtmpose-s_8xb256-420e_coco-256x192.py): the base config's schedule at
# its own learning rate (finetune_lr=4e-3), without the pruning hook. The model is mmpose's
# TopdownPoseEstimator with the pruned widths: GFPCompactModel builds the base config's model
# and slices it to the channel spec that tools/deploy_pruned.py wrote; load_from is the compact
# checkpoint written next to it.
#
# First prune and deploy (see rtmpose-s_coco-256x192_gfp_acts.py), then:
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/coco/rtmpose-s_coco-256x192_gfp_finetune.py --launcher pytorch
#   python tools/test.py configs/coco/rtmpose-s_coco-256x192_gfp_finetune.py \
#       work_dirs/rtmpose-s_coco-256x192_gfp_finetune/epoch_420.pth
# Not run here (no GPU, no COCO).
_base_ = 'mmpose::body_2d_keypoint/rtmpose/coco/rtmpose-s_8xb256-420e_coco-256x192.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)

model = dict(
    type='GFPCompactModel',
    gfp_architecture='mmpose.TopdownPoseEstimator',
    gfp_channel_spec='work_dirs/rtmpose-s_coco-256x192_gfp_acts/compact/channels.json',
    backbone=dict(init_cfg=None))  # weights: load_from
load_from = 'work_dirs/rtmpose-s_coco-256x192_gfp_acts/compact/compact.pth'
