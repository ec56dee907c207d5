"""Distillation losses: zero at the teacher, pruned channels out of CWD, producer lookup."""
import pytest
import torch
import torch.nn as nn

from mmgfp.core.distill import cwd, kl_logits, producer_group


def test_losses_are_zero_at_the_teacher_and_positive_elsewhere():
    t = torch.randn(2, 5, 4, 4)
    assert float(cwd(t, t)) == pytest.approx(0, abs=1e-6)
    assert float(kl_logits(t, t, tau=2.0)) == pytest.approx(0, abs=1e-6)
    s = t + torch.randn_like(t)
    assert float(cwd(s, t)) > 0 and float(kl_logits(s, t)) > 0
    logits = torch.randn(3, 10)
    ref = torch.nn.functional.kl_div(torch.log_softmax(logits / 2, 1),
                                     torch.softmax(logits.flip(0) / 2, 1),
                                     reduction='batchmean') * 4
    assert float(kl_logits(logits, logits.flip(0), tau=2.0)) == pytest.approx(float(ref),
                                                                               rel=1e-5)


def test_cwd_leaves_pruned_channels_out_and_keeps_the_others_weight():
    t = torch.randn(2, 4, 3, 3)
    s = t.clone()
    s[:, 1] = torch.randn(2, 3, 3) * 10  # a pruned channel: whatever the student holds there
    s[:, 2] += torch.randn(2, 3, 3)
    keep = torch.tensor([True, False, True, True])
    only_2 = cwd(s[:, 2:3], t[:, 2:3]) / 4  # channel 2's term, normalised by all 4 channels
    assert float(cwd(s, t, keep=keep)) == pytest.approx(float(only_2), rel=1e-5)
    assert float(cwd(s, t)) > float(cwd(s, t, keep=keep))
    with pytest.raises(ValueError, match='differ'):
        cwd(s[:, :3], t)


def test_producer_group_walks_through_norm_and_activation():
    conv, bn = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6)
    x = torch.randn(2, 3, 4, 4)
    producers = {id(conv.weight): 'g', id(conv.bias): 'g'}
    assert producer_group(torch.relu(bn(conv(x))), producers) == 'g'
    assert producer_group(torch.cat([conv(x), conv(x)], 1), producers) is None
    with torch.no_grad():
        assert producer_group(conv(x), producers) is None
