# Digits segmentation set: scikit-learn's handwritten digits drawn on cluttered 64x64 canvases,
# with a label map per canvas (0 background, 1 + d for digit d). The data is generated on first
# use into `data_root` (relative to the working directory) by `DigitsSegDataset` (see
# mmgfp/datasets/digits_seg.py); nothing is downloaded. Needs `import mmgfp.datasets` (configs
# load it through `custom_imports`).
dataset_type = 'DigitsSegDataset'
data_root = 'data/digits_seg/'
crop_size = (64, 64)  # (H, W): the canvases, whole

# Digits are not mirror-symmetric, so there is no RandomFlip.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]

# Loading a 64x64 PNG takes well under a millisecond: on 2 CPU cores worker processes only
# compete with the model for the cores, so the main process loads the data (num_workers=0).
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split='train',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split='val',
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
