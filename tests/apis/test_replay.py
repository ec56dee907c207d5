"""Decisions taken once by the reference and replayed: equal models agree, wrong ones do not.

A toy two-stage model (no mmdet)::

    x -> backbone (conv) -> rpn_head (conv -> scores) -> predict: top-k positions (a decision)
                     \\-> features at the chosen positions -> head (linear) -> output

Two equal models whose scores differ by rounding can pick other positions; replaying the
reference's choice makes them agree, while a wrong layer before or after the decision is still
seen.
"""
import pytest
import torch
import torch.nn as nn

from mmgfp.apis.checking.check import rel_diff
from mmgfp.apis.checking.replay import Decisions, find_points


class RPN(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.conv(x)

    def predict(self, x, k=1):
        scores = self(x).flatten(1)
        return scores.topk(k, dim=1).indices


class TwoStage(nn.Module):

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 1)
        self.rpn_head = RPN()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        feat = self.backbone(x)
        idx = self.rpn_head.predict(feat)
        picked = torch.gather(feat.flatten(2), 2, idx[:, None].expand(-1, feat.shape[1], -1))
        return self.head(picked.transpose(1, 2))


def _pair():
    torch.manual_seed(0)
    ref = TwoStage().double()  # rounding far below the nudges below
    other = TwoStage().double()
    other.load_state_dict(ref.state_dict())
    return ref, other


def _run(model, x, recorded=None):
    dec = Decisions(model, recorded)
    with torch.no_grad(), dec.active():
        dec.outputs = model(x)
    return dec


def _diff(a, b):
    return rel_diff({'o': b.outputs, 't': b.taps}, {'o': a.outputs, 't': a.taps})


def _tied(ref, other):
    """An input whose two positions score the same in ``ref`` (their features differ only
    along a direction the score ignores), and ``other`` nudged by 1e-9 to pick the other one."""
    w = ref.rpn_head.conv.weight.detach().view(4)
    conv = ref.backbone.weight.detach().view(4, 3)
    v = torch.linalg.cross(w @ conv, torch.tensor([1., 0., 0.], dtype=torch.float64))  # the score ignores v
    x = torch.randn(1, 3, 1, 2, dtype=torch.float64)
    x[0, :, 0, 1] = x[0, :, 0, 0] + 3 * v / v.norm()
    d = conv @ (x[0, :, 0, 1] - x[0, :, 0, 0])
    with torch.no_grad():
        picked = ref.rpn_head.predict(ref.backbone(x)).item()
        sign = 1.0 if picked == 0 else -1.0  # make the other position win in ``other``
        other.rpn_head.conv.weight.add_((1e-9 * w.norm() * sign * d / d.norm()).view(1, 4, 1, 1))
    return x


def test_points_found_and_patches_removed():
    ref, _ = _pair()
    assert [(n, m) for n, _, m, _ in find_points(ref)] == [('rpn_head', 'predict')]
    ref_dec = _run(ref, torch.randn(1, 3, 4, 4, dtype=torch.float64))
    assert ref_dec.counts() == {'rpn_head.predict': 1}
    assert 'predict' not in vars(ref.rpn_head)
    assert not ref.rpn_head._forward_hooks


def test_replay_makes_a_flipped_decision_agree():
    ref, other = _pair()
    x = _tied(ref, other)
    ref_dec = _run(ref, x)
    free = _run(other, x)
    assert not torch.equal(free.calls['rpn_head.predict'][0],
                           ref_dec.calls['rpn_head.predict'][0])
    assert _diff(ref_dec, free) > 1e-2  # compared freely, nearly equal models look different
    assert _diff(ref_dec, _run(other, x, ref_dec)) < 1e-4


@pytest.mark.parametrize('layer', ['head', 'rpn_head.conv', 'backbone'])
def test_replay_still_sees_a_wrong_layer(layer):
    ref, other = _pair()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        w = dict(other.named_modules())[layer].weight
        w[:, 0] = 0  # a wrong input channel
    ref_dec = _run(ref, x)
    assert _diff(ref_dec, _run(other, x, ref_dec)) > 1e-3


def test_replay_refuses_another_path():
    ref, other = _pair()
    ref_dec = _run(ref, torch.randn(1, 3, 4, 4, dtype=torch.float64))
    dec = Decisions(other, ref_dec)
    with pytest.raises(RuntimeError, match='called more often than in the reference'):
        with torch.no_grad(), dec.active():
            other(torch.randn(1, 3, 4, 4, dtype=torch.float64))
            other(torch.randn(1, 3, 4, 4, dtype=torch.float64))
