"""Pieces of demo batches that every codebase shares."""
from typing import List, Sequence

import torch
import torch.nn as nn


def image_channels(model: nn.Module) -> int:
    """Image channels the preprocessor normalises (1 for MNIST's LeNet), else 3 (RGB)."""
    mean = getattr(getattr(model, 'data_preprocessor', None), 'mean', None)
    return mean.numel() if isinstance(mean, torch.Tensor) and mean.numel() in (1, 3) else 3


def random_images(model: nn.Module, batch_size: int, input_size: Sequence[int],
                  seed: int) -> List[torch.Tensor]:
    """``batch_size`` random uint8 images ``(C, H, W)`` as a dataloader gives them."""
    gen = torch.Generator().manual_seed(seed)
    h, w = input_size
    c = image_channels(model)
    return [torch.randint(0, 256, (c, h, w), generator=gen, dtype=torch.uint8)
            for _ in range(batch_size)]
