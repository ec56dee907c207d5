"""Distillation losses from the unpruned model, and which channel group a feature map carries.

Plain PyTorch: :class:`mmgfp.hooks.GFPDistillHook` runs the teacher and calls these.

* :func:`kl_logits`: Hinton et al. (2015), temperature-scaled KL divergence between the
  teacher's and the student's class distributions (softmax over dim 1: classifier logits
  ``(N, K)``, or dense logits ``(N, K, H, W)`` per position).
* :func:`sigmoid_kl`: the same for dense per-class *sigmoid* scores (the class-score maps of
  RetinaNet/FCOS/ATSS heads): binary KL per element, pooled over the levels of a head.
* :func:`mse`: squared difference of dense regression maps (box deltas), pooled likewise.
* :func:`cwd`: channel-wise distillation (Shu et al., ICCV 2021): each channel's feature map is
  turned into a distribution over spatial positions (softmax with temperature ``tau``) and the
  student's is pulled to the teacher's with KL, summed over channels and divided by ``N * C``.

A pruned channel is masked where it is *consumed*, so the student's feature map still holds
values there that nothing downstream reads. Such channels are left out of :func:`cwd` (``keep``)
and the sum is still divided by the full channel count: a pruned channel adds zero, and the
weight of every kept channel does not change as others are pruned.
"""
from typing import Dict, Iterable, Optional, Sequence, Union

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


LOSSES = {'kl': kl_logits, 'cwd': cwd, 'sigmoid_kl': sigmoid_kl, 'mse': mse}
# losses that take all tensors of a module's output at once (pooled), not one by one
POOLED = ('sigmoid_kl', 'mse')


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
