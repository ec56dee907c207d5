"""Distillation losses from the unpruned model, and which channel group a feature map carries.

Plain PyTorch: :class:`mmgfp.hooks.GFPDistillHook` runs the teacher and calls these.

* :func:`kl_logits`: Hinton et al. (2015), temperature-scaled KL divergence between the
  teacher's and the student's class distributions (softmax over dim 1: classifier logits
  ``(N, K)``, or dense logits ``(N, K, H, W)`` per position).
* :func:`cwd`: channel-wise distillation (Shu et al., ICCV 2021): each channel's feature map is
  turned into a distribution over spatial positions (softmax with temperature ``tau``) and the
  student's is pulled to the teacher's with KL, summed over channels and divided by ``N * C``.

A pruned channel is masked where it is *consumed*, so the student's feature map still holds
values there that nothing downstream reads. Such channels are left out of :func:`cwd` (``keep``)
and the sum is still divided by the full channel count: a pruned channel adds zero, and the
weight of every kept channel does not change as others are pruned.
"""
from typing import Dict, Iterable, Optional

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


LOSSES = {'kl': kl_logits, 'cwd': cwd}


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
