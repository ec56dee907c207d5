"""Channels returned by the output pass are kept whole when the groups come from a loss pass.

MMPose's RTMO returns its pose features raw in ``mode='tensor'``, while its loss pass feeds
them to a linear layer: grouped on the loss pass alone, those channels were pruned and the
compact model's output lost half of its channels.
"""
import torch
import torch.nn as nn

from core_toys import cbr, fwd, inputs, masked_and_compact, outputs, random_masks, randomize
from mmgfp.core import ChannelMasker, build_groups
from mmgfp.core.grouping import OUTPUT_REASON


class RawFeatures(nn.Module):
    """Features ``feat`` read by ``fc`` in the loss pass and returned raw by inference; ``mid``
    reaches the outputs only through the ``cls`` conv."""

    def __init__(self):
        super().__init__()
        self.feat = cbr(3, 8)
        self.mid = cbr(8, 6)
        self.cls = nn.Conv2d(6, 2, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x, loss=False):
        f = self.feat(x)
        scores = self.cls(self.mid(f))
        if loss:
            return scores.mean() + self.fc(f.mean((2, 3))).sum()
        return scores, f


def _loss(x):
    return lambda m: m(x, loss=True)


def test_loss_pass_alone_prunes_returned_channels():
    """What the output pass guards against: the loss pass finds ``feat`` prunable."""
    gs = build_groups(randomize(RawFeatures()), _loss(inputs()))
    assert gs.groups['feat.0'].prunable and gs.groups['mid.0'].prunable


def test_output_pass_keeps_returned_channels_whole():
    model, x = randomize(RawFeatures()), inputs()
    gs = build_groups(model, _loss(x), output_fn=fwd(x))
    feat = gs.groups['feat.0']
    assert not feat.prunable and feat.reasons == [OUTPUT_REASON]
    assert gs.groups['mid.0'].prunable  # reduced by `cls` before it is returned
    assert [g.key for g in gs.prunable] == ['mid.0']

    masker = ChannelMasker(model, gs)
    random_masks(masker, seed=0)
    assert not masker.keep['mid.0'].all()
    ref, compact, _ = masked_and_compact(model, x, masker)
    with torch.no_grad():
        out = outputs(compact(x))
    assert [o.shape for o in out] == [r.shape for r in ref]
    assert all(torch.allclose(o, r, atol=1e-5) for o, r in zip(out, ref))
