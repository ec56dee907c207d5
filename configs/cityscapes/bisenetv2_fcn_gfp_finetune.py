# Fine-tuning of the compact BiSeNetV2 that Group Fisher Pruning left
# (bisenetv2_fcn_gfp_acts.py), with MMSegmentation's own Cityscapes schedule. The model is
# mmseg's BiSeNetV2 (with its auxiliary heads) at the pruned layer widths: GFPCompactModel builds
# the base config's model and slices it to the channel spec that tools/deploy_pruned.py wrote,
# and load_from is the compact checkpoint written next to it.
#
# First prune and deploy (see bisenetv2_fcn_gfp_acts.py), then fine-tune and test:
#   torchrun --nproc_per_node 4 tools/train.py configs/cityscapes/bisenetv2_fcn_gfp_finetune.py \
#       --launcher pytorch
#   python tools/test.py configs/cityscapes/bisenetv2_fcn_gfp_finetune.py \
#       work_dirs/bisenetv2_fcn_gfp_finetune/iter_160000.pth
# Schedule: the base config's (160k iterations, 4 GPUs x 4 crops, SGD lr 0.05, poly decay),
# kept as is. Not run here (no GPU, no Cityscapes).
_base_ = 'mmseg::bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)

model = dict(
    type='GFPCompactModel',
    gfp_architecture='mmseg.EncoderDecoder',
    gfp_channel_spec='work_dirs/bisenetv2_fcn_gfp_acts/compact/channels.json')
load_from = 'work_dirs/bisenetv2_fcn_gfp_acts/compact/compact.pth'
