"""Every config under configs/ parses; every digits model config builds its model (no training).

The COCO/ImageNet configs (configs/coco, configs/imagenet) load model-zoo checkpoints and
deployed compact models instead of digits baselines: tests/configs/test_full_configs.py checks
them.
"""
import glob
import importlib.util
import os.path as osp
import re

import pytest

pytest.importorskip('mmengine')
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True))
MODEL_CONFIGS = [c for c in CONFIGS if f'{osp.sep}_base_{osp.sep}' not in c]
DIGITS_CONFIGS = [c for c in MODEL_CONFIGS if f'{osp.sep}digits{osp.sep}' in c]


def rel(path: str) -> str:
    return osp.relpath(path, REPO)


def registry(scope: str):
    """The ``MODELS`` registry of a codebase (every OpenMMLab 2.x package has
    ``<scope>.registry``)."""
    import importlib
    if scope == 'mmyolo':
        import mmgfp.yolo  # noqa: F401  (imports mmyolo past its version gate)
    assert scope in ('mmdet', 'mmpretrain', 'mmseg', 'mmpose', 'mmyolo'), \
        f'unexpected default_scope {scope!r}'
    return importlib.import_module(f'{scope}.registry').MODELS


def walk(obj):
    """Yield every dict inside a (nested) config value."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from walk(v)


def test_configs_found():
    assert MODEL_CONFIGS, 'no configs found under configs/'
    assert DIGITS_CONFIGS, 'no configs found under configs/digits/'


@pytest.mark.parametrize('path', CONFIGS, ids=rel)
def test_config_parses(path):
    cfg = Config.fromfile(path)
    assert len(cfg.keys()) > 0


@pytest.mark.parametrize('path', DIGITS_CONFIGS, ids=rel)
def test_config_builds_model(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports['imports'][0] == 'mmgfp'
    assert cfg.custom_imports['allow_failed_imports'] is False
    scope = cfg.default_scope
    if importlib.util.find_spec(scope) is None:  # (mmyolo cannot be imported without mmgfp)
        pytest.skip(f'{scope} is not installed')
    if scope == 'mmyolo':  # configs import it through mmgfp's bridge of its version gate
        assert 'mmgfp.yolo' in cfg.custom_imports['imports']
    # nothing may try to download weights: no training machine here has internet
    for d in walk(cfg.model):
        assert d.get('type') != 'Pretrained', f'{rel(path)} asks for pretrained weights: {d}'
        assert 'pretrained' not in d or d['pretrained'] is None
    init_default_scope(scope)
    model = registry(scope).build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize('path', [c for c in DIGITS_CONFIGS if '_gfp_' in osp.basename(c)],
                         ids=rel)
def test_prune_config_loads_its_baseline(path):
    """Checkpoint conventions of the pruning configs.

    ``<baseline>_gfp_{acts,flops}.py`` loads the baseline's final checkpoint from the default
    work dir, ``work_dirs/<baseline>/iter_<max_iters>.pth`` (``epoch_<max_epochs>.pth`` for
    epoch-based baselines); ``<baseline>_gfp_finetune.py`` loads a checkpoint (and the matching
    channel spec) that a pruning config saves when crossing one of its ``save_thresholds``.
    """
    cfg = Config.fromfile(path)
    hooks = [h for h in cfg.get('custom_hooks', []) if h['type'] == 'FisherPruningHook']
    assert len(hooks) == 1
    hook = hooks[0]
    name = osp.basename(path)
    stem = re.sub(r'_gfp_.*\.py$', '', name)
    base_path = osp.join(osp.dirname(path), stem + '.py')
    assert osp.isfile(base_path), f'{name} has no baseline {stem}.py'
    if name.endswith('_gfp_finetune.py'):
        assert hook['prune'] is False and hook['init_spec']
        m = re.fullmatch(rf'work_dirs/({stem}_gfp_\w+)/pruned_(\w+)_(\d\.\d\d)\.pth',
                         cfg.load_from)
        assert m, cfg.load_from
        assert hook['init_spec'] == cfg.load_from[:-len('.pth')] + '.json'
        pruning = Config.fromfile(osp.join(osp.dirname(path), m.group(1) + '.py'))
        phook = [h for h in pruning.custom_hooks if h['type'] == 'FisherPruningHook'][0]
        assert m.group(2) == phook['target_metric']
        assert float(m.group(3)) in [round(t, 2) for t in phook['save_thresholds']]
        return
    base = Config.fromfile(base_path)
    if base.train_cfg.get('max_iters') is not None:
        expected = f'work_dirs/{stem}/iter_{base.train_cfg.max_iters}.pth'
    else:
        expected = f'work_dirs/{stem}/epoch_{base.train_cfg.max_epochs}.pth'
    assert cfg.load_from == expected
    distilled = any(h.get('type') == 'GFPDistillHook' for h in cfg.custom_hooks)
    assert hook['delta'] in ('acts', 'flops', 'latency') and name.endswith(
        f'_gfp_{hook["delta"]}{"_kd" if distilled else ""}.py')
    if hook['delta'] == 'latency':  # a latency target needs the table it is measured with
        assert hook['target_metric'] == 'latency' and hook.get('latency_table')
        from mmgfp.hooks import FisherPruningHook
        FisherPruningHook(**{k: v for k, v in hook.items() if k != 'type'})  # settings check
    assert hook.get('prune', True) is True
    assert round(hook['target'], 2) in [round(t, 2) for t in hook['save_thresholds']]
