"""A Linear consumer masked on its input reads channels from the last axis, whatever the rank of
the call (DAB-DETR's MLPs see (N, Q, C) while tracing and (L, N, Q, C) elsewhere).

    x (N, T, 6) -> fc1 (6->8) -> relu -> fc2 (8->3)
"""
import torch
import torch.nn as nn

from mmgfp.core import ChannelMasker, build_groups


class MLP(nn.Module):

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())


def test_linear_input_mask_on_a_call_of_other_rank():
    torch.manual_seed(0)
    model = MLP()
    gs = build_groups(model, lambda m: m(torch.randn(2, 5, 6)))
    masker = ChannelMasker(model, gs, mask_on='input')
    keep = torch.ones(8, dtype=torch.bool)
    keep[[1, 4]] = False
    masker.set_keep('fc1', keep)
    masker.attach()
    x = torch.randn(4, 2, 5, 6)  # one more leading axis than traced
    with torch.no_grad():
        out = model(x)
        ref = model.fc2.weight[:, keep] @ model.fc1(x).relu()[..., keep].unsqueeze(-1)
    masker.detach()
    torch.testing.assert_close(out, ref.squeeze(-1) + model.fc2.bias)
