"""Forward functions and demo batches for tracing OpenMMLab models."""
import copy
from contextlib import contextmanager
from typing import Any, Callable, Optional, Sequence, Tuple

import torch.nn as nn

from mmgfp.codebases import codebase_of, config_scope
from mmgfp.core import GroupSet, build_groups


def loss_forward(data_batch: Any) -> Callable[[nn.Module], Any]:
    """``fn(model)`` running the model's own preprocessor and loss path on ``data_batch``."""

    def fn(model):
        # a copy of the targets: MMYOLO's YOLOv5Head normalises ``bboxes_labels`` in place, so
        # a trace on the Runner's batch would hand the training step changed boxes
        batch = data_batch
        if isinstance(batch, dict) and 'data_samples' in batch:
            batch = dict(batch, data_samples=copy.deepcopy(batch['data_samples']))
        data = model.data_preprocessor(batch, True)
        if isinstance(data, dict):
            return model(**data, mode='loss')
        return model(*data, mode='loss')

    return fn


def tensor_forward(data_batch: Any) -> Callable[[nn.Module], Any]:
    """``fn(model)`` returning the raw network outputs (``mode='tensor'``), no loss."""

    def fn(model):
        codebase = codebase_of(model, default='none')
        batch = codebase.test_batch(model, data_batch) if codebase else data_batch
        data = model.data_preprocessor(batch, False)
        if isinstance(data, dict):
            return model(**data, mode='tensor')
        return model(*data, mode='tensor')

    return fn


def output_forward(data_batch: Any) -> Callable[[nn.Module], Any]:
    """:func:`tensor_forward` in eval mode (the model's mode restored after): the pass whose
    outputs a deployed model returns."""
    run = tensor_forward(data_batch)

    def fn(model):
        was_training = model.training
        model.eval()
        try:
            return run(model)
        finally:
            model.train(was_training)

    return fn


def model_groups(model: nn.Module, data_batch: Any, skip: Sequence[str] = ()) -> GroupSet:
    """The groups the pruning hook prunes: traced on the loss pass of ``data_batch``, with the
    channels that the tensor pass returns un-reduced kept whole (MMPose's RTMO returns its pose
    features, which its loss pass feeds to a linear layer).

    Args:
        model (nn.Module): The model, in the mode the loss pass runs in.
        data_batch: A batch as the dataloader gives it.
        skip (Sequence[str]): Layer name patterns kept whole (see
            :func:`mmgfp.core.build_groups`). Defaults to ().
    """
    return build_groups(model, loss_forward(data_batch), skip=skip,
                        output_fn=output_forward(data_batch))


def demo_batch(model: nn.Module, batch_size: int = 2, input_size: Sequence[int] = (128, 128),
               seed: int = 0, num_classes: Optional[int] = None) -> dict:
    """A packed batch (as a dataloader gives it) of random images and labels for ``model``.

    The model's codebase (:mod:`mmgfp.codebases`) makes it: random boxes (and masks where the
    model has a mask head) for MMDetection detectors, random labels for MMPretrain classifiers.
    """
    prepare_like_training()
    return codebase_of(model).demo_batch(model, batch_size, tuple(input_size), seed,
                                         num_classes)


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
    return config_scope(cfg) == 'mmpretrain'


def default_input_size(cfg) -> Tuple[int, int]:
    """The demo input size of a config, as its codebase sets it: a classifier's test-pipeline
    size (224x224 if it names none), 128x128 for detectors (any size a multiple of the largest
    stride works)."""
    return tuple(codebase_of(cfg).default_input_size(cfg))


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
