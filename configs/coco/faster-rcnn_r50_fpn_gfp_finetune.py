# Fine-tuning of the compact Faster R-CNN-R50-FPN that Group Fisher Pruning left
# (faster-rcnn_r50_fpn_gfp_acts.py), with MMDetection's own COCO schedule. The model is mmdet's
# FasterRCNN with the pruned layer widths: GFPCompactModel builds the base config's model and
# slices it to the channel spec that tools/deploy_pruned.py wrote, and load_from is the compact
# checkpoint written next to it.
#
# First prune and deploy:
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/coco/faster-rcnn_r50_fpn_gfp_acts.py --launcher pytorch
#   python tools/deploy_pruned.py configs/coco/faster-rcnn_r50_fpn_gfp_acts.py \
#       work_dirs/faster-rcnn_r50_fpn_gfp_acts/pruned_flops_0.50.pth \
#       --out-dir work_dirs/faster-rcnn_r50_fpn_gfp_acts/compact
# then fine-tune and test:
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/coco/faster-rcnn_r50_fpn_gfp_finetune.py --launcher pytorch
#   python tools/test.py configs/coco/faster-rcnn_r50_fpn_gfp_finetune.py \
#       work_dirs/faster-rcnn_r50_fpn_gfp_finetune/epoch_12.pth
# For the delta='flops' result, write gfp_flops for gfp_acts in the two paths below.
#
# Schedule: the paper's RetinaNet was fine-tuned for the 1x schedule at lr 0.01 with the whole
# backbone trainable; that is the base config's schedule (12 epochs, 8 GPUs x 2 images, lr 0.02,
# steps at epochs 8 and 11), kept as is. Not run here (no GPU, no COCO).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)

model = dict(
    type='GFPCompactModel',
    gfp_architecture='mmdet.FasterRCNN',
    gfp_channel_spec='work_dirs/faster-rcnn_r50_fpn_gfp_acts/compact/channels.json',
    backbone=dict(frozen_stages=-1, init_cfg=None))  # weights: load_from
load_from = 'work_dirs/faster-rcnn_r50_fpn_gfp_acts/compact/compact.pth'
