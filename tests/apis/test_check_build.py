"""check_model builds what a config asks for on one CPU process: (MM)SyncBN becomes BN."""
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

import mmgfp  # noqa: F401
from mmgfp.apis.checking.check import check_model

CFG = dict(
    default_scope='mmpretrain',
    model=dict(type='ImageClassifier',
               backbone=dict(type='ResNet', depth=18, norm_cfg=dict(type='MMSyncBN')),
               neck=dict(type='GlobalAveragePooling'),
               head=dict(type='LinearClsHead', num_classes=10, in_channels=512,
                         loss=dict(type='CrossEntropyLoss'))))


def test_syncbn_config_checked_without_a_process_group():
    from mmgfp.apis.checking.check import build_model
    model = build_model(Config(CFG))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    rep = check_model(Config(CFG), ratio=0.5, input_size=(32, 32))
    assert rep['equivalent'] and rep['num_prunable_groups'] > 0


def test_config_whose_base_imports_a_module_loads():
    # mmpretrain 1.2's RepLKNet base config imports build_classifier at its top, which mmengine
    # 0.10 reads as a lazy-import config that a plain child may not inherit
    from mmgfp.apis.checking.check import load_config
    cfg = load_config('mmpretrain::replknet/replknet-31B_32xb64_in1k.py')
    assert cfg.model.backbone.type == 'RepLKNet' and cfg.model.head.in_channels == 1024


def test_rel_diff_does_not_drop_nan_or_infinities():
    # max() over a structure keeps its first value when a later one is NaN: a compact model
    # that puts NaN or inf in its second output used to count as equal
    from mmgfp.apis.checking.check import rel_diff
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


CONVNEXT = dict(
    default_scope='mmpretrain',
    model=dict(type='ImageClassifier', backbone=dict(type='ConvNeXt', arch='atto'),
               head=dict(type='LinearClsHead', num_classes=10, in_channels=320,
                         loss=dict(type='CrossEntropyLoss'))))


def test_layer_scales_of_1e_6_do_not_hide_a_wrong_compact_model():
    # ConvNeXt scales every block by gamma = 1e-6 at init: next to the identity path a block's
    # output vanished in float32, so a compact model with a kept channel zeroed passed (3e-7)
    from mmgfp.apis.checking.check import compact_pair, compare
    pair = compact_pair(Config(CONVNEXT), 0.5, 0, (32, 32))
    assert compare(pair['rebuilt'], pair['data'], pair['reference']) < 1e-5
    block = pair['rebuilt'].backbone.stages[1][0]
    with torch.no_grad():
        block.pointwise_conv2.weight[:, 0] = 0  # a kept hidden channel lost
    assert compare(pair['rebuilt'], pair['data'], pair['reference']) > 1e-4
    assert 0.5 <= float(block.gamma.abs().min()) and float(block.gamma.abs().max()) <= 1.5
