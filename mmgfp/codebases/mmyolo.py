"""MMYOLO: its version gate, its collate format, and its input sizes.

**The version gate.** mmyolo 0.6.0 (its last release) asserts ``mmcv < 2.1.0`` when it is
imported; past that assert its models build and run on mmcv 2.1.0 (the stack mmgfp pins, the
first mmcv with wheels for current PyTorch). :func:`mmyolo_compat` imports mmyolo with
``mmcv.__version__`` reading ``'2.0.1'`` for that import only, restores it and logs one line that
names the bridge. Nothing is patched on ``import mmgfp``: the bridge runs where mmyolo is asked
for, by

- ``custom_imports = dict(imports=['mmgfp', 'mmgfp.yolo'], ...)`` in a config (a Runner, and
  MMEngine's registries, then find mmyolo already imported), or
- :func:`import_mmyolo` / ``get_codebase('mmyolo').prepare()`` in a script; mmgfp's tools call
  it for ``default_scope='mmyolo'`` configs themselves.

**The collate format.** mmyolo's fast configs collate training batches with ``yolov5_collate``:
``inputs`` stacked (a list for PPYOLOE) and ``data_samples`` one dict whose ``bboxes_labels``
rows are ``(image index, label, x1, y1, x2, y2)``; its preprocessors assert that dict when
training and want MMDetection's list of ``DetDataSample`` otherwise. :meth:`MMYOLO.demo_batch`
makes the training format and :meth:`MMYOLO.test_batch` turns it into the test format.
"""
import contextlib
import importlib
import sys
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .base import Codebase, register_codebase

# what mmcv reports while mmyolo 0.6.0 imports: the last release its gate (< 2.1.0) accepts
GATE_VERSION = '2.0.1'
# transforms of mmyolo's test pipelines that fix the image size (``scale`` is (W, H))
_SIZE_TRANSFORMS = ('LetterResize', 'YOLOv5KeepRatioResize', 'Resize', 'FixShapeResize')
CHECK_SIDE = 320  # longest side of demo images for the checks (640 pipelines: 4x the work)


def _gate_closed() -> bool:
    """Whether the installed mmyolo refuses the installed mmcv at import."""
    from importlib.metadata import version

    import mmcv
    from mmengine.utils import digit_version
    return (digit_version(version('mmyolo')) <= digit_version('0.6.0')
            and digit_version(mmcv.__version__) >= digit_version('2.1.0'))


@contextlib.contextmanager
def mmyolo_compat(logger=None) -> Iterator[None]:
    """Inside: ``mmcv.__version__`` reads :data:`GATE_VERSION` where mmyolo's gate would refuse
    the installed mmcv; restored on exit. Import mmyolo inside (see :func:`import_mmyolo`)."""
    import mmcv
    import mmdet  # noqa: F401  (its own gate, mmcv < 2.2.0, sees the real version)
    if 'mmyolo' in sys.modules or not _gate_closed():
        yield
        return
    real = mmcv.__version__
    mmcv.__version__ = GATE_VERSION
    try:
        yield
    finally:
        mmcv.__version__ = real
    msg = (f'mmgfp: bridged mmyolo\'s version gate (it asserts mmcv < 2.1.0 at import): '
           f'imported mmyolo with mmcv.__version__ reading {GATE_VERSION}, restored to {real}')
    (logger or _log)(msg)


def _log(msg: str) -> None:
    from mmengine.logging import print_log
    print_log(msg, logger='current')


def import_mmyolo(logger=None):
    """Import mmyolo (through :func:`mmyolo_compat` where its gate would refuse our mmcv).

    Returns:
        module: The ``mmyolo`` package.
    """
    if 'mmyolo' in sys.modules:
        return sys.modules['mmyolo']
    with mmyolo_compat(logger):
        return importlib.import_module('mmyolo')


def _is(obj, name: str) -> bool:
    return any(c.__name__ == name for c in type(obj).__mro__)


def _collates_to_dict(model: nn.Module) -> bool:
    """Whether the model's preprocessor wants ``yolov5_collate`` batches when training."""
    pre = getattr(model, 'data_preprocessor', None)
    return _is(pre, 'YOLOv5DetDataPreprocessor') or _is(pre, 'PPYOLOEDetDataPreprocessor')


def _random_boxes(gen: torch.Generator, batch_size: int, input_size: Sequence[int],
                  num_classes: int, per_image: int = 3) -> torch.Tensor:
    """``(B * per_image, 6)`` rows ``(image, label, x1, y1, x2, y2)`` inside the image."""
    h, w = input_size
    rows = []
    for i in range(batch_size):
        for _ in range(per_image):
            cx, cy = torch.rand(2, generator=gen).tolist()
            bw, bh = (0.1 + 0.4 * torch.rand(2, generator=gen)).tolist()
            x1, x2 = max(0., (cx - bw / 2) * w), min(w - 1., (cx + bw / 2) * w)
            y1, y2 = max(0., (cy - bh / 2) * h), min(h - 1., (cy + bh / 2) * h)
            label = int(torch.randint(num_classes, (1,), generator=gen))
            rows.append([i, label, x1, y1, x2, y2])
    return torch.tensor(rows, dtype=torch.float32)


def _box_masks(boxes: torch.Tensor, batch_size: int, input_size: Sequence[int],
               overlap: bool, ratio: int = 4) -> torch.Tensor:
    """Masks filling the boxes at ``1/ratio`` of the image size, as ``yolov5_collate`` gives
    YOLOv5-ins: one map per image whose pixels hold the box's index in its image plus one
    (``overlap``, later boxes on top), else one binary map per box."""
    h, w = (max(1, s // ratio) for s in input_size)
    maps = torch.zeros(batch_size if overlap else len(boxes), h, w)
    count = [0] * batch_size
    for k, (img, _, x1, y1, x2, y2) in enumerate(boxes.tolist()):
        img = int(img)
        count[img] += 1
        rows = slice(int(y1 / ratio), max(int(y1 / ratio) + 1, int(y2 / ratio)))
        cols = slice(int(x1 / ratio), max(int(x1 / ratio) + 1, int(x2 / ratio)))
        maps[img if overlap else k, rows, cols] = count[img] if overlap else 1
    return maps


@register_codebase
class MMYOLO(Codebase):
    """YOLO detectors (YOLOv5/v6/v7/v8, YOLOX, RTMDet, PPYOLOE): training batches in the
    format of their collate function; demo images at the test pipeline's size, scaled down to
    a longest side of 320 (any multiple of the largest stride, 32, gives the same groups and
    exact checks; pass the real size for latency)."""
    scope = 'mmyolo'
    title = 'MMYOLO'
    input_size = (320, 320)
    import_target = 'mmgfp.yolo'

    def default_input_size(self, cfg) -> Tuple[int, int]:
        from mmgfp.apis.inputs import _pipeline
        size = None
        for t in _pipeline(cfg):
            name = str(t.get('type', '')).split('.')[-1] if isinstance(t, dict) else ''
            scale = t.get('scale') if name in _SIZE_TRANSFORMS else None
            if isinstance(scale, int):
                size = (scale, scale)
            elif isinstance(scale, (list, tuple)) and len(scale) == 2:
                size = (int(scale[1]), int(scale[0]))
        if size is None:
            return self.input_size
        factor = min(1.0, CHECK_SIDE / max(size))
        return tuple(max(32, int(s * factor) // 32 * 32) for s in size)

    def num_classes(self, model: nn.Module) -> Optional[int]:
        head = getattr(model, 'bbox_head', None)
        for obj in (head, getattr(head, 'head_module', None)):
            if hasattr(obj, 'num_classes'):
                return int(obj.num_classes)
        return None

    def demo_batch(self, model: nn.Module, batch_size: int, input_size: Sequence[int],
                   seed: int, num_classes: Optional[int]) -> dict:
        num_classes = num_classes or self.num_classes(model) or 10
        if not _collates_to_dict(model):  # configs with mmdet's preprocessor and collate
            from .base import get_codebase
            return get_codebase('mmdet').demo_batch(model, batch_size, input_size, seed,
                                                    num_classes)
        from mmgfp.codebases.inputs import random_images
        images = random_images(model, batch_size, input_size, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        boxes = _random_boxes(gen, batch_size, input_size, num_classes)
        ppyoloe = _is(model.data_preprocessor, 'PPYOLOEDetDataPreprocessor')
        samples = {'bboxes_labels': boxes}
        head = getattr(model, 'bbox_head', None)
        if hasattr(head, 'mask_overlap'):  # YOLOv5-ins
            samples['masks'] = _box_masks(boxes, batch_size, input_size, head.mask_overlap)
        if hasattr(head, 'num_keypoints'):  # YOLOX-Pose: keypoints inside each box
            x1, y1, x2, y2 = boxes[:, 2:].T[..., None]
            frac = torch.rand(len(boxes), head.num_keypoints, 2, generator=gen)
            samples['keypoints'] = torch.stack(
                [x1 + frac[..., 0] * (x2 - x1), y1 + frac[..., 1] * (y2 - y1)], -1)
            samples['keypoints_visible'] = torch.ones(len(boxes), head.num_keypoints)
        return {'inputs': images if ppyoloe else torch.stack(images), 'data_samples': samples}

    def test_batch(self, model: nn.Module, data_batch: dict) -> dict:
        """A ``yolov5_collate`` batch as mmyolo's test dataloader gives it (a list of images
        and of ``DetDataSample``); other batches unchanged."""
        samples = data_batch.get('data_samples') if isinstance(data_batch, dict) else None
        if not isinstance(samples, dict):
            return data_batch
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        images = list(data_batch['inputs'])
        rows = samples['bboxes_labels']
        out = []
        for i, img in enumerate(images):
            shape = tuple(img.shape[-2:])
            sample = DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape,
                                                 scale_factor=(1.0, 1.0),
                                                 pad_param=[0., 0., 0., 0.]))
            mine = rows[rows[:, 0] == i]
            sample.gt_instances = InstanceData(bboxes=mine[:, 2:], labels=mine[:, 1].long())
            out.append(sample)
        return {'inputs': images, 'data_samples': out}

    def compat(self):
        return mmyolo_compat()

    def fix_compact(self, model: nn.Module) -> None:
        """RepVGG blocks (YOLOv6, YOLOv7, PPYOLOE) build the identity kernel of their
        re-parameterisation (``switch_to_deploy``) from ``in_channels``, a constructor value:
        follow the sliced conv, and drop a kernel cached at the old width."""
        for m in model.modules():
            if _is(m, 'RepVGGBlock') and hasattr(m, 'rbr_dense'):
                m.in_channels = int(m.rbr_dense.conv.in_channels)
                m.out_channels = int(m.rbr_dense.conv.out_channels)
                if hasattr(m, 'id_tensor'):
                    del m.id_tensor
