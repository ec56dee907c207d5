# Digits classification set: scikit-learn's handwritten digits as 32x32 RGB images (1,400
# training / 397 validation, disjoint source digits). Generated on first use into `data_root`
# by `DigitsClsDataset` (see mmgfp/datasets/digits.py); nothing is downloaded. Needs
# `import mmgfp.datasets` (configs load it through `custom_imports`).
dataset_type = 'DigitsClsDataset'
data_root = 'data/digits_cls/'

data_preprocessor = dict(
    num_classes=10,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

# Digits are not mirror-symmetric: no RandomFlip. A padded random crop jitters the position.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomCrop', crop_size=32, padding=2, padding_mode='edge'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]

# Decoding a 32x32 PNG is trivial: worker processes would only compete with the model for the
# two CPU cores, so the main process loads the data.
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split='train',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split='val',
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
