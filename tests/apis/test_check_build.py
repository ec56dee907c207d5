"""check_model builds what a config asks for on one CPU process: (MM)SyncBN becomes BN."""
import pytest
import torch
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


def test_config_whose_base_imports_a_module_loads():
    # mmpretrain 1.2's RepLKNet base config imports build_classifier at its top, which mmengine
    # 0.10 reads as a lazy-import config that a plain child may not inherit
    from mmgfp.apis.check import load_config
    cfg = load_config('mmpretrain::replknet/replknet-31B_32xb64_in1k.py')
    assert cfg.model.backbone.type == 'RepLKNet' and cfg.model.head.in_channels == 1024


def test_rel_diff_does_not_drop_nan_or_infinities():
    # max() over a structure keeps its first value when a later one is NaN: a compact model
    # that puts NaN or inf in its second output used to count as equal
    from mmgfp.apis.check import rel_diff
    one, nan, inf = torch.ones(3), torch.tensor([1., float('nan'), 1.]), torch.tensor(
        [1., float('inf'), 1.])
    assert rel_diff([one, one], [one, one]) == 0.0
    assert rel_diff([one, nan], [one, one]) == float('inf')
    assert rel_diff([one, one], [one, nan]) == float('inf')
    assert rel_diff({'a': one, 'b': inf}, {'a': one, 'b': one}) == float('inf')
    assert rel_diff({'a': one, 'b': one}, {'a': one, 'b': inf}) == float('inf')
    assert rel_diff([one, -inf], [one, inf]) == float('inf')
    # the same infinities in both (DETR-style invalid proposals): the finite rest is compared
    assert rel_diff([one, inf], [one, inf]) == 0.0
    out, ref = torch.tensor([2., float('inf'), 2.]), torch.tensor([1., float('inf'), 2.])
    assert rel_diff([one, out], [one, ref]) == pytest.approx(1 / 5 ** 0.5)  # |(1, 0)| / |(1, 2)|
