"""Forward functions and demo batches for tracing OpenMMLab models."""
from contextlib import contextmanager
from typing import Any, Callable, Optional, Sequence, Tuple

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


def _num_classes(model: nn.Module) -> int:
    for path in ('bbox_head', 'roi_head.bbox_head', 'head'):
        obj = model
        for part in path.split('.'):
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, 'num_classes'):
            return int(obj.num_classes)
    return 10


def _with_mask(model: nn.Module) -> bool:
    # a mask head, or a preprocessor that pads masks (Mask2Former reads them from the data)
    return bool(getattr(model, 'with_mask', False) or
                getattr(getattr(model, 'data_preprocessor', None), 'pad_mask', False))


def _channels(model: nn.Module) -> int:
    # image channels the preprocessor normalises (1 for MNIST's LeNet), else RGB
    mean = getattr(getattr(model, 'data_preprocessor', None), 'mean', None)
    return mean.numel() if isinstance(mean, torch.Tensor) and mean.numel() in (1, 3) else 3


def demo_batch(model: nn.Module, batch_size: int = 2, input_size: Sequence[int] = (128, 128),
               seed: int = 0, num_classes: Optional[int] = None) -> dict:
    """A packed batch (as a dataloader gives it) of random images and labels for ``model``.

    Works for MMDetection detectors (random boxes, masks when the model has a mask head) and
    MMPretrain classifiers (random labels).
    """
    prepare_like_training()
    gen = torch.Generator().manual_seed(seed)
    num_classes = num_classes or _num_classes(model)
    h, w = input_size
    c = _channels(model)
    inputs = [torch.randint(0, 256, (c, h, w), generator=gen, dtype=torch.uint8)
              for _ in range(batch_size)]
    family = type(model).__module__.split('.')[0]
    if family == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        torch.manual_seed(seed)
        import numpy as np
        np.random.seed(seed)
        # demo_mm_inputs draws labels from [1, num_classes): give it room for one class
        packed = demo_mm_inputs(batch_size, [[3, h, w]] * batch_size, num_items=[3] *
                                batch_size, num_classes=max(num_classes, 2),
                                with_mask=_with_mask(model))
        for sample in packed['data_samples']:
            sample.gt_instances.labels = sample.gt_instances.labels % num_classes
        packed['inputs'] = inputs
        return packed
    if family == 'mmpretrain':
        from mmpretrain.structures import DataSample
        samples = [DataSample().set_gt_label(i % num_classes) for i in range(batch_size)]
        return {'inputs': inputs, 'data_samples': samples}
    raise TypeError(f'demo_batch supports MMDetection and MMPretrain models, not '
                    f'{type(model).__name__} from {type(model).__module__}')


DETECTOR_INPUT_SIZE = (128, 128)
CLASSIFIER_INPUT_SIZE = (224, 224)  # when the config's pipelines name no size
# transforms that fix the image size, with the argument that holds it (mmcv/mmpretrain)
_SIZE_ARGS = {'CenterCrop': 'crop_size', 'RandomResizedCrop': 'scale', 'Resize': 'scale',
              'RandomCrop': 'crop_size', 'ResizeEdge': 'scale'}


def _pipeline(cfg) -> list:
    for key in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        node = cfg.get(key)
        while isinstance(node, dict):
            if isinstance(node.get('pipeline'), (list, tuple)):
                return list(node['pipeline'])
            node = node.get('dataset')
    return list(cfg.get('test_pipeline') or [])


def pipeline_input_size(cfg) -> Optional[Tuple[int, int]]:
    """``(H, W)`` the last size-fixing transform of a config's test pipeline gives, or None.

    ``CenterCrop(crop_size)``, ``RandomResizedCrop(scale)``, ``Resize(scale)`` and
    ``RandomCrop(crop_size)`` count; an int is a square, a pair is ``(W, H)`` as in mmcv.
    """
    size = None
    for t in _pipeline(cfg):
        name = str(t.get('type', '')).split('.')[-1] if isinstance(t, dict) else ''
        value = t.get(_SIZE_ARGS[name]) if name in _SIZE_ARGS else None
        if isinstance(value, int):
            size = (value, value)
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(
                isinstance(v, int) for v in value):
            size = (int(value[1]), int(value[0]))
    return size


def is_classifier_config(cfg) -> bool:
    return cfg.get('default_scope') == 'mmpretrain'


def default_input_size(cfg) -> Tuple[int, int]:
    """The demo input size of a config: a classifier's test-pipeline size (224x224 if it names
    none), 128x128 for detectors (any size a multiple of the largest stride works)."""
    if is_classifier_config(cfg):
        return pipeline_input_size(cfg) or CLASSIFIER_INPUT_SIZE
    return DETECTOR_INPUT_SIZE


_SHAPE_WORDS = ('shape', 'size', 'dimension')


@contextmanager
def clear_shape_errors(input_size: Sequence[int]):
    """Turn a shape error from inside the model into one that names the input size to change."""
    try:
        yield
    except RuntimeError as e:
        if not any(w in str(e) for w in _SHAPE_WORDS):
            raise
        h, w = input_size
        raise ValueError(
            f'the model does not run on {h}x{w} demo images ({e}). It probably needs the input '
            'size it was built for: pass it as --input-size H W (tools/check_model.py, '
            'tools/analyze_groups.py) or input_size=(H, W), e.g. the crop size of its '
            'test pipeline.') from e


def prepare_like_training(model: Optional[nn.Module] = None) -> None:
    """Set the run-time information a Runner's training loop would have set.

    MMEngine's ``RuntimeInfoHook`` puts ``iter`` and ``epoch`` into the message hub; some mmdet
    preprocessors read the iteration, and heads that switch assigners by epoch (TOOD) read the
    epoch in their loss. Outside a Runner both are None; set them to 0 where unset.
    """
    from mmengine.logging import MessageHub
    hub = MessageHub.get_current_instance()
    for key in ('iter', 'epoch'):
        if hub.get_info(key) is None:
            hub.update_info(key, 0)
