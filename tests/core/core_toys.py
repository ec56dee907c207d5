"""Toy networks and helpers shared by the tests of ``mmgfp.core``.

Every net takes a ``(N, 3, 8, 8)`` input. ``randomize`` gives every norm layer non-trivial
affine parameters and running statistics, so that masking a channel at its consumers and slicing
it away physically only agree if the surgery is right.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmgfp.core import ChannelMasker, apply_spec, build_groups, make_spec

IN_SHAPE = (3, 8, 8)


def cbr(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU())


class Chain(nn.Module):
    """conv-BN-ReLU x2 and a plain 1x1 conv as the network output."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.b = cbr(8, 12, stride=2)
        self.c = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


class Residual(nn.Module):
    """A basic block with a projection shortcut, a layer-scale parameter and an identity add."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.b1 = cbr(8, 6)
        self.b2 = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.short = nn.Conv2d(8, 8, 1)
        self.scale = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.b2(self.b1(x))
        y = torch.relu(y + self.short(x)) * self.scale + x
        return self.head(y)


class Concat(nn.Module):
    """Two branches concatenated along channels, read by one conv."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 6)
        self.b = cbr(3, 5)
        self.c = cbr(11, 7)
        self.d = nn.Conv2d(7, 4, 1)

    def forward(self, x):
        return self.d(self.c(torch.cat([self.a(x), self.b(x)], 1)))


class DenseCat(nn.Module):
    """Concatenation with the (untraced) network input: only the conv's segment is prunable."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 6)
        self.b = nn.Conv2d(9, 4, 3, padding=1)

    def forward(self, x):
        return self.b(torch.cat([x, self.a(x)], 1))


class DepthWise(nn.Module):
    """conv -> depth-wise conv (stride 2) -> point-wise conv -> grouped conv -> conv."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.dw = cbr(8, 8, stride=2, groups=8)
        self.pw = nn.Sequential(nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12))
        self.g = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=3), nn.BatchNorm2d(12),
                               nn.ReLU())
        self.c = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.c(self.g(self.pw(self.dw(self.a(x)))))


class SharedHead(nn.Module):
    """Two levels with their own laterals and one head conv applied to both."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.l1 = nn.Conv2d(8, 6, 1)
        self.l2 = nn.Conv2d(8, 6, 1)
        self.head = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        f1 = self.a(x)
        f2 = self.down(f1)
        return [self.head(self.l1(f1)), self.head(torch.relu(self.l2(f2)))]


class LinearHead(nn.Module):
    """Linear layers after global pooling and after a flatten of a 4x4 map."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.b = cbr(8, 6, stride=2)
        self.fc1 = nn.Linear(8, 10)
        self.fc2 = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        f = self.a(x)
        g = self.b(f)
        return self.fc1(F.adaptive_avg_pool2d(f, 1).flatten(1)) + self.fc2(torch.flatten(g, 1))


class GroupNormNet(nn.Module):
    """GroupNorm with 2 channels per group, and GroupNorm with a single group (whole width)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, 8)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.gn2 = nn.GroupNorm(1, 6)
        self.c = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.c(self.gn2(self.b(torch.relu(self.gn1(self.a(x))))))


class SqueezeExcite(nn.Module):
    """An SE block: the excitation conv's output is multiplied into the feature's channels."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.se_reduce = nn.Conv2d(8, 4, 1)
        self.se_expand = nn.Conv2d(4, 8, 1)
        self.c = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        f = self.a(x)
        s = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(f.mean((2, 3), keepdim=True)))))
        return self.c(f * s)


class Deconv(nn.Module):
    """A stride-2 transposed conv (4x more outputs than inputs) between two convs."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8, stride=2)
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 6, 2, stride=2), nn.BatchNorm2d(6),
                                nn.ReLU())
        self.c = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.c(self.up(self.a(x)))


class Tokens(nn.Module):
    """Channels moved to the last axis: (N, C, H, W) -> (N, HW, C) -> Linear -> Linear."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        t = self.a(x).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(self.fc1(t)))


class FPN(nn.Module):
    """Two backbone levels, laterals added top-down, per-level output convs, a shared head."""

    def __init__(self):
        super().__init__()
        self.c2 = cbr(3, 8)
        self.c3 = cbr(8, 12, stride=2)
        self.lat2 = nn.Conv2d(8, 6, 1)
        self.lat3 = nn.Conv2d(12, 6, 1)
        self.out2 = nn.Conv2d(6, 6, 3, padding=1)
        self.out3 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Sequential(nn.Conv2d(6, 5, 3, padding=1), nn.GroupNorm(5, 5), nn.ReLU())
        self.cls = nn.Conv2d(5, 3, 1)

    def forward(self, x):
        f2 = self.c2(x)
        f3 = self.c3(f2)
        p3 = self.lat3(f3)
        p2 = self.lat2(f2) + F.interpolate(p3, scale_factor=2, mode='nearest')
        return [self.cls(self.head(self.out2(p2))), self.cls(self.head(self.out3(p3)))]


class SharedParams(nn.Module):
    """Three pairs of otherwise separate maps, each pair linked only by one shared module or
    parameter: a per-channel scale, a PReLU, a BatchNorm."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.scale = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.e, self.f = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
        self.act = nn.PReLU(6, init=0.1)
        self.g, self.h = nn.Conv2d(3, 5, 1), nn.Conv2d(3, 5, 1)
        self.bn = nn.BatchNorm2d(5)
        self.ca, self.cb = nn.Conv2d(8, 2, 1), nn.Conv2d(8, 2, 3, padding=1)
        self.ce, self.cf = nn.Conv2d(6, 2, 1), nn.Conv2d(6, 2, 3, padding=1)
        self.cg, self.ch = nn.Conv2d(5, 2, 1), nn.Conv2d(5, 2, 3, padding=1)

    def forward(self, x):
        return (self.ca(self.a(x) * self.scale) + self.cb(self.b(x) * self.scale) +
                self.ce(self.act(self.e(x))) + self.cf(self.act(self.f(x))) +
                self.cg(self.bn(self.g(x))) + self.ch(self.bn(self.h(x))))


NETS = {
    'chain': Chain,
    'residual': Residual,
    'concat': Concat,
    'densecat': DenseCat,
    'depthwise': DepthWise,
    'shared_head': SharedHead,
    'linear_head': LinearHead,
    'groupnorm': GroupNormNet,
    'se': SqueezeExcite,
    'deconv': Deconv,
    'tokens': Tokens,
    'fpn': FPN,
    'shared_params': SharedParams,
}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm parameters and running statistics; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.numel(), generator=gen) - 0.5)
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                n = m.weight.numel()
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen))
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(n, generator=gen))
                    m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model.eval()


def make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(NETS[name](), seed)


def inputs(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *IN_SHAPE, generator=torch.Generator().manual_seed(1000 + seed))


def fwd(x):
    return lambda m: m(x)


def outputs(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def random_masks(masker: ChannelMasker, seed: int, max_frac: float = 0.75) -> None:
    """Prune a random fraction (at least one unit where possible) of every prunable group."""
    gen = torch.Generator().manual_seed(seed)
    for key, keep in masker.keep.items():
        units = keep.numel()
        if units < 2:
            continue
        most = max(1, min(units - 1, int(round(units * max_frac))))
        k = int(torch.randint(1, most + 1, (1, ), generator=gen))
        drop = torch.randperm(units, generator=gen)[:k]
        new = torch.ones(units, dtype=torch.bool)
        new[drop] = False
        masker.set_keep(key, new)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def masked_and_compact(model: nn.Module, x: torch.Tensor, masker: ChannelMasker):
    """(outputs of the masked model, compact model, spec) for the masker's current masks."""
    masker.attach()
    try:
        with torch.no_grad():
            ref = outputs(model(x))
    finally:
        masker.detach()
    spec = make_spec(masker)
    compact = apply_spec(copy.deepcopy(model), spec)
    return ref, compact, spec


def groups_of(model, x, **kw):
    return build_groups(model, fwd(x), **kw)
