"""MMSegmentation: demo batches of label maps, at the crop size the config trains on.

Semantic segmentors (``EncoderDecoder``, ``CascadeEncoderDecoder``) need no tracer rules: the
core follows their backbones, necks and decode heads as they are (pyramid pooling, ASPP,
attention and the resize of the logits to the label size are ops the tracer sees). Auxiliary
heads run only in the loss: they are traced (and grouped with the layers they read) by the
loss forward the hook and ``check_model`` use, so their input channels are sliced with the
backbone's; a deployed config keeps them, and they are simply not run at test time.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .base import Codebase, register_codebase

SEGMENTOR_INPUT_SIZE = (512, 512)  # when the config names no crop size


def _pair(value) -> Optional[Tuple[int, int]]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def _decode_head(model: nn.Module):
    head = getattr(model, 'decode_head', None)
    if isinstance(head, nn.ModuleList):  # CascadeEncoderDecoder: the last head predicts
        head = head[-1]
    return head


def random_label_maps(batch_size: int, input_size: Sequence[int], num_classes: int,
                      seed: int, cell: int = 8) -> torch.Tensor:
    """``(N, 1, H, W)`` label maps of random classes in blocks of ``cell`` pixels.

    No pixel is marked ignored (255): mmseg 1.2.2's cross-entropy with ``class_weight`` (CGNet)
    indexes the weights with every label and fails on ignored pixels.
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = input_size
    coarse = torch.randint(0, max(num_classes, 2), (batch_size, 1, -(-h // cell), -(-w // cell)),
                           generator=gen)
    full = coarse.repeat_interleave(cell, 2).repeat_interleave(cell, 3)
    return full[:, :, :h, :w].contiguous()


def label_edges(label: torch.Tensor) -> torch.Tensor:
    """``(1, H, W)`` 0/1 map of the pixels whose right or lower neighbour has another label
    (what mmseg's ``GenerateEdge`` gives PIDNet, one pixel wide)."""
    edge = torch.zeros_like(label)
    edge[..., :, :-1] |= (label[..., :, 1:] != label[..., :, :-1]).long()
    edge[..., :-1, :] |= (label[..., 1:, :] != label[..., :-1, :]).long()
    return edge


@register_codebase
class MMSegmentation(Codebase):
    """Semantic segmentors: random label maps of the decode head's classes; demo images at the
    crop size the config trains on (its data preprocessor's ``size``, which pads every training
    batch to it), 512x512 where it names none."""
    scope = 'mmseg'
    title = 'MMSegmentation'
    input_size = SEGMENTOR_INPUT_SIZE

    def default_input_size(self, cfg) -> Tuple[int, int]:
        model = cfg.get('model') or {}
        for pre in (model.get('data_preprocessor'), cfg.get('data_preprocessor')):
            size = _pair((pre or {}).get('size'))
            if size is not None:  # mmseg sizes are (H, W): crop_size = (512, 1024)
                return size
        return _pair(cfg.get('crop_size')) or self.input_size

    def num_classes(self, model: nn.Module) -> Optional[int]:
        head = _decode_head(model)
        return int(head.num_classes) if hasattr(head, 'num_classes') else None

    def demo_batch(self, model: nn.Module, batch_size: int, input_size: Sequence[int],
                   seed: int, num_classes: Optional[int]) -> dict:
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        from mmgfp.codebases.inputs import random_images
        num_classes = num_classes or self.num_classes(model) or 10
        h, w = input_size
        labels = random_label_maps(batch_size, input_size, num_classes, seed)
        samples = []
        for label in labels:
            sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                                 pad_shape=(h, w)))
            sample.gt_sem_seg = PixelData(data=label)
            sample.gt_edge_map = PixelData(data=label_edges(label))  # PIDNet's boundary loss
            samples.append(sample)
        return {'inputs': random_images(model, batch_size, input_size, seed),
                'data_samples': samples}
