"""Small models the benchmark tests build (one place, so the tests agree on them)."""

# an mmpretrain ResNet-18 classifier with half the widths, 10 classes: a second or two to build
SMALL_CLASSIFIER = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=10, mean=[0.0] * 3,
                           std=[255.0] * 3),
    backbone=dict(type='ResNet', depth=18, stem_channels=32, base_channels=32),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=256,
              loss=dict(type='CrossEntropyLoss')))
