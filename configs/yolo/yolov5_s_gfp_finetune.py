# Fine-tuning of the compact YOLOv5-s that Group Fisher Pruning left (yolov5_s_gfp_acts.py), with
# MMYOLO's own COCO recipe. The model is MMYOLO's YOLODetector with the pruned layer widths:
# GFPCompactModel builds the base config's model and slices it to the channel spec that
# tools/deploy_pruned.py wrote, and load_from is the compact checkpoint written next to it.
#
# First prune and deploy (yolov5_s_gfp_acts.py), then fine-tune and test:
#   torchrun --nproc_per_node 8 tools/train.py configs/yolo/yolov5_s_gfp_finetune.py \
#       --launcher pytorch
#   python tools/test.py configs/yolo/yolov5_s_gfp_finetune.py \
#       work_dirs/yolov5_s_gfp_finetune/epoch_N.pth
#
# Schedule: the base config's, kept as is (its warm-up starts from the compact weights; shorten
# train_cfg.max_epochs and the param_scheduler hook's max_epochs together for a shorter run).
# Not run here (no GPU, no COCO).
_base_ = 'mmyolo::yolov5/yolov5_s-v61_syncbn_fast_8xb16-300e_coco.py'
custom_imports = dict(imports=['mmgfp', 'mmgfp.yolo'], allow_failed_imports=False)

model = dict(
    type='GFPCompactModel',
    gfp_architecture='mmyolo.YOLODetector',
    gfp_channel_spec='work_dirs/yolov5_s_gfp_acts/compact/channels.json')
load_from = 'work_dirs/yolov5_s_gfp_acts/compact/compact.pth'
