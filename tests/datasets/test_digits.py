"""The offline digits data sets: deterministic, complete, atomic, loadable by mmdet/mmpretrain."""
import hashlib
import json
import multiprocessing as mp
import os
import os.path as osp

import numpy as np
import pytest

pytest.importorskip('sklearn')
from PIL import Image  # noqa: E402

from mmgfp.datasets import digits as D  # noqa: E402
from mmgfp.datasets import prepare_digits_cls, prepare_digits_det  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DET = dict(num_train=12, num_val=6, seed=3)
CLS = dict(num_train=30, num_val=12, seed=3)


def tree_digest(root: str) -> str:
    """SHA-256 over every file's relative path and bytes under ``root``."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = osp.join(dirpath, name)
            h.update(osp.relpath(path, root).encode())
            with open(path, 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def mtimes(root: str) -> dict:
    return {osp.join(d, f): os.stat(osp.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(root) for f in fs}


@pytest.fixture(scope='module')
def det_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('det') / 'digits_det')
    assert prepare_digits_det(root, **DET) is True
    return root


@pytest.fixture(scope='module')
def cls_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('cls') / 'digits_cls')
    assert prepare_digits_cls(root, **CLS) is True
    return root


# -- detection -------------------------------------------------------------------------------
def test_det_deterministic(det_root, tmp_path):
    again = str(tmp_path / 'again')
    prepare_digits_det(again, **DET)
    for split in ('train', 'val'):
        with open(osp.join(det_root, 'annotations', f'{split}.json'), 'rb') as f:
            a = f.read()
        with open(osp.join(again, 'annotations', f'{split}.json'), 'rb') as f:
            b = f.read()
        assert a == b
    assert tree_digest(det_root) == tree_digest(again)

    other = str(tmp_path / 'other_seed')
    prepare_digits_det(other, **dict(DET, seed=4))
    assert tree_digest(other) != tree_digest(det_root)


@pytest.mark.parametrize('split', ['train', 'val'])
def test_det_complete(det_root, split):
    with open(osp.join(det_root, 'annotations', f'{split}.json')) as f:
        coco = json.load(f)
    assert [c['name'] for c in coco['categories']] == [str(i) for i in range(10)]
    cat_ids = {c['id'] for c in coco['categories']}
    assert cat_ids == set(range(1, 11))
    assert len(coco['images']) == DET[f'num_{split}']
    images = {im['id']: im for im in coco['images']}
    per_image = {i: 0 for i in images}
    ann_ids = set()
    pool = set(D.source_indices(split).tolist())
    for ann in coco['annotations']:
        assert ann['id'] not in ann_ids
        ann_ids.add(ann['id'])
        assert ann['category_id'] in cat_ids
        assert ann['iscrowd'] == 0
        im = images[ann['image_id']]
        x, y, w, h = ann['bbox']
        assert w > 0 and h > 0 and ann['area'] == w * h
        assert 0 <= x and 0 <= y and x + w <= im['width'] and y + h <= im['height']
        assert ann['source_index'] in pool
        per_image[ann['image_id']] += 1
    assert all(1 <= n <= 5 for n in per_image.values())
    for im in coco['images']:
        path = osp.join(det_root, split, im['file_name'])
        assert osp.isfile(path)
        with Image.open(path) as img:
            assert img.size == (im['width'], im['height']) == (128, 128)


def test_det_sources_disjoint(det_root):
    sources = {}
    for split in ('train', 'val'):
        with open(osp.join(det_root, 'annotations', f'{split}.json')) as f:
            sources[split] = {a['source_index'] for a in json.load(f)['annotations']}
    assert sources['train'] and sources['val']
    assert not sources['train'] & sources['val']
    assert not set(D.source_indices('train')) & set(D.source_indices('val'))


def test_det_labels_match_sources(det_root):
    _, labels = D.load_source_digits()
    with open(osp.join(det_root, 'annotations', 'train.json')) as f:
        for ann in json.load(f)['annotations']:
            assert ann['category_id'] == labels[ann['source_index']] + 1


# -- atomic / idempotent generation ------------------------------------------------------------
def test_second_call_is_noop(tmp_path):
    root = str(tmp_path / 'd')
    assert prepare_digits_det(root, **DET) is True
    before = mtimes(root)
    assert prepare_digits_det(root, **DET) is False
    assert mtimes(root) == before


def test_half_written_dir_is_regenerated(tmp_path):
    root = str(tmp_path / 'd')
    prepare_digits_det(root, **DET)
    digest = tree_digest(root)
    os.remove(osp.join(root, D.MARKER))
    os.remove(osp.join(root, 'annotations', 'val.json'))
    assert prepare_digits_det(root, **DET) is True
    assert tree_digest(root) == digest
    # a bare, partly filled directory (e.g. an interrupted copy) too
    root2 = str(tmp_path / 'e')
    os.makedirs(osp.join(root2, 'train'))
    open(osp.join(root2, 'train', '00000.png'), 'wb').close()
    assert prepare_digits_det(root2, **DET) is True
    assert tree_digest(root2) == digest


def test_changed_parameters_regenerate(tmp_path):
    root = str(tmp_path / 'd')
    prepare_digits_det(root, **DET)
    with pytest.warns(UserWarning, match='other parameters'):
        assert prepare_digits_det(root, **dict(DET, num_val=3)) is True
    with open(osp.join(root, 'annotations', 'val.json')) as f:
        assert len(json.load(f)['images']) == 3


def test_foreign_directory_is_not_replaced(tmp_path):
    root = tmp_path / 'mine'
    root.mkdir()
    (root / 'precious.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='refusing'):
        prepare_digits_det(str(root), **DET)
    assert (root / 'precious.txt').read_text() == 'keep me'


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def flaky(array, path):
        calls.append(path)
        if len(calls) > 3:
            raise RuntimeError('disk full')
        Image.fromarray(array).save(path)

    monkeypatch.setattr(D, '_save_png', flaky)
    root = tmp_path / 'd'
    with pytest.raises(RuntimeError, match='disk full'):
        prepare_digits_det(str(root), **DET)
    assert not root.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith('.lock')] == []


def _prepare_in_child(root, queue):
    queue.put(prepare_digits_det(root, **DET))


def test_concurrent_processes_generate_once(tmp_path):
    root = str(tmp_path / 'd')
    ctx = mp.get_context('fork') if hasattr(os, 'fork') else mp.get_context()
    queue = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(root, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = sorted(queue.get(timeout=5) for _ in procs)
    assert results == [False, True]
    assert D.is_complete(root, 'digits_det', json.load(open(osp.join(root, D.MARKER)))['params'])


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match='num_train'):
        prepare_digits_det(str(tmp_path / 'x'), num_train=0)
    with pytest.raises(ValueError, match='digit_size'):
        prepare_digits_det(str(tmp_path / 'x'), canvas=32, digit_size=(14, 40))
    with pytest.raises(ValueError, match='split'):
        D.source_indices('test')


# -- classification ---------------------------------------------------------------------------
def test_cls_deterministic_and_complete(cls_root, tmp_path):
    again = str(tmp_path / 'again')
    prepare_digits_cls(again, **CLS)
    assert tree_digest(again) == tree_digest(cls_root)
    _, labels = D.load_source_digits()
    sources = {}
    for split in ('train', 'val'):
        with open(osp.join(cls_root, 'annotations', f'{split}.txt')) as f:
            lines = [line.split() for line in f if line.strip()]
        with open(osp.join(cls_root, 'annotations', f'{split}_sources.json')) as f:
            sources[split] = json.load(f)
        assert len(lines) == len(sources[split]) == CLS[f'num_{split}']
        for (name, label), src in zip(lines, sources[split]):
            assert int(label) == labels[src]
            with Image.open(osp.join(cls_root, split, name)) as img:
                assert img.size == (32, 32) and img.mode == 'RGB'
    assert not set(sources['train']) & set(sources['val'])
    assert prepare_digits_cls(cls_root, **CLS) is False


# -- loading through the OpenMMLab registries --------------------------------------------------
def test_mmdet_loads_digits(det_root):
    pytest.importorskip('mmdet')
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import DATASETS
    from mmdet.structures import DetDataSample

    init_default_scope('mmdet')
    base = Config.fromfile(osp.join(REPO, 'configs', '_base_', 'datasets', 'digits_det.py'))
    for loader, n in ((base.train_dataloader, DET['num_train']),
                      (base.val_dataloader, DET['num_val'])):
        cfg = loader.dataset.copy()
        cfg.update(data_root=det_root, generate_cfg=DET)
        dataset = DATASETS.build(cfg)
        assert type(dataset).__name__ == 'DigitsCocoDataset'
        assert dataset.metainfo['classes'] == tuple(str(i) for i in range(10))
        assert len(dataset) == n
        sample = dataset[0]
        assert tuple(sample['inputs'].shape) == (3, 128, 128)
        ds = sample['data_samples']
        assert isinstance(ds, DetDataSample)
        boxes = ds.gt_instances.bboxes.tensor
        assert boxes.shape[0] >= 1 and boxes.shape[1] == 4
        assert (boxes >= 0).all() and (boxes <= 128).all()
        labels = ds.gt_instances.labels
        assert ((labels >= 0) & (labels < 10)).all()


def test_mmpretrain_loads_digits(cls_root):
    pytest.importorskip('mmpretrain')
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import DATASETS
    from mmpretrain.structures import DataSample

    init_default_scope('mmpretrain')
    base = Config.fromfile(osp.join(REPO, 'configs', '_base_', 'datasets', 'digits_cls.py'))
    for loader, n in ((base.train_dataloader, CLS['num_train']),
                      (base.val_dataloader, CLS['num_val'])):
        cfg = loader.dataset.copy()
        cfg.update(data_root=cls_root, generate_cfg=CLS)
        dataset = DATASETS.build(cfg)
        assert type(dataset).__name__ == 'DigitsClsDataset'
        assert len(dataset) == n
        assert dataset.CLASSES == tuple(str(i) for i in range(10))
        sample = dataset[0]
        assert tuple(sample['inputs'].shape) == (3, 32, 32)
        assert isinstance(sample['data_samples'], DataSample)
        assert 0 <= int(sample['data_samples'].gt_label) < 10
    with pytest.raises(ValueError, match='split'):
        DATASETS.build(dict(type='DigitsClsDataset', data_root=cls_root, split='test'))


def test_rendering_is_within_range():
    rng = np.random.default_rng(0)
    images, labels = D.load_source_digits()
    img, objects = D._render_det_image(rng, images, labels, D.source_indices('val'), 128,
                                       (14, 40), 5)
    assert img.dtype == np.uint8 and img.shape == (128, 128)
    assert 1 <= len(objects) <= 5
    for o in objects:
        x0, y0, x1, y1 = o['box']
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128


@pytest.mark.parametrize('missing', ['mmdet', 'mmpretrain'])
def test_imports_without_openmmlab_package(missing):
    """`mmgfp.datasets` imports, and registers what it can, when mmdet or mmpretrain is absent."""
    import subprocess
    import sys
    code = (f'import sys; sys.modules[{missing!r}] = None\n'
            'import mmgfp.datasets as d\n'
            'print(sorted(n for n in d.__all__ if n.startswith("Digits")))\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    from importlib.util import find_spec
    by_package = {'mmdet': 'DigitsCocoDataset', 'mmpretrain': 'DigitsClsDataset',
                  'mmpose': 'DigitsPoseDataset', 'mmseg': 'DigitsSegDataset'}
    present = sorted(name for pkg, name in by_package.items()
                     if pkg != missing and find_spec(pkg) is not None)
    assert out.stdout.strip().splitlines()[-1] == repr(present)
