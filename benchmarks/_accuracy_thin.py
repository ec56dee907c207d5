"""The ``thin`` method of ``benchmarks/accuracy.py``: the same detector with every width scaled
down (ResNet backbone, FPN, head), its width searched until mmgfp's cost model gives the target
FLOPs, then trained from scratch."""
import copy
import math
from typing import Optional

from _accuracy_methods import measure, search


def thin_problem(base) -> Optional[str]:
    """Why :func:`thin_cfg` cannot scale ``base`` (None if it can)."""
    m = base.model
    if m.get('backbone', {}).get('type') not in ('ResNet', 'mmdet.ResNet'):
        return f'the backbone is {m.get("backbone", {}).get("type")!r}, not a ResNet'
    neck = m.get('neck')
    if not isinstance(neck, dict) or 'in_channels' not in neck or 'out_channels' not in neck:
        return 'the neck is not one FPN-like dict with in_channels and out_channels'
    if 'in_channels' not in m.bbox_head:
        return 'the bbox_head has no in_channels'
    return None


def thin_cfg(base, width: float):
    """``base`` with every width scaled by ``width``: ResNet backbone, FPN and head.

    GroupNorm in the head keeps the baseline's channels per group (64 channels / 32 groups:
    two); the neck width stays a multiple of it.
    """
    cfg = copy.deepcopy(base)
    backbone, neck, head = cfg.model.backbone, cfg.model.neck, cfg.model.bbox_head
    base_ch = backbone.get('base_channels', 64)
    b = max(8, round(base_ch * width))
    norm = head.get('norm_cfg') or {}
    per_group = (neck.out_channels // norm['num_groups']) if norm.get('type') == 'GN' else 1
    out = per_group * max(4, round(neck.out_channels * width / per_group))
    backbone.base_channels = b
    neck.in_channels = [max(1, round(c * b / base_ch)) for c in neck.in_channels]
    neck.out_channels = out
    head.in_channels = out
    if 'feat_channels' in head:
        head.feat_channels = out
    if norm.get('type') == 'GN':
        head.norm_cfg = dict(norm, num_groups=out // per_group)
    return cfg


def thin_search(base, target: float, full_flops: float, tol: float, max_trials: int = 8):
    """The width factor whose thin detector has FLOPs closest to ``target`` of the full one."""
    from mmgfp.apis.checking.check import build_model

    def flops_at(shrink):  # search() works on a ratio removed: width = 1 - shrink
        m = build_model(thin_cfg(base, 1 - shrink), init=False)
        return measure(m)['flops'] / full_flops, None

    (shrink, flops, _), trials = search(flops_at, target, tol, 1 - math.sqrt(target), max_trials)
    return 1 - shrink, flops, [(1 - s, f) for s, f in trials]
