# Digits keypoint set: five stroke keypoints (top, bottom, left, right, centre) on every
# handwritten digit of cluttered 96x96 canvases, one "person" per digit, COCO keypoint format.
# Generated on first use into `data_root` by `DigitsPoseDataset` (mmgfp/datasets/digits_pose.py);
# nothing is downloaded. Top-down: each digit's ground-truth box is cropped to the model's input
# size. The metric is mmpose's COCO keypoint AP (OKS with the sigmas of DIGITS_POSE_METAINFO).
# The pipelines need the model's codec, so a model config sets them (as mmpose's configs do):
#   train_dataloader = dict(dataset=dict(pipeline=train_pipeline)), and the same for val.
dataset_type = 'DigitsPoseDataset'
data_mode = 'topdown'
data_root = 'data/digits_pose/'

# Loading a 96x96 PNG takes well under a millisecond: on 2 CPU cores worker processes only
# compete with the model for the cores, so the main process loads the data (num_workers=0).
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_mode=data_mode,
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/')))
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False, round_up=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_mode=data_mode,
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        test_mode=True))
test_dataloader = val_dataloader

val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator
