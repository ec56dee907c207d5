"""A view to another tensor's shape fixes the channel count to that tensor's.

MMSeg's DPT head reads ``feature_shape = x.shape`` of a ViT feature map, projects its tokens with
a linear layer and reshapes the projection back with ``reshape(feature_shape)``: grouped apart,
the projection was pruned alone and the compact model's reshape failed.
"""
import pytest
import torch
import torch.nn as nn

from core_toys import fwd, inputs, masked_and_compact, outputs, random_masks, randomize
from mmgfp.core import ChannelMasker, build_groups


class Readout(nn.Module):
    """``proj`` maps the tokens of ``a``'s output and is reshaped to ``a``'s output shape (or,
    with ``other``, to the shape of a tensor whose channel axis is last)."""

    def __init__(self, how: str = 'size'):
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Linear(8, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.a(x)
        shape = x.shape
        t = self.proj(x.flatten(2).permute(0, 2, 1)).permute(0, 2, 1)
        if self.how == 'size':
            y = t.reshape(shape)
        elif self.how == 'view_as':
            y = t.view_as(x)
        else:  # a shape read from a channels-last tensor: (N, H, C, W) here
            y = t.reshape(x.permute(0, 2, 1, 3).shape).permute(0, 2, 1, 3).reshape(shape)
        return self.out(y + x)


@pytest.mark.parametrize('how', ['size', 'view_as'])
def test_view_to_another_tensors_shape_couples_the_channels(how):
    model, x = randomize(Readout(how)), inputs()
    gs = build_groups(model, fwd(x))
    assert gs.producers['proj'] == gs.producers['a'] == 'a'
    assert gs.groups['a'].prunable
    masker = ChannelMasker(model, gs)
    random_masks(masker, seed=0)
    assert not masker.keep['a'].all()
    ref, compact, _ = masked_and_compact(model, x, masker)
    with torch.no_grad():
        out = outputs(compact(x))
    assert torch.allclose(out[0], ref[0], atol=1e-5)


def test_a_shape_whose_channel_axis_is_elsewhere_keeps_the_channels_whole():
    gs = build_groups(randomize(Readout('other')), fwd(inputs()))
    proj = gs.groups[gs.producers['proj']]
    assert not proj.prunable
    assert any("to the shape of another tensor fixes the channel count to 8" in r
               for r in proj.reasons)
