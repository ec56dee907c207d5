"""The real-time segmentation GFP configs (configs/cityscapes): BiSeNetV2 on Cityscapes.

Checked without GPUs or data, as tests/configs/test_full_configs.py checks the COCO and
ImageNet ones: the pruning config inherits mmseg's config and changes only GFP settings, loads
its model-zoo checkpoint, builds its hook; its model (auxiliary heads included) is grouped,
masked at random, deployed where the fine-tune config reads, and rebuilt from the fine-tune
config with the same outputs.
"""
import glob
import os.path as osp

import pytest

pytest.importorskip('mmseg')
import torch  # noqa: E402
import yaml  # noqa: E402
from mmengine.registry import HOOKS  # noqa: E402
from mmengine.utils import get_installed_path  # noqa: E402

import mmgfp  # noqa: E402,F401
from mmgfp.apis.checking.check import build_model, random_masks, rel_diff  # noqa: E402
from mmgfp.apis.deploying.deploy import deploy, load_strict  # noqa: E402
from mmgfp.apis.inputs import demo_batch, loss_forward, tensor_forward  # noqa: E402
from mmgfp.core import FisherPruner, build_groups, make_spec  # noqa: E402
from test_full_configs import changed_keys, header, load, plain_base  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
STEM = 'bisenetv2_fcn'
BASE = 'mmseg::bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py'
INPUT_SIZE = (64, 64)  # grouping only needs the graph


def path_of(kind: str) -> str:
    return osp.join(REPO, 'configs', 'cityscapes', f'{STEM}_{kind}.py')


def test_every_config_is_checked():
    found = set(glob.glob(osp.join(REPO, 'configs', 'cityscapes', '*.py')))
    assert found == {path_of('gfp_acts'), path_of('gfp_finetune')}


def test_prune_config_changes_only_gfp_settings_and_loads_the_zoo_weights():
    cfg = load(path_of('gfp_acts'))
    changed = changed_keys(cfg.to_dict(), plain_base(BASE).to_dict()) - {'custom_imports'}
    assert changed == {'load_from', 'custom_hooks', 'optim_wrapper.optimizer.lr',
                       'param_scheduler', 'train_cfg.max_iters'}
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(0.1 * 0.05)
    scope, rel = BASE.split('::')
    with open(osp.join(get_installed_path(scope), '.mim', 'configs', rel.split('/')[0],
                       'metafile.yaml')) as f:
        meta = yaml.safe_load(f)
    weights = [m['Weights'] for m in meta['Models'] if m['Config'] == f'configs/{rel}']
    assert cfg.load_from == weights[0]
    hook = HOOKS.build(cfg.custom_hooks[-1])
    assert hook.delta == 'acts' and hook.target == 0.5 and hook.interval == 10
    assert hook.divisor == 8 and hook.target in hook.save_thresholds
    text = header(path_of('gfp_acts'))
    assert ('python tools/deploy_pruned.py configs/cityscapes/bisenetv2_fcn_gfp_acts.py '
            'work_dirs/bisenetv2_fcn_gfp_acts/pruned_flops_0.50.pth --out-dir '
            'work_dirs/bisenetv2_fcn_gfp_acts/compact') in text


def test_finetune_config_reads_what_deploy_writes():
    cfg = load(path_of('gfp_finetune'))
    changed = changed_keys(cfg.to_dict(), plain_base(BASE).to_dict()) - {'custom_imports'}
    assert changed == {'load_from', 'model.type', 'model.gfp_architecture',
                       'model.gfp_channel_spec'}
    assert cfg.model.gfp_architecture == 'mmseg.EncoderDecoder'
    assert cfg.load_from == 'work_dirs/bisenetv2_fcn_gfp_acts/compact/compact.pth'
    assert cfg.model.gfp_channel_spec == 'work_dirs/bisenetv2_fcn_gfp_acts/compact/channels.json'


@pytest.mark.slow
def test_groups_deploy_and_finetune_model(tmp_path):
    """BiSeNetV2 with its four auxiliary heads: grouped (the auxiliary heads' inputs with the
    semantic branch), masked at random, deployed, rebuilt from the fine-tune config."""
    cfg = load(path_of('gfp_acts'))
    cfg.model.data_preprocessor.size = INPUT_SIZE  # no padding to 1024x1024 crops
    hook = cfg.custom_hooks[-1]
    torch.manual_seed(0)
    model = build_model(cfg, init=False)
    data = demo_batch(model, 2, INPUT_SIZE, seed=0)
    model.train()
    groups = build_groups(model, loss_forward(data))
    reached = {p.split('.')[0] for g in groups.prunable for p in g.producers}
    assert {'backbone', 'decode_head', 'auxiliary_head'} <= reached
    pruner = FisherPruner(model, groups, hook['delta'], 1, hook['divisor'])
    random_masks(pruner, 0.5, seed=0)
    pruner.masker.attach()
    model.eval()
    with torch.no_grad():
        ref = tensor_forward(data)(model)
    spec = make_spec(pruner.masker)
    pruner.masker.detach()
    ckpt = tmp_path / 'pruned_flops_0.50.pth'
    torch.save({'state_dict': model.state_dict(), 'mmgfp': {'spec': spec}}, ckpt)
    ft = load(path_of('gfp_finetune'))
    written = deploy(path_of('gfp_acts'), str(ckpt), str(tmp_path / osp.dirname(ft.load_from)),
                     logger=lambda *a: None)
    assert written['checkpoint'] == str(tmp_path / ft.load_from)
    ft.model.gfp_channel_spec = written['spec']
    compact = build_model(ft, init=False)
    state = torch.load(written['checkpoint'], map_location='cpu', weights_only=True)
    load_strict(compact, state['state_dict'], 'compact.pth')
    assert sum(p.numel() for p in compact.parameters()) < sum(
        p.numel() for p in model.parameters())
    compact.eval()
    with torch.no_grad():
        assert rel_diff(tensor_forward(data)(compact), ref) < 1e-4
