"""The float64 rerun of check_model: rounding a model amplifies passes, a wrong model does not.

A toy whose output is ``sin(GAIN * conv(...))`` turns the ~1e-7 float32 rounding difference
between a masked model and its compact copy into ~1e-2; in float64 the same rounding is ~1e-11.
A compact model with a kept channel's weight zeroed differs by O(1) in both precisions. The
same both ways on a real family that amplifies rounding (ViG-tiny: k-NN graphs from features).
"""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

import mmgfp  # noqa: F401
from mmgfp.apis.checking.check import (check_model, random_masks, randomize_norms, replayed_diff,
                                       verdict)
from mmgfp.apis.checking.precision import equivalence, float64_mode
from mmgfp.apis.checking.replay import Decisions
from mmgfp.core import FisherPruner, apply_spec, build_groups, make_spec

GAIN = 1e5
TOL = 1e-4


class Sensitive(nn.Module):
    """conv-BN-ReLU -> 3x3 conv -> sin(GAIN * x): a float32 rounding of 1e-7 becomes 1e-2
    (32 channels and a 3x3 kernel: the compact conv sums its products in another order)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.b = nn.Conv2d(32, 4, 3, padding=1)

    def forward(self, x):
        return torch.sin(GAIN * self.b(self.a(x)))


def _pair(wrong: bool = False):
    """A masked toy (half of ``a``'s channels), its compact copy and the float32 difference."""
    torch.manual_seed(0)
    model = Sensitive()
    x = torch.randn(2, 3, 8, 8)
    gs = build_groups(model, lambda m: m(x))
    assert [g.key for g in gs.prunable] and len(gs.prunable) == 1
    randomize_norms(model)
    model.eval()
    pruner = FisherPruner(model, gs)
    random_masks(pruner, 0.5, 0)
    pruner.masker.attach()
    reference = Decisions(model)
    with torch.no_grad(), reference.active():
        reference.outputs = model(x)
    pruner.masker.detach()
    masked = copy.deepcopy(model)
    apply_spec(model, make_spec(pruner.masker))
    assert model.b.in_channels == masked.b.in_channels // 2
    if wrong:
        with torch.no_grad():
            model.b.weight[:, 0] = 0  # a kept channel lost in the compact model

    def run(m):
        return m(x)

    pair = {'masked': masked, 'groups': gs, 'masks': pruner.masker.state_dict(),
            'rebuilt': model, 'data': None}
    return pair, replayed_diff(model, run, reference), run


def test_amplified_rounding_fails_in_float32_and_passes_in_float64():
    pair, diff32, run = _pair()
    assert diff32 > TOL  # the float32 check alone would call this right model broken
    got = verdict(pair, diff32, TOL, run)
    assert got['equivalent']
    assert got['max_rel_diff'] == diff32
    assert got['max_rel_diff_float64'] < 1e-9
    assert got['verdict'].startswith(f'float32 {diff32:.1e} (rounding amplified), float64 ')
    assert got['verdict'].endswith(': EQUIVALENT')
    assert torch.get_default_dtype() == torch.float32  # restored
    assert next(pair['rebuilt'].parameters()).dtype == torch.float32  # copies were cast


def test_wrong_kept_channel_fails_in_both_precisions():
    pair, diff32, run = _pair(wrong=True)
    got = verdict(pair, diff32, TOL, run)
    assert not got['equivalent']
    assert diff32 > 0.1 and got['max_rel_diff_float64'] > 0.1
    assert got['verdict'].endswith(': NOT EQUIVALENT')
    assert 'rounding amplified' not in got['verdict']


def test_float64_that_cannot_run_is_said_not_raised():

    def rerun():
        raise RuntimeError('no double kernel for some_op')

    got = equivalence(2e-3, TOL, rerun)
    assert not got['equivalent'] and got['max_rel_diff_float64'] is None
    assert 'float64 could not run: RuntimeError: no double kernel for some_op' in got['verdict']
    within = equivalence(3e-7, TOL, rerun)  # within the tolerance: float64 is not needed
    assert within['equivalent'] and within['verdict'] == 'float32 3.0e-07: EQUIVALENT'


def test_mmcv_op_without_a_float64_kernel_runs_on_float32():
    from mmcv.ops import nms
    from mmcv.ops.nms import NMSop
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]],
                         dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    with pytest.raises(RuntimeError, match='Float'):
        nms(boxes, scores, 0.5)  # mmcv 2.1's CPU NMS has no float64 kernel
    with float64_mode() as used:
        dets, keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [0, 2] and dets.dtype == torch.float64
    assert used == ['NMSop'] and 'apply' not in vars(NMSop)


CFG = dict(
    default_scope='mmpretrain',
    model=dict(type='ImageClassifier', backbone=dict(type='ResNet', depth=18),
               neck=dict(type='GlobalAveragePooling'),
               head=dict(type='LinearClsHead', num_classes=10, in_channels=512,
                         loss=dict(type='CrossEntropyLoss'))))


def test_check_model_reruns_a_real_model_in_float64():
    # a tolerance below float32 rounding forces the float64 rerun through the whole path
    # (preprocessor, masks on a float64 copy, rebuilt compact model)
    rep = check_model(Config(CFG), ratio=0.5, input_size=(32, 32), tol=1e-12)
    assert 1e-12 < rep['max_rel_diff'] < 1e-4
    assert rep['max_rel_diff_float64'] < 1e-12 and rep['equivalent']
    assert 'rounding amplified' in rep['verdict']


def test_vig_passes_via_float64_and_a_wrong_channel_in_it_does_not():
    # ViG builds k-NN graphs from features: float32 rounding of the compact model flips
    # neighbours (~1e-4 at 224x224); in float64 masked and compact agree to ~1e-15
    from mmgfp.apis.checking.check import compact_pair, compare, load_config
    pair = compact_pair(load_config('mmpretrain::vig/vig-tiny_8xb128_in1k.py'), 0.5, 0)
    diff = compare(pair['rebuilt'], pair['data'], pair['reference'])
    right = verdict(pair, diff, 1e-6)
    assert diff > 1e-6 and right['equivalent'] and right['max_rel_diff_float64'] < 1e-12
    layer = pair['rebuilt'].backbone.blocks[1][1].fc2[0]  # an FFN's second conv
    with torch.no_grad():
        layer.weight[:, 0] = 0
    wrong = verdict(pair, compare(pair['rebuilt'], pair['data'], pair['reference']), 1e-6)
    assert not wrong['equivalent'] and wrong['max_rel_diff_float64'] > 1e-4
