"""Semantic segmentation of handwritten digits: per-pixel digit masks on cluttered canvases.

:func:`prepare_digits_seg` draws scikit-learn's digits (sources ``0..1399`` for the training
split, ``1400..1796`` for validation, as the other digits sets) onto ``canvas`` x ``canvas``
grayscale canvases with a gradient background, random lines, dots and speckle, and writes for
every canvas a label map: 0 for background, ``1 + digit`` on the digit's strokes grown by two
pixels (a blob, not thin lines). Deterministic for a given seed; written atomically like the
detection set (see :mod:`mmgfp.datasets.digits`).

Layout of a segmentation root (default ``data/digits_seg``), as MMSegmentation's
``BaseSegDataset`` reads it::

    img_dir/train/00000.png ...   canvas images (8-bit grayscale PNG; loaders read them as colour)
    img_dir/val/00000.png ...
    ann_dir/train/00000.png ...   label maps (8-bit PNG, values 0..10)
    ann_dir/val/00000.png ...
    .complete                     marker with the generation parameters (written last)

When MMSegmentation is installed, importing this module registers ``DigitsSegDataset`` (mmseg
``DATASETS``), which generates its data on first use.
"""
import os
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .digits import (DIGIT_CLASSES, DIGIT_PALETTE, MARKER, _digit_alpha, _draw_clutter,
                     _overlap, _prepare, _save_png, _tight_box, canvas_params,
                     load_source_digits, source_indices)

#: Class 0 is the background; class ``1 + d`` is digit ``d``.
SEG_CLASSES: Tuple[str, ...] = ('background',) + DIGIT_CLASSES
SEG_PALETTE = [(0, 0, 0)] + list(DIGIT_PALETTE)
DEFAULT_SEG_ROOT = osp.join('data', 'digits_seg')
_SEG_ENTRIES = {'img_dir', 'ann_dir', MARKER}
MASK_GROW = 2  # pixels a digit's mask extends past its strokes


def _background(rng: np.random.Generator, canvas: int) -> Tuple[np.ndarray, float, bool]:
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32) / canvas
    light = rng.random() < 0.25  # a quarter of the canvases: dark digits on light paper
    base = rng.uniform(170, 245) if light else rng.uniform(0, 80)
    gx, gy = rng.uniform(-35, 35, 2)
    img = np.round(np.clip(base + gx * (xx - 0.5) + gy * (yy - 0.5), 0, 255)).astype(np.uint8)
    _draw_clutter(img, rng, base)
    return img.astype(np.float32), float(base), light


def _mask(alpha: np.ndarray) -> np.ndarray:
    """The pixels of a digit: its strokes (alpha >= 0.3) grown by ``MASK_GROW`` pixels, so
    that a mask is a blob a segmentor at output stride 8 can draw, not 3-pixel lines."""
    from scipy.ndimage import binary_dilation
    return binary_dilation(alpha >= 0.3, structure=np.ones((3, 3), bool), iterations=MASK_GROW)


def render_seg_image(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
                     pool: np.ndarray, canvas: int, digit_size: Tuple[int, int],
                     max_digits: int) -> Tuple[np.ndarray, np.ndarray]:
    """One canvas with 1..``max_digits`` digits of ``pool`` and its label map.

    Digits are placed so that their stroke boxes do not overlap; where two grown masks touch,
    the digit drawn later labels the pixel.

    Returns:
        tuple: the uint8 image ``(canvas, canvas)`` and the uint8 label map of the same shape.
    """
    img, base, light = _background(rng, canvas)
    label_map = np.zeros((canvas, canvas), np.uint8)
    boxes = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        src = int(rng.choice(pool))
        h = int(rng.integers(digit_size[0], digit_size[1] + 1))
        w = min(canvas, max(6, int(round(h * rng.uniform(0.8, 1.1)))))
        alpha = _digit_alpha(images[src], w, h)
        local = _tight_box(alpha)
        if local is None:
            continue
        for _attempt in range(30):
            x = int(rng.integers(0, canvas - w + 1))
            y = int(rng.integers(0, canvas - h + 1))
            box = (x + local[0], y + local[1], x + local[2], y + local[3])
            if all(_overlap(box, b) == 0 for b in boxes):
                break
        else:
            continue
        ink = float(np.clip(base + (-1 if light else 1) * rng.uniform(90, 170), 0, 255))
        img[y:y + h, x:x + w] = img[y:y + h, x:x + w] * (1 - alpha) + ink * alpha
        label_map[y:y + h, x:x + w][_mask(alpha)] = 1 + int(labels[src])
        boxes.append(box)
    speckle = rng.random(img.shape) < rng.uniform(0.0, 0.02)
    img[speckle] = rng.uniform(0, 255, int(speckle.sum()))
    return np.clip(np.round(img), 0, 255).astype(np.uint8), label_map


def prepare_digits_seg(root: str = DEFAULT_SEG_ROOT,
                       num_train: int = 600,
                       num_val: int = 100,
                       seed: int = 0,
                       canvas: int = 64,
                       digit_size: Sequence[int] = (20, 40),
                       max_digits: int = 3) -> bool:
    """Write the digits segmentation set into ``root`` unless it is complete.

    Args:
        root (str): Data root. Defaults to ``data/digits_seg``.
        num_train (int): Training canvases. Defaults to 600.
        num_val (int): Validation canvases. Defaults to 100.
        seed (int): Random seed; the same arguments always give identical files.
            Defaults to 0.
        canvas (int): Canvas side in pixels. Defaults to 64.
        digit_size (Sequence[int]): ``(min, max)`` digit height in pixels. Defaults to (20, 40).
        max_digits (int): Most digits per canvas. Defaults to 3.

    Returns:
        bool: True if the data was generated now, False if ``root`` was complete already.
    """
    params = dict(canvas_params(num_train, num_val, seed, canvas, digit_size, max_digits),
                  mask_grow=MASK_GROW)

    def writer(out: str) -> None:
        images, labels = load_source_digits()
        for split_id, (split, num) in enumerate((('train', num_train), ('val', num_val))):
            rng = np.random.default_rng([int(seed), 200 + split_id])
            pool = source_indices(split)
            for sub in ('img_dir', 'ann_dir'):
                os.makedirs(osp.join(out, sub, split))
            for i in range(int(num)):
                img, label_map = render_seg_image(
                    rng, images, labels, pool, int(canvas),
                    (int(digit_size[0]), int(digit_size[1])), int(max_digits))
                _save_png(img, osp.join(out, 'img_dir', split, f'{i:05d}.png'))
                _save_png(label_map, osp.join(out, 'ann_dir', split, f'{i:05d}.png'))

    return _prepare(root, 'digits_seg', params, _SEG_ENTRIES, writer)


__all__ = ['SEG_CLASSES', 'SEG_PALETTE', 'prepare_digits_seg', 'render_seg_image']

try:
    from mmseg.datasets import BaseSegDataset
    from mmseg.registry import DATASETS as MMSEG_DATASETS
except ImportError:  # MMSegmentation not installed: no segmentation data set to register
    pass
else:

    @MMSEG_DATASETS.register_module()
    class DigitsSegDataset(BaseSegDataset):
        """Handwritten-digit semantic segmentation (background + 10 digits), generated on
        first use.

        Args:
            data_root (str): Where the data lives / is generated. Defaults to
                ``'data/digits_seg/'``.
            split (str): ``'train'`` or ``'val'``; chooses the image and label folders
                (``img_dir/<split>``, ``ann_dir/<split>``). Defaults to 'train'.
            generate (bool): Generate missing data. Defaults to True.
            generate_cfg (dict, optional): Keyword arguments of :func:`prepare_digits_seg`
                (``num_train``, ``num_val``, ``seed``, ``canvas``, ...). All data sets sharing
                a ``data_root`` must use the same values. Defaults to None.
            **kwargs: Passed on to :class:`mmseg.datasets.BaseSegDataset`.
        """
        METAINFO = {'classes': SEG_CLASSES, 'palette': SEG_PALETTE}

        def __init__(self,
                     data_root: str = 'data/digits_seg/',
                     split: str = 'train',
                     generate: bool = True,
                     generate_cfg: Optional[Dict] = None,
                     **kwargs) -> None:
            if split not in ('train', 'val'):
                raise ValueError(f'split must be "train" or "val", but got {split!r}')
            if generate:
                prepare_digits_seg(data_root, **(generate_cfg or {}))
            kwargs.setdefault('data_prefix', dict(img_path=f'img_dir/{split}',
                                                  seg_map_path=f'ann_dir/{split}'))
            super().__init__(data_root=data_root, img_suffix='.png', seg_map_suffix='.png',
                             reduce_zero_label=False, **kwargs)

    __all__.append('DigitsSegDataset')
