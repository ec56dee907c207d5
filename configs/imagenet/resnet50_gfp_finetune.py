# Fine-tuning of the compact ResNet-50 that Group Fisher Pruning left (resnet50_gfp_acts.py),
# with MMPretrain's own ImageNet schedule. The model is mmpretrain's ImageClassifier with the
# pruned layer widths: GFPCompactModel builds the base config's model and slices it to the
# channel spec that tools/deploy_pruned.py wrote, and load_from is the compact checkpoint written
# next to it.
#
# First prune and deploy:
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/imagenet/resnet50_gfp_acts.py --launcher pytorch
#   python tools/deploy_pruned.py configs/imagenet/resnet50_gfp_acts.py \
#       work_dirs/resnet50_gfp_acts/pruned_flops_0.50.pth \
#       --out-dir work_dirs/resnet50_gfp_acts/compact
# then fine-tune and test:
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/imagenet/resnet50_gfp_finetune.py --launcher pytorch
#   python tools/test.py configs/imagenet/resnet50_gfp_finetune.py \
#       work_dirs/resnet50_gfp_finetune/epoch_100.pth
# For the delta='flops' result, write gfp_flops for gfp_acts in the two paths below.
#
# Schedule: the base config's full one (100 epochs, SGD lr 0.1, steps at 30/60/90; 8 GPUs x 32
# images), kept as is. We found no ImageNet fine-tuning schedule in the paper to check against,
# so this is a suggestion (a shorter one may do); not run here (no GPU, no ImageNet).
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)

model = dict(
    type='GFPCompactModel',
    gfp_architecture='mmpretrain.ImageClassifier',
    gfp_channel_spec='work_dirs/resnet50_gfp_acts/compact/channels.json')
load_from = 'work_dirs/resnet50_gfp_acts/compact/compact.pth'
