"""Keypoints on handwritten digits: a small, offline top-down pose set in COCO keypoint format.

:func:`prepare_digits_pose` draws scikit-learn's 8x8 digits (upscaled to 18..36 px) onto
cluttered canvases, as :mod:`mmgfp.datasets.digits` does for detection, and annotates every
digit as one "person" with five keypoints read from its strokes:

    0 top      the highest ink pixel (centre of the highest row of ink)
    1 bottom   the lowest one
    2 left     the leftmost ink column's centre (swaps with ``right`` under a horizontal flip)
    3 right    the rightmost one
    4 centre   the ink's centre of mass

About one keypoint in eight (not the centre) is hidden under a blob of background colour and
labelled ``v=1`` (labelled, not visible) as in COCO; the others are ``v=2``. Splits use disjoint
source digits (as the other digits sets), generation is deterministic and atomic.

Layout of a root (default ``data/digits_pose``)::

    train/00000.png ...          canvases (8-bit grayscale PNG)
    val/00000.png ...
    annotations/train.json       COCO keypoints: one category 'digit' with the five keypoints
    annotations/val.json
    .complete

With MMPose installed, importing this module registers ``DigitsPoseDataset`` (mmpose
``DATASETS``), which generates the data on first use; evaluate it with mmpose's ``CocoMetric``.
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .digits import (_digit_alpha, _draw_clutter, _dump_json, _overlap, _prepare, _save_png,
                     canvas_params, load_source_digits, source_indices)

DEFAULT_POSE_ROOT = osp.join('data', 'digits_pose')
KEYPOINTS: Tuple[str, ...] = ('top', 'bottom', 'left', 'right', 'centre')
#: OKS falloff per keypoint (COCO's sigmas are 0.025..0.107); extremes are less sharp on a
#: blurred stroke than the centre of mass
SIGMAS: Tuple[float, ...] = (0.08, 0.08, 0.08, 0.08, 0.06)
_ENTRIES = {'train', 'val', 'annotations', '.complete'}

#: mmpose dataset meta information (``parse_pose_metainfo`` format)
DIGITS_POSE_METAINFO = dict(
    dataset_name='digits_pose',
    keypoint_info={
        0: dict(name='top', id=0, color=[255, 128, 0], type='upper', swap=''),
        1: dict(name='bottom', id=1, color=[255, 128, 0], type='lower', swap=''),
        2: dict(name='left', id=2, color=[0, 255, 0], type='upper', swap='right'),
        3: dict(name='right', id=3, color=[0, 128, 255], type='upper', swap='left'),
        4: dict(name='centre', id=4, color=[255, 0, 255], type='upper', swap='')},
    skeleton_info={
        0: dict(link=('top', 'centre'), id=0, color=[255, 128, 0]),
        1: dict(link=('bottom', 'centre'), id=1, color=[255, 128, 0]),
        2: dict(link=('left', 'centre'), id=2, color=[0, 255, 0]),
        3: dict(link=('right', 'centre'), id=3, color=[0, 128, 255])},
    joint_weights=[1.0] * len(KEYPOINTS),
    sigmas=list(SIGMAS))


def stroke_keypoints(alpha: np.ndarray, thr: float = 0.5) -> Optional[np.ndarray]:
    """The five keypoints ``(5, 2)`` (x, y at pixel centres) of a digit's alpha map, or None
    if it has no ink above ``thr``."""
    ys, xs = np.nonzero(alpha > thr)
    if len(xs) == 0:
        return None
    pts = [(xs[ys == ys.min()].mean(), ys.min()), (xs[ys == ys.max()].mean(), ys.max()),
           (xs.min(), ys[xs == xs.min()].mean()), (xs.max(), ys[xs == xs.max()].mean())]
    w = alpha[ys, xs]
    pts.append(((xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()))
    return np.asarray(pts, np.float32) + 0.5


def _place(rng, objects: List[Dict], canvas: int, w: int, h: int, local) -> Optional[tuple]:
    for _attempt in range(30):
        x = int(rng.integers(0, canvas - w + 1))
        y = int(rng.integers(0, canvas - h + 1))
        box = (x + local[0], y + local[1], x + local[2], y + local[3])
        if all(_overlap(box, o['box']) <= 0.05 for o in objects):
            return x, y, box
    return None


def _render(rng, images, labels, pool, canvas: int, size: Sequence[int],
            max_digits: int) -> Tuple[np.ndarray, List[Dict]]:
    """One canvas with 1..max_digits annotated digits."""
    base = rng.uniform(0, 80)
    img = np.full((canvas, canvas), round(base), np.uint8)
    _draw_clutter(img, rng, base)
    img = img.astype(np.float32)
    objects: List[Dict] = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        src = int(rng.choice(pool))
        h = int(rng.integers(size[0], size[1] + 1))
        w = max(8, min(canvas, int(round(h * rng.uniform(0.8, 1.1)))))
        alpha = _digit_alpha(images[src], w, h)
        kpts = stroke_keypoints(alpha)
        if kpts is None:
            continue
        local = (int(kpts[:, 0].min()) - 1, int(kpts[:, 1].min()) - 1,
                 int(np.ceil(kpts[:, 0].max())) + 1, int(np.ceil(kpts[:, 1].max())) + 1)
        spot = _place(rng, objects, canvas, w, h, local)
        if spot is None:
            continue
        x, y, box = spot
        ink = float(np.clip(base + rng.uniform(100, 170), 0, 255))
        img[y:y + h, x:x + w] = img[y:y + h, x:x + w] * (1 - alpha) + ink * alpha
        kpts = kpts + [x, y]
        vis = np.full(len(KEYPOINTS), 2, np.int64)
        for k in np.nonzero(rng.random(len(KEYPOINTS) - 1) < 0.125)[0]:
            cx, cy = kpts[k]  # hide it under a blob of background colour
            yy, xx = np.ogrid[:canvas, :canvas]
            img[(xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= 9] = base
            vis[k] = 1
        objects.append({'box': box, 'kpts': kpts, 'vis': vis, 'source': src})
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def _annotation(obj: Dict, ann_id: int, image_id: int) -> Dict:
    x0, y0, x1, y1 = obj['box']
    kpts = [v for (x, y), vis in zip(obj['kpts'].tolist(), obj['vis'].tolist())
            for v in (round(x, 2), round(y, 2), int(vis))]
    return {'id': ann_id, 'image_id': image_id, 'category_id': 1, 'iscrowd': 0,
            'bbox': [x0, y0, x1 - x0, y1 - y0], 'area': float((x1 - x0) * (y1 - y0)),
            'keypoints': kpts, 'num_keypoints': len(KEYPOINTS),
            'source_index': obj['source']}


def _write_split(out: str, split: str, num: int, rng, images, labels, canvas: int,
                 size: Sequence[int], max_digits: int) -> None:
    os.makedirs(osp.join(out, split))
    coco_images, anns = [], []
    for i in range(num):
        img, objects = _render(rng, images, labels, source_indices(split), canvas, size,
                               max_digits)
        _save_png(img, osp.join(out, split, f'{i:05d}.png'))
        coco_images.append({'id': i + 1, 'file_name': f'{i:05d}.png', 'width': canvas,
                            'height': canvas})
        anns += [_annotation(o, len(anns) + 1 + j, i + 1) for j, o in enumerate(objects)]
    _dump_json({'info': {'description': f'digits_pose {split}'}, 'licenses': [],
                'images': coco_images, 'annotations': anns,
                'categories': [{'id': 1, 'name': 'digit', 'supercategory': 'digit',
                                'keypoints': list(KEYPOINTS),
                                'skeleton': [[1, 5], [2, 5], [3, 5], [4, 5]]}]},
               osp.join(out, 'annotations', f'{split}.json'))


def prepare_digits_pose(root: str = DEFAULT_POSE_ROOT, num_train: int = 500,
                        num_val: int = 100, seed: int = 0, canvas: int = 96,
                        digit_size: Sequence[int] = (18, 36), max_digits: int = 3) -> bool:
    """Write the digits keypoint set (COCO format) into ``root`` unless it is complete.

    Args:
        root (str): Data root. Defaults to ``data/digits_pose``.
        num_train (int): Training canvases. Defaults to 500 (about 1,000 digits).
        num_val (int): Validation canvases. Defaults to 100.
        seed (int): Random seed; the same arguments always give identical files.
        canvas (int): Canvas side in pixels. Defaults to 96.
        digit_size (Sequence[int]): ``(min, max)`` digit height in pixels. Defaults to (18, 36).
        max_digits (int): Most digits per canvas. Defaults to 3.

    Returns:
        bool: True if the data was generated now, False if ``root`` was complete already.
    """
    params = canvas_params(num_train, num_val, seed, canvas, digit_size, max_digits, 8)

    def writer(out: str) -> None:
        images, labels = load_source_digits()
        os.makedirs(osp.join(out, 'annotations'))
        for split_id, (split, num) in enumerate((('train', num_train), ('val', num_val))):
            rng = np.random.default_rng([int(seed), 200 + split_id])
            _write_split(out, split, int(num), rng, images, labels, int(canvas),
                         params['digit_size'], int(max_digits))

    return _prepare(root, 'digits_pose', params, _ENTRIES, writer)


__all__ = ['DIGITS_POSE_METAINFO', 'KEYPOINTS', 'prepare_digits_pose', 'stroke_keypoints']

try:
    from mmpose.datasets.datasets.base import BaseCocoStyleDataset
    from mmpose.registry import DATASETS as MMPOSE_DATASETS
except ImportError:  # MMPose not installed: no pose data set to register
    pass
else:

    @MMPOSE_DATASETS.register_module()
    class DigitsPoseDataset(BaseCocoStyleDataset):
        """Top-down keypoints on handwritten digits (COCO format), generated on first use.

        Behaves like mmpose's ``CocoDataset`` (``ann_file``, ``data_prefix``, ``pipeline``,
        ``data_mode``, ...) with the five stroke keypoints of :data:`DIGITS_POSE_METAINFO`.

        Args:
            data_root (str): Where the data lives / is generated. Defaults to
                ``'data/digits_pose/'``.
            generate (bool): Generate missing data. Defaults to True.
            generate_cfg (dict, optional): Keyword arguments of :func:`prepare_digits_pose`.
                All data sets sharing a ``data_root`` must use the same values.
            **kwargs: Passed on to mmpose's ``BaseCocoStyleDataset``.
        """
        METAINFO = DIGITS_POSE_METAINFO

        def __init__(self, *args, data_root: str = 'data/digits_pose/', generate: bool = True,
                     generate_cfg: Optional[Dict] = None, **kwargs) -> None:
            if generate:
                prepare_digits_pose(data_root, **(generate_cfg or {}))
            super().__init__(*args, data_root=data_root, **kwargs)

    __all__.append('DigitsPoseDataset')
