"""Forward functions and demo batches for tracing OpenMMLab models."""
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn


def loss_forward(data_batch: Any) -> Callable[[nn.Module], Any]:
    """``fn(model)`` running the model's own preprocessor and loss path on ``data_batch``."""

    def fn(model):
        data = model.data_preprocessor(data_batch, True)
        if isinstance(data, dict):
            return model(**data, mode='loss')
        return model(*data, mode='loss')

    return fn


def tensor_forward(data_batch: Any) -> Callable[[nn.Module], Any]:
    """``fn(model)`` returning the raw network outputs (``mode='tensor'``), no loss."""

    def fn(model):
        data = model.data_preprocessor(data_batch, False)
        if isinstance(data, dict):
            return model(**data, mode='tensor')
        return model(*data, mode='tensor')

    return fn


def _ensure_iter_info() -> None:
    # Some mmdet preprocessors read the message hub's iteration (set by a Runner normally).
    from mmengine.logging import MessageHub
    hub = MessageHub.get_current_instance()
    if hub.get_info('iter') is None:
        hub.update_info('iter', 0)


def _num_classes(model: nn.Module) -> int:
    for path in ('bbox_head', 'roi_head.bbox_head', 'head'):
        obj = model
        for part in path.split('.'):
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, 'num_classes'):
            return int(obj.num_classes)
    return 10


def demo_batch(model: nn.Module, batch_size: int = 2, input_size: Sequence[int] = (128, 128),
               seed: int = 0, num_classes: Optional[int] = None) -> dict:
    """A packed batch (as a dataloader gives it) of random images and labels for ``model``.

    Works for MMDetection detectors (random boxes, masks when the model has a mask head) and
    MMPretrain classifiers (random labels).
    """
    _ensure_iter_info()
    gen = torch.Generator().manual_seed(seed)
    num_classes = num_classes or _num_classes(model)
    h, w = input_size
    inputs = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
              for _ in range(batch_size)]
    family = type(model).__module__.split('.')[0]
    if family == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        torch.manual_seed(seed)
        import numpy as np
        np.random.seed(seed)
        packed = demo_mm_inputs(batch_size, [[3, h, w]] * batch_size, num_items=[3] *
                                batch_size, num_classes=num_classes,
                                with_mask=bool(getattr(model, 'with_mask', False)))
        packed['inputs'] = inputs
        return packed
    if family == 'mmpretrain':
        from mmpretrain.structures import DataSample
        samples = [DataSample().set_gt_label(i % num_classes) for i in range(batch_size)]
        return {'inputs': inputs, 'data_samples': samples}
    raise TypeError(f'demo_batch supports MMDetection and MMPretrain models, not '
                    f'{type(model).__name__} from {type(model).__module__}')
