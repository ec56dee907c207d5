"""check_model builds what a config asks for on one CPU process: (MM)SyncBN becomes BN."""
import torch.nn as nn
from mmengine.config import Config

import mmgfp  # noqa: F401
from mmgfp.apis.check import check_model

CFG = dict(
    default_scope='mmpretrain',
    model=dict(type='ImageClassifier',
               backbone=dict(type='ResNet', depth=18, norm_cfg=dict(type='MMSyncBN')),
               neck=dict(type='GlobalAveragePooling'),
               head=dict(type='LinearClsHead', num_classes=10, in_channels=512,
                         loss=dict(type='CrossEntropyLoss'))))


def test_syncbn_config_checked_without_a_process_group():
    from mmgfp.apis.check import build_model
    model = build_model(Config(CFG))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    rep = check_model(Config(CFG), ratio=0.5, input_size=(32, 32))
    assert rep['equivalent'] and rep['num_prunable_groups'] > 0
