"""The MMYOLO GFP configs (configs/yolo): YOLOv8-s and YOLOv5-s on COCO.

Each model has ``<stem>_gfp_acts.py`` (prune MMYOLO's model-zoo checkpoint with the hook) and
``<stem>_gfp_finetune.py`` (train the compact model that ``tools/deploy_pruned.py`` writes).
Checked without GPUs or data: they parse, inherit the MMYOLO config they name, load its
model-zoo checkpoint, keep its hooks, and (slow) the model is grouped, masked at random,
deployed where the fine-tune config reads, and rebuilt from it with the same outputs.
"""
import glob
import importlib.util
import os.path as osp

import pytest
import torch

if importlib.util.find_spec('mmyolo') is None:  # importing it needs mmgfp's bridge
    pytest.skip('mmyolo is not installed (pip install -e .[yolo])', allow_module_level=True)

import yaml  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import HOOKS  # noqa: E402
from mmengine.utils import get_installed_path  # noqa: E402

import mmgfp  # noqa: F401,E402
from mmgfp.apis.checking.check import build_model, random_masks, rel_diff  # noqa: E402
from mmgfp.apis.deploying.deploy import deploy, load_strict  # noqa: E402
from mmgfp.apis.inputs import demo_batch, loss_forward, tensor_forward  # noqa: E402
from mmgfp.core import FisherPruner, build_groups, make_spec  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MODELS = {  # stem -> the MMYOLO config it inherits
    'yolov8_s': 'mmyolo::yolov8/yolov8_s_syncbn_fast_8xb16-500e_coco.py',
    'yolov5_s': 'mmyolo::yolov5/yolov5_s-v61_syncbn_fast_8xb16-300e_coco.py',
}
# where the pruning groups must reach (YOLOv5's head is one output conv per level)
PARTS = {'yolov8_s': {'backbone', 'neck', 'bbox_head'}, 'yolov5_s': {'backbone', 'neck'}}
STEMS = list(MODELS)


def path_of(stem: str, kind: str) -> str:
    return osp.join(REPO, 'configs', 'yolo', f'{stem}_{kind}.py')


def zoo_weights(base: str) -> str:
    scope, rel = base.split('::')
    folder = osp.join(get_installed_path(scope), '.mim', 'configs', rel.split('/')[0])
    with open(osp.join(folder, 'metafile.yml')) as f:
        meta = yaml.safe_load(f)
    found = [m['Weights'] for m in meta['Models'] if m.get('Config') == f'configs/{rel}']
    assert len(found) == 1, f'{base}: {len(found)} metafile entries'
    return found[0]


def test_every_config_is_checked():
    found = set(glob.glob(osp.join(REPO, 'configs', 'yolo', '*.py')))
    assert found == {path_of(s, k) for s in STEMS for k in ('gfp_acts', 'gfp_finetune')}


@pytest.mark.parametrize('stem', STEMS)
def test_prune_config(stem):
    cfg = Config.fromfile(path_of(stem, 'gfp_acts'))
    assert cfg.custom_imports == dict(imports=['mmgfp', 'mmgfp.yolo'],
                                      allow_failed_imports=False)
    assert cfg.default_scope == 'mmyolo'
    assert cfg.load_from == zoo_weights(MODELS[stem])
    *kept, gfp = cfg.custom_hooks
    assert [h['type'] for h in kept][0] == 'EMAHook'  # the base's hooks stay
    hook = HOOKS.build(gfp)
    assert hook.delta == 'acts' and hook.target == 0.5 and hook.target in hook.save_thresholds
    # a constant, low lr: no warm-up restarting from the zoo weights
    assert cfg.param_scheduler == [] and cfg.optim_wrapper.optimizer.lr == 0.001
    assert cfg.default_hooks.param_scheduler == dict(type='ParamSchedulerHook')
    with open(path_of(stem, 'gfp_acts')) as f:
        text = f.read()
    for cmd in (f'tools/train.py configs/yolo/{stem}_gfp_acts.py',
                f'tools/deploy_pruned.py configs/yolo/{stem}_gfp_acts.py',
                f'tools/train.py configs/yolo/{stem}_gfp_finetune.py'):
        assert cmd in text


@pytest.mark.slow
@pytest.mark.parametrize('stem', STEMS)
def test_groups_deploy_and_finetune_model(stem, tmp_path):
    """Group the pruning config's model, mask it at random, deploy as its header says, and
    build the fine-tune config's model from what deploy wrote: same class, same outputs."""
    prune_path = path_of(stem, 'gfp_acts')
    cfg = Config.fromfile(prune_path)
    torch.manual_seed(0)
    model = build_model(cfg, init=False)
    data = demo_batch(model, 2, (64, 64), seed=0)
    model.train()
    groups = build_groups(model, loss_forward(data))
    reached = {p.split('.')[0] for g in groups.prunable for p in g.producers}
    assert PARTS[stem] <= reached
    pruner = FisherPruner(model, groups, 'acts', 1, 8)
    random_masks(pruner, 0.5, seed=0)
    pruner.masker.attach()
    model.eval()
    with torch.no_grad():
        ref = tensor_forward(data)(model)
    spec = make_spec(pruner.masker)
    pruner.masker.detach()
    ckpt = tmp_path / 'pruned_flops_0.50.pth'
    torch.save({'state_dict': model.state_dict(), 'mmgfp': {'spec': spec}}, ckpt)

    ft = Config.fromfile(path_of(stem, 'gfp_finetune'))
    assert ft.model.type == 'GFPCompactModel'
    out_dir = tmp_path / osp.dirname(ft.load_from)
    written = deploy(prune_path, str(ckpt), str(out_dir), logger=lambda *a: None)
    assert written['checkpoint'] == str(tmp_path / ft.load_from)
    assert written['spec'] == str(tmp_path / ft.model.gfp_channel_spec)
    ft.model.gfp_channel_spec = written['spec']
    compact = build_model(ft, init=False)
    assert type(compact) is type(model)
    state = torch.load(written['checkpoint'], map_location='cpu', weights_only=True)
    load_strict(compact, state['state_dict'], 'compact.pth')
    assert sum(p.numel() for p in compact.parameters()) < 0.8 * sum(
        p.numel() for p in model.parameters())
    compact.eval()
    with torch.no_grad():
        assert rel_diff(tensor_forward(data)(compact), ref) < 1e-4
