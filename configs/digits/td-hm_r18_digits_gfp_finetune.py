# Fine-tune a pruned top-down heatmap pose model (td-hm_r18_digits_gfp_acts.py) with its channel
# masks fixed (no further pruning).
#
# Checkpoint convention: loads the checkpoint that td-hm_r18_digits_gfp_acts.py saves when the
# model crosses 50% of its FLOPs (weights and masks), relative to the repository root. In order:
#   python tools/train.py configs/digits/td-hm_r18_digits.py
#   python tools/train.py configs/digits/td-hm_r18_digits_gfp_acts.py
#   python tools/train.py configs/digits/td-hm_r18_digits_gfp_finetune.py
# For a physically smaller model, run tools/deploy_pruned.py on this run's final checkpoint
# (work_dirs/td-hm_r18_digits_gfp_finetune/epoch_8.pth): it carries the same masks.
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
default_scope = 'mmpose'

_base_ = './td-hm_r18_digits.py'

load_from = 'work_dirs/td-hm_r18_digits_gfp_acts/pruned_flops_0.50.pth'

custom_hooks = [
    dict(
        type='FisherPruningHook',
        prune=False,
        init_spec='work_dirs/td-hm_r18_digits_gfp_acts/pruned_flops_0.50.json'),
]

# The baseline's schedule at a quarter of its learning rate.
optim_wrapper = dict(optimizer=dict(lr=1e-3))
