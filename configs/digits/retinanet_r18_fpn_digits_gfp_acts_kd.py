# retinanet_r18_fpn_digits_gfp_acts.py with distillation from the unpruned model: the teacher is
# the baseline checkpoint as loaded (frozen), and the student's loss gains channel-wise
# distillation of the five FPN outputs (pruned channels left out) while pruning and while
# fine-tuning with the masks fixed. Logged as loss_distill_cwd_neck; checkpoints store the
# teacher (key 'mmgfp_teacher'), so resume and a fine-tuning run that loads them distil from
# the same model. See docs/en/user_guides/distillation.md.
#   python tools/train.py configs/digits/retinanet_r18_fpn_digits.py
#   python tools/train.py configs/digits/retinanet_r18_fpn_digits_gfp_acts_kd.py
_base_ = './retinanet_r18_fpn_digits_gfp_acts.py'

custom_hooks = [
    dict(
        type='FisherPruningHook',
        interval=5,
        delta='acts',
        target=0.5,
        target_metric='flops',
        channels_per_step=32,
        divisor=1,
        save_thresholds=(0.75, 0.5)),
    dict(type='GFPDistillHook', losses=[dict(module='neck', type='cwd', weight=1.0, tau=1.0)]),
]
