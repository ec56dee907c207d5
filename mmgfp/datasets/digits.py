"""Small, real, offline data sets built from scikit-learn's handwritten digits.

No COCO or ImageNet is needed to try pruning end to end: :func:`prepare_digits_det` draws the
1,797 8x8 digits of :func:`sklearn.datasets.load_digits` onto cluttered 128x128 canvases and
writes a COCO-style detection set, and :func:`prepare_digits_cls` writes a small folder-style
classification set. Both are deterministic for a given seed, split the source digits by index
(sources ``0..1399`` feed the training split, ``1400..1796`` the validation split, so the two never
share a handwritten sample), and are written atomically: everything goes to a temporary sibling
directory that is renamed into place only after a marker file (``.complete``) has been written
last, under an exclusive file lock so concurrent processes (e.g. distributed ranks or dataloader
workers) never clash.

Layout of a detection root (default ``data/digits_det``)::

    train/00000.png ...          canvas images (8-bit grayscale PNG; loaders read them as colour)
    val/00000.png ...
    annotations/train.json       COCO format, categories '0'..'9' with ids 1..10
    annotations/val.json
    .complete                    marker with the generation parameters (written last)

Layout of a classification root (default ``data/digits_cls``)::

    train/00000.png ...          RGB PNGs, ``size`` x ``size``
    val/00000.png ...
    annotations/train.txt        ``<file name> <label>`` per line (mmpretrain CustomDataset)
    annotations/val.txt
    annotations/train_sources.json, annotations/val_sources.json   source digit index per image
    .complete

When MMDetection / MMPretrain are installed, importing this module registers
``DigitsCocoDataset`` (mmdet ``DATASETS``) and ``DigitsClsDataset`` (mmpretrain ``DATASETS``),
which generate their data on first use.
"""
import contextlib
import json
import os
import os.path as osp
import shutil
import tempfile
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

DIGIT_CLASSES: Tuple[str, ...] = tuple(str(i) for i in range(10))
#: One colour per digit class (RGB), used by the visualisers.
DIGIT_PALETTE: List[Tuple[int, int, int]] = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128)]

#: Source digits with an index below this feed the training splits, the rest validation.
SOURCE_SPLIT = 1400
NUM_SOURCES = 1797
MARKER = '.complete'
GENERATOR_VERSION = 2

DEFAULT_DET_ROOT = osp.join('data', 'digits_det')
DEFAULT_CLS_ROOT = osp.join('data', 'digits_cls')

_DET_ENTRIES = {'train', 'val', 'annotations', MARKER}
_CLS_ENTRIES = {'train', 'val', 'annotations', MARKER}


# ---------------------------------------------------------------------------------------------
# source digits
# ---------------------------------------------------------------------------------------------
def load_source_digits() -> Tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's digits as ``(images, labels)``.

    Returns:
        tuple: ``images`` float32 of shape (1797, 8, 8) scaled to [0, 1] and ``labels`` int64 of
        shape (1797,).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError('the digits data sets are drawn from scikit-learn\'s bundled '
                          'handwritten digits; install it with `pip install scikit-learn`') from e
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    if images.shape != (NUM_SOURCES, 8, 8):
        raise RuntimeError(f'unexpected shape of sklearn digits: {images.shape}')
    return images, labels


def source_indices(split: str) -> np.ndarray:
    """Indices of the source digits a split may use (disjoint between 'train' and 'val')."""
    if split == 'train':
        return np.arange(0, SOURCE_SPLIT)
    if split == 'val':
        return np.arange(SOURCE_SPLIT, NUM_SOURCES)
    raise ValueError(f'split must be "train" or "val", but got {split!r}')


def _digit_alpha(image8: np.ndarray, width: int, height: int, angle: float = 0.0) -> np.ndarray:
    """Upscale an 8x8 digit to ``height`` x ``width`` and return a crisp alpha map in [0, 1]."""
    from PIL import Image
    img = Image.fromarray(np.clip(image8 * 255.0, 0, 255).astype(np.uint8), mode='L')
    img = img.resize((width, height), Image.BILINEAR)
    if angle:
        img = img.rotate(angle, resample=Image.BILINEAR, expand=False, fillcolor=0)
    alpha = np.asarray(img, dtype=np.float32) / 255.0
    # stretch the soft bilinear ramp into strokes with a short anti-aliased edge
    return np.clip((alpha - 0.15) / 0.55, 0.0, 1.0)


def _tight_box(alpha: np.ndarray, thr: float = 0.3) -> Optional[Tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` (exclusive ends) of the pixels above ``thr``, or None if none."""
    ys, xs = np.nonzero(alpha > thr)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection of two xyxy boxes divided by the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(small, 1)


def _save_png(array: np.ndarray, path: str) -> None:
    from PIL import Image
    mode = 'L' if array.ndim == 2 else 'RGB'
    Image.fromarray(array, mode=mode).save(path, format='PNG', optimize=False, compress_level=9)


def _dump_json(obj: Any, path: str) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f, sort_keys=True, separators=(',', ':'))
        f.write('\n')


# ---------------------------------------------------------------------------------------------
# atomic, locked generation
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _exclusive_lock(path: str) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (yields False where ``fcntl`` is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rely on the atomic rename alone
        fcntl = None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fcntl is not None
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_marker(root: str) -> Optional[Dict]:
    try:
        with open(osp.join(root, MARKER), encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(root: str, kind: str, params: Dict) -> bool:
    """Whether ``root`` holds a finished ``kind`` data set generated with ``params``."""
    marker = _read_marker(root)
    return (marker is not None and marker.get('kind') == kind
            and marker.get('version') == GENERATOR_VERSION and marker.get('params') == params)


def _prepare(root: str, kind: str, params: Dict, entries: set,
             writer: Callable[[str], None]) -> bool:
    """Generate a data set into ``root`` atomically unless it is already complete.

    Returns:
        bool: True if the data was (re)generated, False if it was complete already.
    """
    root = osp.abspath(osp.expanduser(str(root)))
    if is_complete(root, kind, params):
        return False
    parent, name = osp.split(root)
    os.makedirs(parent, exist_ok=True)
    with _exclusive_lock(osp.join(parent, f'.{name}.lock')) as locked:
        if is_complete(root, kind, params):  # another process finished it meanwhile
            return False
        if osp.lexists(root):
            if not osp.isdir(root) or osp.islink(root):
                raise FileExistsError(f'{root} exists and is not a directory; remove it or pick '
                                      'another data root')
            unknown = sorted(set(os.listdir(root)) - entries)
            if unknown:
                raise FileExistsError(
                    f'{root} holds files the {kind} generator did not write ({unknown[:5]}) and '
                    f'no valid {MARKER} marker; refusing to replace it. Remove the directory or '
                    'pick another data root.')
            marker = _read_marker(root)
            if marker is not None:
                warnings.warn(f'{root} was generated with other parameters or by another '
                              f'generator version ({marker.get("params")}, version '
                              f'{marker.get("version")}); regenerating it with {params}, '
                              f'version {GENERATOR_VERSION}')
        if locked:  # nobody else can be generating: leftovers of crashed runs can go
            for entry in os.listdir(parent):
                if entry.startswith((f'.{name}.tmp-', f'.{name}.old-')):
                    shutil.rmtree(osp.join(parent, entry), ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=f'.{name}.tmp-', dir=parent)
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the data set is not
            writer(tmp)
            _dump_json({'kind': kind, 'version': GENERATOR_VERSION, 'params': params},
                       osp.join(tmp, MARKER))
            old = None
            if osp.lexists(root):
                old = tempfile.mkdtemp(prefix=f'.{name}.old-', dir=parent)
                os.rmdir(old)
                os.replace(root, old)
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return True


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f'`{key}` must be a positive integer, but got {value!r}')


def canvas_params(num_train: int, num_val: int, seed: int, canvas: int,
                  digit_size: Sequence[int], max_digits: int, min_size: int = 6) -> dict:
    """Check the arguments of a canvas data set and return them as the plain ``params`` that
    mark a complete data root (the detection, keypoint and segmentation sets share them)."""
    _check_positive(num_train=num_train, num_val=num_val, canvas=canvas, max_digits=max_digits)
    if len(digit_size) != 2 or not min_size <= digit_size[0] <= digit_size[1] <= canvas:
        raise ValueError(f'`digit_size` must be (min, max) with {min_size} <= min <= max <= '
                         f'canvas ({canvas}), but got {tuple(digit_size)!r}')
    return {'num_train': int(num_train), 'num_val': int(num_val), 'seed': int(seed),
            'canvas': int(canvas), 'digit_size': [int(v) for v in digit_size],
            'max_digits': int(max_digits)}

# ---------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------
def _draw_clutter(canvas: np.ndarray, rng: np.random.Generator, background: float) -> None:
    """Draw random lines and small blobs onto a grayscale canvas (in place)."""
    from PIL import Image, ImageDraw
    size = canvas.shape[0]
    img = Image.fromarray(canvas, mode='L')
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
        shade = background + rng.choice([-1, 1]) * rng.uniform(40, 110)
        draw.line((x0, y0, x1, y1), fill=int(np.clip(shade, 0, 255)),
                  width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(1, 4))
        shade = background + rng.choice([-1, 1]) * rng.uniform(40, 110)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(np.clip(shade, 0, 255)))
    canvas[...] = np.asarray(img)


def _render_det_image(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
                      pool: np.ndarray, canvas: int, digit_size: Tuple[int, int],
                      max_digits: int) -> Tuple[np.ndarray, List[Dict]]:
    """Draw 1..max_digits digits from ``pool`` onto one cluttered canvas."""
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32) / canvas
    light = rng.random() < 0.25  # a quarter of the canvases: dark digits on light paper
    base = rng.uniform(170, 245) if light else rng.uniform(0, 80)
    gx, gy = rng.uniform(-35, 35, 2)
    background = np.clip(base + gx * (xx - 0.5) + gy * (yy - 0.5), 0, 255)
    img = np.round(background).astype(np.uint8)
    _draw_clutter(img, rng, base)
    img = img.astype(np.float32)

    objects: List[Dict] = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        src = int(rng.choice(pool))
        h = int(rng.integers(digit_size[0], digit_size[1] + 1))
        w = max(6, int(round(h * rng.uniform(0.8, 1.1))))
        w = min(w, canvas)
        alpha = _digit_alpha(images[src], w, h)
        local = _tight_box(alpha)
        if local is None:
            continue
        for _attempt in range(30):
            x = int(rng.integers(0, canvas - w + 1))
            y = int(rng.integers(0, canvas - h + 1))
            box = (x + local[0], y + local[1], x + local[2], y + local[3])
            if all(_overlap(box, o['box']) <= 0.15 for o in objects):
                break
        else:
            continue
        contrast = rng.uniform(90, 170)
        ink = base - contrast if light else base + contrast
        ink = float(np.clip(ink, 0, 255))
        patch = img[y:y + h, x:x + w]
        img[y:y + h, x:x + w] = patch * (1 - alpha) + ink * alpha
        objects.append({'box': box, 'label': int(labels[src]), 'source': src})
    speckle = rng.random(img.shape) < rng.uniform(0.0, 0.02)
    img[speckle] = rng.uniform(0, 255, int(speckle.sum()))
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def _write_det_split(out: str, split: str, num: int, rng: np.random.Generator,
                     images: np.ndarray, labels: np.ndarray, canvas: int,
                     digit_size: Tuple[int, int], max_digits: int, seed: int) -> None:
    os.makedirs(osp.join(out, split))
    pool = source_indices(split)
    coco_images, annotations = [], []
    for i in range(num):
        img, objects = _render_det_image(rng, images, labels, pool, canvas, digit_size,
                                         max_digits)
        file_name = f'{i:05d}.png'
        _save_png(img, osp.join(out, split, file_name))
        coco_images.append({'id': i + 1, 'file_name': file_name, 'width': canvas,
                            'height': canvas})
        for obj in objects:
            x0, y0, x1, y1 = obj['box']
            annotations.append({
                'id': len(annotations) + 1, 'image_id': i + 1, 'category_id': obj['label'] + 1,
                'bbox': [x0, y0, x1 - x0, y1 - y0], 'area': (x1 - x0) * (y1 - y0),
                'iscrowd': 0, 'source_index': obj['source']})
    coco = {
        'info': {'description': f'digits_det {split}: scikit-learn handwritten digits on '
                                f'{canvas}x{canvas} canvases', 'version': GENERATOR_VERSION,
                 'seed': seed},
        'licenses': [],
        'images': coco_images,
        'annotations': annotations,
        'categories': [{'id': k + 1, 'name': name, 'supercategory': 'digit'}
                       for k, name in enumerate(DIGIT_CLASSES)],
    }
    _dump_json(coco, osp.join(out, 'annotations', f'{split}.json'))


def prepare_digits_det(root: str = DEFAULT_DET_ROOT,
                       num_train: int = 1000,
                       num_val: int = 200,
                       seed: int = 0,
                       canvas: int = 128,
                       digit_size: Sequence[int] = (14, 40),
                       max_digits: int = 5) -> bool:
    """Write the digits detection set (COCO format) into ``root`` unless it is complete.

    Each canvas holds 1..``max_digits`` digits, each upscaled to a height drawn from
    ``digit_size`` (pixels) and placed so that no two boxes overlap by more than 15% of the
    smaller one, over a gradient background with random lines, dots and speckle noise. Boxes
    are the tight extent of each digit's strokes.

    Args:
        root (str): Data root; relative paths are taken from the current directory.
            Defaults to ``data/digits_det``.
        num_train (int): Training canvases. Defaults to 1000.
        num_val (int): Validation canvases. Defaults to 200.
        seed (int): Random seed; the same arguments always give identical files.
        canvas (int): Canvas side in pixels. Defaults to 128.
        digit_size (Sequence[int]): ``(min, max)`` digit height in pixels. Defaults to (14, 40).
        max_digits (int): Most digits per canvas. Defaults to 5.

    Returns:
        bool: True if the data was generated now, False if ``root`` was complete already.
    """
    params = canvas_params(num_train, num_val, seed, canvas, digit_size, max_digits)

    def writer(out: str) -> None:
        images, labels = load_source_digits()
        os.makedirs(osp.join(out, 'annotations'))
        for split_id, (split, num) in enumerate((('train', num_train), ('val', num_val))):
            rng = np.random.default_rng([int(seed), split_id])
            _write_det_split(out, split, int(num), rng, images, labels, int(canvas),
                             (int(digit_size[0]), int(digit_size[1])), int(max_digits),
                             int(seed))

    return _prepare(root, 'digits_det', params, _DET_ENTRIES, writer)


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
def _cls_colours(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A dark, slightly tinted background and a light, slightly tinted ink colour."""
    bg = rng.uniform(0, 70) + rng.uniform(-15, 15, 3)
    ink = rng.uniform(170, 255) + rng.uniform(-30, 30, 3)
    return np.clip(bg, 0, 255), np.clip(ink, 0, 255)


def _render_cls_image(rng: np.random.Generator, image8: np.ndarray, size: int) -> np.ndarray:
    """One RGB ``size`` x ``size`` image of a digit with mild augmentation and noise."""
    h = int(round(size * rng.uniform(0.6, 0.9)))
    w = max(4, min(size, int(round(h * rng.uniform(0.8, 1.1)))))
    alpha = _digit_alpha(image8, w, h, angle=float(rng.uniform(-12, 12)))
    bg, ink = _cls_colours(rng)
    img = np.empty((size, size, 3), np.float32)
    img[...] = bg
    x = int(rng.integers(0, size - w + 1))
    y = int(rng.integers(0, size - h + 1))
    a = alpha[..., None]
    img[y:y + h, x:x + w] = img[y:y + h, x:x + w] * (1 - a) + ink * a
    img += rng.normal(0.0, rng.uniform(0, 8), img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def prepare_digits_cls(root: str = DEFAULT_CLS_ROOT,
                       num_train: int = SOURCE_SPLIT,
                       num_val: int = NUM_SOURCES - SOURCE_SPLIT,
                       seed: int = 0,
                       size: int = 32) -> bool:
    """Write the digits classification set into ``root`` unless it is complete.

    Image ``i`` of a split shows source digit ``pool[i % len(pool)]`` of that split's pool
    (1,400 training and 397 validation sources), so the defaults use every source digit exactly
    once; larger counts reuse sources with fresh augmentation (scale, aspect, offset, rotation
    within 12 degrees, slightly tinted light ink on a dark background, Gaussian noise).

    Args:
        root (str): Data root. Defaults to ``data/digits_cls``.
        num_train (int): Training images. Defaults to 1400.
        num_val (int): Validation images. Defaults to 397.
        seed (int): Random seed; the same arguments always give identical files.
        size (int): Image side in pixels. Defaults to 32.

    Returns:
        bool: True if the data was generated now, False if ``root`` was complete already.
    """
    _check_positive(num_train=num_train, num_val=num_val, size=size)
    if size < 8:
        raise ValueError(f'`size` must be at least 8 pixels, but got {size}')
    params = {'num_train': int(num_train), 'num_val': int(num_val), 'seed': int(seed),
              'size': int(size)}

    def writer(out: str) -> None:
        images, labels = load_source_digits()
        os.makedirs(osp.join(out, 'annotations'))
        for split_id, (split, num) in enumerate((('train', num_train), ('val', num_val))):
            rng = np.random.default_rng([int(seed), 100 + split_id])
            pool = source_indices(split)
            os.makedirs(osp.join(out, split))
            lines, sources = [], []
            for i in range(int(num)):
                src = int(pool[i % len(pool)])
                file_name = f'{i:05d}.png'
                _save_png(_render_cls_image(rng, images[src], int(size)),
                          osp.join(out, split, file_name))
                lines.append(f'{file_name} {int(labels[src])}\n')
                sources.append(src)
            with open(osp.join(out, 'annotations', f'{split}.txt'), 'w') as f:
                f.writelines(lines)
            _dump_json(sources, osp.join(out, 'annotations', f'{split}_sources.json'))

    return _prepare(root, 'digits_cls', params, _CLS_ENTRIES, writer)


# ---------------------------------------------------------------------------------------------
# registered data sets
# ---------------------------------------------------------------------------------------------
__all__ = ['DIGIT_CLASSES', 'DIGIT_PALETTE', 'load_source_digits', 'source_indices',
           'is_complete', 'prepare_digits_det', 'prepare_digits_cls']

try:
    from mmdet.datasets import CocoDataset
    from mmdet.registry import DATASETS as MMDET_DATASETS
except ImportError:  # MMDetection not installed: no detection data set to register
    pass
else:

    @MMDET_DATASETS.register_module()
    class DigitsCocoDataset(CocoDataset):
        """COCO-format detection set of handwritten digits, generated on first use.

        Behaves like :class:`mmdet.datasets.CocoDataset` (``ann_file``, ``data_prefix``,
        ``pipeline``, ...); before loading, :func:`prepare_digits_det` writes the data into
        ``data_root`` if it is missing or incomplete.

        Args:
            data_root (str): Where the data lives / is generated. Defaults to
                ``'data/digits_det/'``.
            generate (bool): Generate missing data. Defaults to True.
            generate_cfg (dict, optional): Keyword arguments of :func:`prepare_digits_det`
                (``num_train``, ``num_val``, ``seed``, ``canvas``, ...). All data sets sharing
                a ``data_root`` must use the same values. Defaults to None.
            **kwargs: Passed on to :class:`mmdet.datasets.CocoDataset`.
        """
        METAINFO = {'classes': DIGIT_CLASSES, 'palette': list(DIGIT_PALETTE)}

        def __init__(self,
                     *args,
                     data_root: str = 'data/digits_det/',
                     generate: bool = True,
                     generate_cfg: Optional[Dict] = None,
                     **kwargs) -> None:
            if generate:
                prepare_digits_det(data_root, **(generate_cfg or {}))
            super().__init__(*args, data_root=data_root, **kwargs)

    __all__.append('DigitsCocoDataset')

try:
    from mmpretrain.datasets import CustomDataset
    from mmpretrain.registry import DATASETS as MMPRETRAIN_DATASETS
except ImportError:  # MMPretrain not installed: no classification data set to register
    pass
else:

    @MMPRETRAIN_DATASETS.register_module()
    class DigitsClsDataset(CustomDataset):
        """Handwritten-digit classification set (10 classes), generated on first use.

        Args:
            data_root (str): Where the data lives / is generated. Defaults to
                ``'data/digits_cls/'``.
            split (str): ``'train'`` or ``'val'``; chooses the default ``ann_file``
                (``annotations/<split>.txt``) and ``data_prefix`` (``<split>``).
                Defaults to 'train'.
            ann_file (str): Overrides the split's annotation file. Defaults to ''.
            data_prefix (str | dict): Overrides the split's image folder. Defaults to ''.
            generate (bool): Generate missing data. Defaults to True.
            generate_cfg (dict, optional): Keyword arguments of :func:`prepare_digits_cls`
                (``num_train``, ``num_val``, ``seed``, ``size``). Defaults to None.
            **kwargs: Passed on to :class:`mmpretrain.datasets.CustomDataset`.
        """
        METAINFO = {'classes': DIGIT_CLASSES}

        def __init__(self,
                     data_root: str = 'data/digits_cls/',
                     split: str = 'train',
                     ann_file: str = '',
                     data_prefix: Any = '',
                     generate: bool = True,
                     generate_cfg: Optional[Dict] = None,
                     **kwargs) -> None:
            if split not in ('train', 'val'):
                raise ValueError(f'split must be "train" or "val", but got {split!r}')
            if generate:
                prepare_digits_cls(data_root, **(generate_cfg or {}))
            self.split = split
            super().__init__(
                data_root=data_root,
                ann_file=ann_file or f'annotations/{split}.txt',
                data_prefix=data_prefix or split,
                **kwargs)

    __all__.append('DigitsClsDataset')
