# Group Fisher Pruning of MMYOLO's YOLOv5-s (COCO) to 50% of its FLOPs.
# delta='acts': importance per unit of activation memory freed (the paper's default). Everything
# but the GFP lines below is mmyolo::yolov5/yolov5_s-v61_syncbn_fast_8xb16-300e_coco.py as MMYOLO
# ships it (its EMA is kept).
#
# Schedule: from the trained COCO model (load_from, MMYOLO's model zoo), a constant lr of 0.001
# (the base trains at 0.01, with a warm-up that would restart from a small lr and a large bias
# lr: replaced by a plain ParamSchedulerHook and no schedulers), one unit of 8 channels removed
# every 10 iterations, as configs/coco/*_gfp_acts.py do. Not run here (no GPU, no COCO): these
# numbers are a suggestion, not a measurement.
#
# Grouping (tools/analyze_groups.py): every CSP layer's main, short and final convs, the
# bottleneck convs (residual streams coupled) and the PAFPN's layers are groups; the head's
# output convs (anchors x (5 + classes) channels per level) stay whole.
#
# Commands (8 GPUs x 16 images):
#   torchrun --nproc_per_node 8 tools/train.py configs/yolo/yolov5_s_gfp_acts.py \
#       --launcher pytorch
#   python tools/deploy_pruned.py configs/yolo/yolov5_s_gfp_acts.py \
#       work_dirs/yolov5_s_gfp_acts/pruned_flops_0.50.pth \
#       --out-dir work_dirs/yolov5_s_gfp_acts/compact
#   torchrun --nproc_per_node 8 tools/train.py configs/yolo/yolov5_s_gfp_finetune.py \
#       --launcher pytorch
_base_ = 'mmyolo::yolov5/yolov5_s-v61_syncbn_fast_8xb16-300e_coco.py'
custom_imports = dict(imports=['mmgfp', 'mmgfp.yolo'], allow_failed_imports=False)

load_from = 'https://download.openmmlab.com/mmyolo/v0/yolov5/yolov5_s-v61_syncbn_fast_8xb16-300e_coco/yolov5_s-v61_syncbn_fast_8xb16-300e_coco_20220918_084700-86e02187.pth'  # noqa: E501

custom_hooks = [
    *_base_.custom_hooks,
    dict(
        type='FisherPruningHook',
        interval=10,
        delta='acts',
        target=0.5,
        target_metric='flops',
        channels_per_step=1,
        divisor=8,  # widths stay multiples of 8 (fastest on GPUs; configs/coco explain)
        save_thresholds=(0.75, 0.5)),
]

optim_wrapper = dict(optimizer=dict(lr=0.001))
default_hooks = dict(param_scheduler=dict(_delete_=True, type='ParamSchedulerHook'))
param_scheduler = []
train_cfg = dict(max_epochs=3)
