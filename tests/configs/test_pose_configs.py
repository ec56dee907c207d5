"""The RTMPose-s Group Fisher recipe (configs/coco/rtmpose-s_coco-256x192_gfp_*.py).

MMPose ships this recipe for MMRazor (prune RTMPose-s to 51% of its FLOPs with
``normalization_type='act'``, interval 10, lr x0.1; fine-tune at the base lr). Checked here
without GPUs or data, as tests/configs/test_full_configs.py checks the COCO detection configs:
each config inherits mmpose's RTMPose-s config and changes only the GFP settings, the prune
config loads the checkpoint mmpose's metafile lists and keeps the base hooks, and (slow) the
model is grouped, masked at random, deployed where the fine-tune config reads, and rebuilt from
the fine-tune config with the same outputs.
"""
import glob
import os.path as osp

import pytest

pytest.importorskip('mmpose')
import torch  # noqa: E402
import yaml  # noqa: E402
from mmengine.registry import HOOKS  # noqa: E402
from mmengine.utils import get_installed_path  # noqa: E402

from test_full_configs import (REPO, changed_keys, header, load, plain_base,  # noqa: E402
                               pruning_hook)

import mmgfp  # noqa: E402,F401
from mmgfp.apis.checking.check import build_model, random_masks, rel_diff  # noqa: E402
from mmgfp.apis.deploying.deploy import deploy, load_strict  # noqa: E402
from mmgfp.apis.inputs import demo_batch, loss_forward, tensor_forward  # noqa: E402
from mmgfp.core import FisherPruner, build_groups, make_spec  # noqa: E402
from mmgfp.hooks.fisher_pruning_hook import FisherPruningHook  # noqa: E402

STEM = 'rtmpose-s_coco-256x192'
BASE = 'mmpose::body_2d_keypoint/rtmpose/coco/rtmpose-s_8xb256-420e_coco-256x192.py'
PRUNE = osp.join(REPO, 'configs', 'coco', f'{STEM}_gfp_acts.py')
FINETUNE = osp.join(REPO, 'configs', 'coco', f'{STEM}_gfp_finetune.py')
OUT_DIR = f'work_dirs/{STEM}_gfp_acts/compact'


def zoo_weights(base: str) -> str:
    """The checkpoint URL of config ``base`` in the metafiles next to it (mmpose keeps one
    per dataset folder, e.g. rtmpose_coco.yml)."""
    scope, rel = base.split('::')
    folder = osp.join(get_installed_path(scope), '.mim', 'configs', osp.dirname(rel))
    found = []
    for path in glob.glob(osp.join(folder, '*.yml')):
        with open(path) as f:
            found += [m['Weights'] for m in yaml.safe_load(f).get('Models', [])
                      if m.get('Config') == f'configs/{rel}']
    assert len(found) == 1, f'{base}: {len(found)} metafile entries'
    return found[0]


def test_prune_config_is_mmposes_recipe():
    cfg, ref = load(PRUNE), plain_base(BASE)
    assert cfg.custom_imports == dict(imports=['mmgfp'], allow_failed_imports=False)
    changed = changed_keys(cfg.to_dict(), ref.to_dict()) - {'custom_imports'}
    assert changed == {'load_from', 'custom_hooks', 'model.backbone.init_cfg',
                       'optim_wrapper.optimizer.lr'}
    assert cfg.load_from == zoo_weights(BASE)
    assert cfg.custom_hooks[:-1] == ref.custom_hooks  # EMA and pipeline switch stay
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(ref.optim_wrapper.optimizer.lr * 0.1)
    assert cfg.train_cfg == ref.train_cfg and cfg.param_scheduler == ref.param_scheduler
    hook = HOOKS.build(pruning_hook(cfg))
    assert isinstance(hook, FisherPruningHook)
    assert (hook.interval, hook.delta, hook.target, hook.target_metric) == (
        10, 'acts', 0.51, 'flops')
    assert hook.channels_per_step == 1 and hook.divisor == 1 and 0.51 in hook.save_thresholds
    text = header(PRUNE)
    assert f'tools/train.py configs/coco/{STEM}_gfp_acts.py' in text
    assert (f'python tools/deploy_pruned.py configs/coco/{STEM}_gfp_acts.py '
            f'work_dirs/{STEM}_gfp_acts/pruned_flops_0.51.pth --out-dir {OUT_DIR}') in text


def test_finetune_config_reads_what_deploy_writes():
    cfg, ref = load(FINETUNE), plain_base(BASE)
    changed = changed_keys(cfg.to_dict(), ref.to_dict()) - {'custom_imports'}
    assert changed == {'load_from', 'model.type', 'model.gfp_architecture',
                       'model.gfp_channel_spec', 'model.backbone.init_cfg'}
    assert cfg.model.gfp_architecture == 'mmpose.TopdownPoseEstimator'
    assert cfg.load_from == f'{OUT_DIR}/compact.pth'
    assert cfg.model.gfp_channel_spec == f'{OUT_DIR}/channels.json'
    assert not [h for h in cfg.custom_hooks if 'FisherPruningHook' in h['type']]
    assert f'tools/train.py configs/coco/{STEM}_gfp_finetune.py' in header(FINETUNE)


@pytest.mark.slow
def test_groups_deploy_and_finetune_model(tmp_path):
    cfg = load(PRUNE)
    torch.manual_seed(0)
    model = build_model(cfg, init=False)
    data = demo_batch(model, 1, (256, 192), seed=0)  # RTMCCHead is built for 256x192
    model.train()
    groups = build_groups(model, loss_forward(data))
    reached = {p.split('.')[0] for g in groups.prunable for p in g.producers}
    # the head's channels are fixed (the GAU's split and ScaleNorm, keypoint and SimCC outputs)
    assert reached == {'backbone'} and len(groups.prunable) == 20
    pruner = FisherPruner(model, groups, 'acts', 1, 1)
    random_masks(pruner, 0.5, seed=0)
    pruner.masker.attach()
    model.eval()
    with torch.no_grad():
        ref = tensor_forward(data)(model)
    spec = make_spec(pruner.masker)
    pruner.masker.detach()
    ckpt = tmp_path / 'pruned_flops_0.51.pth'
    torch.save({'state_dict': model.state_dict(), 'mmgfp': {'spec': spec}}, ckpt)

    ft = load(FINETUNE)
    written = deploy(PRUNE, str(ckpt), str(tmp_path / OUT_DIR), logger=lambda *a: None)
    assert written['checkpoint'] == str(tmp_path / ft.load_from)
    assert written['spec'] == str(tmp_path / ft.model.gfp_channel_spec)
    ft.model.gfp_channel_spec = written['spec']
    compact = build_model(ft, init=False)
    assert type(compact) is type(model)
    load_strict(compact, torch.load(written['checkpoint'], weights_only=True)['state_dict'],
                'compact.pth')
    assert sum(p.numel() for p in compact.parameters()) < sum(
        p.numel() for p in model.parameters())
    compact.eval()
    with torch.no_grad():
        assert rel_diff(tensor_forward(data)(compact), ref) < 1e-4
