"""Distillation losses from the unpruned model, and which channel group a feature map carries.

Plain PyTorch: :class:`mmgfp.hooks.GFPDistillHook` runs the teacher and calls these.

* :func:`kl_logits`: Hinton et al. (2015), temperature-scaled KL divergence between the
  teacher's and the student's class distributions (softmax over dim 1: classifier logits
  ``(N, K)``, or dense logits ``(N, K, H, W)`` per position).
* :func:`sigmoid_kl`: the same for dense per-class *sigmoid* scores (the class-score maps of
  RetinaNet/FCOS/ATSS heads): binary KL per element, pooled over the levels of a head.
* :func:`mse`: squared difference of dense regression maps (box deltas), pooled likewise.
* :func:`box_mse`: the head's box regression where the teacher sees an object: the squared
  difference of the box maps at each anchor, weighted by the teacher's highest class score
  there, so the background anchors' meaningless boxes are not imitated.
* :func:`cwd`: channel-wise distillation (Shu et al., ICCV 2021): each channel's feature map is
  turned into a distribution over spatial positions (softmax with temperature ``tau``) and the
  student's is pulled to the teacher's with KL, summed over channels and divided by ``N * C``.
* :func:`fg_mse`: feature imitation inside the objects' boxes (as the foreground part of FGD,
  Yang et al., CVPR 2022, and the fine-grained imitation of Wang et al., CVPR 2019): the
  student's squared error on the positions its ground-truth boxes cover, as a fraction of the
  teacher's squared norm there, pooled over the levels. :func:`box_masks` makes the positions.

A pruned channel is masked where it is *consumed*, so the student's feature map still holds
values there that nothing downstream reads. Such channels are left out of :func:`cwd` (``keep``)
and the sum is still divided by the full channel count: a pruned channel adds zero, and the
weight of every kept channel does not change as others are pruned.
"""
import math
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F


def kl_logits(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``tau**2 * KL(softmax(t / tau) || softmax(s / tau))`` over dim 1, mean over the rest."""
    _check_pair(student, teacher)
    s = student.float().movedim(1, -1).flatten(0, -2) / tau
    t = teacher.float().movedim(1, -1).flatten(0, -2) / tau
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True,
                  reduction='sum') / s.shape[0]
    return kl * tau**2


def cwd(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0,
        keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Channel-wise distillation of a feature map ``(N, C, *spatial)``.

    Args:
        student (Tensor): The student's features.
        teacher (Tensor): The teacher's features, same shape.
        tau (float): Temperature of the spatial softmax. Defaults to 1.0.
        keep (Tensor, optional): Bool ``(C,)``: channels in the loss (the unpruned ones).
            Defaults to None (all).

    Returns:
        Tensor: ``tau**2 / (N * C) * sum_{n, c kept} KL(p_t[n, c] || p_s[n, c])``.
    """
    _check_pair(student, teacher)
    if student.dim() < 3:
        raise ValueError(f'cwd needs feature maps (N, C, H, ...), got shape '
                         f'{tuple(student.shape)}; use kl for logits')
    n, c = student.shape[:2]
    s = student.float().flatten(2) / tau
    t = teacher.float().flatten(2) / tau
    if keep is not None:
        keep = keep.to(student.device)
        s, t = s[:, keep], t[:, keep]
    log_pt = F.log_softmax(t, -1)
    kl = (log_pt.exp() * (log_pt - F.log_softmax(s, -1))).sum()
    return kl * tau**2 / (n * c)


Tensors = Union[torch.Tensor, Sequence[torch.Tensor]]


def sigmoid_kl(student: Tensors, teacher: Tensors, tau: float = 1.0) -> torch.Tensor:
    """Binary KL divergence of dense sigmoid scores, e.g. a detector head's class scores.

    Each element is an independent binary classifier (``sigmoid``, as focal loss trains
    them): ``tau**2 * [p_t log(p_t / p_s) + (1 - p_t) log((1 - p_t) / (1 - p_s))]`` with
    ``p = sigmoid(logit / tau)``, summed over the channel axis (dim 1, the ``A * K`` anchor x
    class scores of a position) and averaged over images and positions, the positions of all
    the given tensors (FPN levels) pooled.

    Why this normalisation: a position is one sample, like an image for :func:`kl_logits`,
    which sums over the classes and averages over samples. The sum over channels keeps a
    position's term the size of its classification problem, so it does not shrink with more
    classes; the mean over positions makes the term independent of the image size, the batch
    and the number of levels, and pooling weighs every anchor alike, as the task's focal loss
    does (a level with 4x the positions gets 4x the weight). Scale: near the teacher the
    binary KL is ``p (1 - p) d**2 / 2`` for a logit gap ``d``; a gap of 1 on every background
    score (``p`` about 0.01) of a 9-anchor, 10-class head costs about 0.45, the order of
    RetinaNet's ``loss_cls`` once trained, so weight 1 is a sensible start (not tuned).

    Args:
        student (Tensor | Sequence[Tensor]): The student's logits ``(N, C, *spatial)`` (or
            ``(N, C)``), one tensor per level.
        teacher (Tensor | Sequence[Tensor]): The teacher's, same shapes.
        tau (float): Temperature. Defaults to 1.0.

    Returns:
        Tensor: A float32 scalar, zero iff student and teacher scores agree.
    """
    total, positions = 0., 0
    for s, t in _pairs(student, teacher):
        s, t = s.float() / tau, t.float() / tau
        p_t = torch.sigmoid(t)
        kl = (p_t * (F.logsigmoid(t) - F.logsigmoid(s))
              + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s)))
        total = total + kl.sum()
        positions += s.numel() // s.shape[1]
    return total * tau**2 / positions


def mse(student: Tensors, teacher: Tensors, tau: float = 1.0) -> torch.Tensor:
    """Squared difference of dense regression maps (e.g. box deltas), normalised as
    :func:`sigmoid_kl`: summed over the channel axis, averaged over images and the positions
    of all given tensors. ``tau`` is not used (regression has no temperature)."""
    total, positions = 0., 0
    for s, t in _pairs(student, teacher):
        total = total + (s.float() - t.float()).pow(2).sum()
        positions += s.numel() // s.shape[1]
    return total / positions


def box_mse(student: Sequence[Tensors], teacher: Sequence[Tensors], tau: float = 1.0,
            box_dim: int = 4) -> torch.Tensor:
    """Box regression imitation weighted by the teacher's confidence, for dense detector heads.

    ``sum_a w_a * ||s_a - t_a||**2 / sum_a w_a`` over every anchor ``a`` of every image and
    level, where ``s_a``, ``t_a`` are the ``box_dim`` regression values of the anchor and
    ``w_a = max_k sigmoid(t_cls[a, k])`` the teacher's highest class score there (no
    gradient). A dense head regresses a box at every anchor, but its task loss trains only the
    anchors assigned to an object; elsewhere the boxes are never used, and :func:`mse` would
    spend the student's capacity imitating them. Weighting by the teacher's score imitates the
    boxes where the teacher sees an object, labelled or not, so it also teaches on images
    without labels, as pseudo boxes would, without a score threshold. It is a weighted mean
    over all anchors: an anchor the teacher is sure of weighs about 1, a background anchor its
    small score (about 0.01 for a trained RetinaNet), so the many background anchors still
    count together, each a little.

    Args:
        student (Sequence): ``(class scores, box maps)`` of the student's head: each a tensor
            or one tensor per level, class scores ``(N, A * K, H, W)`` (sigmoid logits) and box
            maps ``(N, A * box_dim, H, W)`` (``A`` anchors per position, ``K`` classes).
        teacher (Sequence): The teacher's, same shapes.
        tau (float): Not used (the weights are the teacher's scores at temperature 1).
        box_dim (int): Regression values per anchor. Defaults to 4.

    Returns:
        Tensor: A float32 scalar; zero where the boxes agree, or where the teacher sees
        nothing (connected to the graph).
    """
    if box_dim < 1:
        raise ValueError(f'box_mse needs box_dim >= 1, got {box_dim}')
    if len(student) != 2 or len(teacher) != 2:
        raise ValueError('box_mse needs (class scores, box maps) of the student and the '
                         f'teacher, got {len(student)} and {len(teacher)} elements')
    cls_pairs = list(_pairs(student[0], teacher[0]))
    box_pairs = list(_pairs(student[1], teacher[1]))
    if len(cls_pairs) != len(box_pairs):
        raise ValueError(f'box_mse: {len(cls_pairs)} class-score maps but {len(box_pairs)} '
                         'box maps; give a head whose output is (scores per level, boxes '
                         'per level)')
    err = total = 0.
    for (_, t_cls), (s_box, t_box) in zip(cls_pairs, box_pairs):
        n, c_box = s_box.shape[:2]
        spatial = s_box.shape[2:]
        if c_box < box_dim or c_box % box_dim or t_cls.shape[1] % (c_box // box_dim) or \
                t_cls.shape[0] != n or t_cls.shape[2:] != spatial:
            raise ValueError(
                f'box_mse: class scores {tuple(t_cls.shape)} and box maps '
                f'{tuple(s_box.shape)} do not share anchors of {box_dim} values: the module '
                'must return (class scores, boxes) per level with the same anchors (as '
                "RetinaNet's or ATSS's head)")
        anchors = c_box // box_dim
        with torch.no_grad():
            w = torch.sigmoid(t_cls.float().reshape(n, anchors, -1, *spatial)).amax(2)
        d = (s_box.float() - t_box.float()).reshape(n, anchors, box_dim, *spatial)
        err = err + (w * d.pow(2).sum(2)).sum()
        total = total + w.sum()
    # where the teacher sees nothing (every weight 0) the error is 0 too: 0, still connected;
    # no sync with the device to find out
    return err / total.clamp_min(1e-12)


def _pairs(student: Tensors, teacher: Tensors):
    """(student, teacher) tensor pairs of equal shape, at least one, each with a channel axis."""
    if isinstance(student, torch.Tensor):
        student, teacher = [student], [teacher]
    student, teacher = list(student), list(teacher)
    if not student or len(student) != len(teacher):
        raise ValueError(f'{len(student)} student tensors but {len(teacher)} teacher tensors')
    for s, t in zip(student, teacher):
        _check_pair(s, t)
        if s.dim() < 2:
            raise ValueError(f'dense losses need (N, C, ...) tensors, got {tuple(s.shape)}')
    return zip(student, teacher)


def box_masks(boxes: Sequence[torch.Tensor], input_hw: Sequence[int],
              shapes: Sequence[Sequence[int]]) -> List[torch.Tensor]:
    """Per level, the positions of a feature map that the images' boxes cover.

    A box ``(x1, y1, x2, y2)`` in input pixels covers every cell of a level's grid that it
    overlaps, so every box inside the input marks at least one cell on every level, also the
    coarsest. A cell of an ``(h, w)`` level of an ``(H, W)`` input spans the level's stride:
    ``H / h`` rounded to a power of two where it is within 10% of one (an FPN level whose size
    was rounded up: 800 / 13 is stride 64), else ``H / h`` itself.

    Args:
        boxes (Sequence[Tensor]): One ``(K, 4)`` tensor per image (``K`` may be 0).
        input_hw (Sequence[int]): ``(H, W)`` of the batch's input tensor.
        shapes (Sequence[Sequence[int]]): ``(h, w)`` of each level's feature map.

    Returns:
        list[Tensor]: One bool ``(N, h, w)`` mask per level.
    """
    big_h, big_w = (float(v) for v in input_hw)
    rows = []
    for b in boxes:
        b = torch.as_tensor(b).detach()
        if b.numel() and (b.dim() != 2 or b.shape[-1] != 4):
            raise ValueError(f'box_masks needs (K, 4) boxes (x1, y1, x2, y2), got shape '
                             f'{tuple(b.shape)}')
        rows.append(b.to('cpu', torch.float64).reshape(-1, 4).tolist())
    out = []
    for h, w in shapes:
        mask = torch.zeros(len(boxes), h, w, dtype=torch.bool)
        sy, sx = _stride(big_h, h), _stride(big_w, w)
        for n, image in enumerate(rows):
            for x1, y1, x2, y2 in image:
                if not (x2 > x1 and y2 > y1):
                    continue  # an empty box covers nothing
                c0, c1 = max(int(x1 // sx), 0), max(min(math.ceil(x2 / sx), w), 0)
                r0, r1 = max(int(y1 // sy), 0), max(min(math.ceil(y2 / sy), h), 0)
                mask[n, r0:r1, c0:c1] = True  # empty where the box is outside the input
        out.append(mask)
    return out


def _stride(size: float, cells: int) -> float:
    """Pixels per cell of a level with ``cells`` cells over ``size`` input pixels."""
    ratio = size / cells
    pow2 = 2.0 ** round(math.log2(ratio))
    return pow2 if abs(pow2 - ratio) <= 0.1 * pow2 else ratio


def fg_mse(student: Tensors, teacher: Tensors, masks: Sequence[torch.Tensor],
           keep: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
    """Feature imitation on the objects: squared error inside the boxes, relative.

    ``sum_{levels, n, c kept, (y, x) in mask} (s - t)**2 / sum_{levels, n, c, (y, x) in mask}
    t**2``: the student's squared error on the positions the boxes cover, over the kept
    channels, as a fraction of the teacher's squared norm on the same positions over all its
    channels. Relative, so the term does not depend on the scale of the features (about 0.1 for
    a 30% error everywhere on the objects), and, as in :func:`cwd`, a pruned channel adds zero
    without changing the weight of the kept ones. Background positions are not compared. A
    batch without boxes gives zero (connected to the graph).

    Args:
        student (Tensor | Sequence[Tensor]): Feature maps ``(N, C, H, W)``, one per level.
        teacher (Tensor | Sequence[Tensor]): The teacher's, same shapes.
        masks (Sequence[Tensor]): Bool ``(N, H, W)`` per level (:func:`box_masks`).
        keep (Sequence[Tensor | None], optional): Per level, bool ``(C,)`` channels in the
            error (the unpruned ones); None: all.
    """
    pairs = list(_pairs(student, teacher))
    if len(masks) != len(pairs):
        raise ValueError(f'{len(pairs)} feature maps but {len(masks)} masks')
    keep = list(keep) if keep is not None else [None] * len(pairs)
    err = norm = 0.  # tensors after the first level (there is at least one)
    for (s, t), m, k in zip(pairs, masks, keep):
        if s.dim() != 4 or tuple(m.shape) != (s.shape[0], *s.shape[2:]):
            raise ValueError(f'fg_mse needs (N, C, H, W) maps and (N, H, W) masks, got '
                             f'{tuple(s.shape)} and {tuple(m.shape)}')
        m = m.to(s.device, torch.bool)
        s, t = s.float().movedim(1, -1)[m], t.float().movedim(1, -1)[m]  # (P, C)
        norm = norm + t.pow(2).sum()
        if k is not None:
            k = k.to(s.device)
            s, t = s[:, k], t[:, k]
        err = err + (s - t).pow(2).sum()
    if norm <= 0:  # no boxes: zero, still connected to the graph
        return err * 0
    return err / norm


LOSSES = {'kl': kl_logits, 'cwd': cwd, 'sigmoid_kl': sigmoid_kl, 'mse': mse, 'fg_mse': fg_mse,
          'box_mse': box_mse}
# losses that need the ground-truth boxes of the batch (the codebase's ``gt_boxes``)
NEEDS_BOXES = ('fg_mse',)
# losses that take all tensors of a module's output at once (pooled), not one by one
POOLED = ('sigmoid_kl', 'mse')
# losses that take elements 0 and 1 of a module's output tuple (a head's scores and boxes)
PAIRED = ('box_mse',)


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f'student output {tuple(student.shape)} and teacher output '
            f'{tuple(teacher.shape)} differ: a sliced student has fewer channels than the '
            'unpruned teacher where it was pruned. Distil an output whose shape does not '
            "depend on the width (type='kl' on classifier logits, 'sigmoid_kl' on a "
            "detector head's class scores), or fine-tune the masked model instead")


def producer_group(feature: torch.Tensor, producers: Dict[int, str],
                   max_nodes: int = 64) -> Optional[str]:
    """The group of the layer that produced ``feature``, found in its autograd graph.

    Walks the graph breadth-first from ``feature.grad_fn`` and returns the group of the first
    parameter met that belongs to a producer layer (a conv's weight or bias, through any
    norm/activation/mask after it). Channel concatenations make no single group: None then,
    as when ``feature`` has no graph or nothing is found within ``max_nodes`` nodes.

    Args:
        feature (Tensor): A student feature map computed with grad.
        producers (dict): ``id(param) -> group key`` of the producer layers' parameters.
        max_nodes (int): Nodes visited at most. Defaults to 64.
    """
    queue = [feature.grad_fn] if feature.grad_fn is not None else []
    seen = 0
    while queue and seen < max_nodes:
        node = queue.pop(0)
        seen += 1
        if node is None:
            continue
        if type(node).__name__ == 'CatBackward0':
            return None
        var = getattr(node, 'variable', None)
        if var is not None and id(var) in producers:
            return producers[id(var)]
        queue.extend(fn for fn, _ in node.next_functions)
    return None


def flat_tensors(obj) -> Iterable[torch.Tensor]:
    """The tensors of a module's output (nested tuples/lists/dicts), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from flat_tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from flat_tensors(o)
