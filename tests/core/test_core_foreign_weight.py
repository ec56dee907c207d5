"""A layer's weight read outside its own call (a head that divides by the norm of its weight,
as MMPretrain's CSRA head does) must keep that layer's channels: slicing them changes the value.

    x -> a (conv 3->8) -> head (conv 8->4) -> / ||head.weight||_(in channels) -> out
"""
import torch
import torch.nn as nn

from mmgfp.core import build_groups


class NormedHead(nn.Module):

    def __init__(self, use_norm=True):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1, bias=False)
        self.use_norm = use_norm

    def forward(self, x):
        y = self.head(self.mid(self.a(x)).relu())
        if self.use_norm:  # a value of the weight over its input channels
            y = y / torch.norm(self.head.weight, dim=1, keepdim=True).transpose(0, 1)
        return y.mean()


def test_weight_read_outside_its_layer_blocks_its_channels():
    gs = build_groups(NormedHead(), lambda m: m(torch.randn(2, 3, 8, 8)))
    assert gs.groups['a'].prunable  # far from the head: untouched
    mid = gs.groups['mid']
    assert not mid.prunable
    assert any("the weight of head is also read by 'norm'" in r for r in mid.reasons)


def test_shape_reads_of_a_weight_do_not_block():
    class ShapeRead(NormedHead):

        def forward(self, x):
            y = self.head(self.mid(self.a(x)).relu())
            return y.mean() * self.head.weight.shape[1] / self.head.weight.size(0)

    gs = build_groups(ShapeRead(), lambda m: m(torch.randn(2, 3, 8, 8)))
    assert gs.groups['mid'].prunable and gs.groups['a'].prunable


def test_type_as_a_traced_tensor_takes_only_its_dtype():
    """``untraced.type_as(traced)`` (mmdet's CenterNet head) couples nothing and must not
    make the tracer's rule fail."""

    class TypeAs(nn.Module):

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.a(x)
            scale = torch.ones(5).type_as(y)
            return self.b(y).sum() * scale.sum()

    gs = build_groups(TypeAs(), lambda m: m(torch.randn(2, 3, 4, 4)))
    assert gs.groups['a'].prunable, gs.groups['a'].reasons
