"""The GFP configs for COCO (configs/coco) and ImageNet (configs/imagenet).

Each model has ``<stem>_gfp_acts.py`` and ``<stem>_gfp_flops.py`` (prune a model-zoo checkpoint
with the hook) and ``<stem>_gfp_finetune.py`` (train the compact model that
``tools/deploy_pruned.py`` writes from the acts run). Checked here without GPUs or data: each
config inherits the mmdet/mmpretrain config it names and changes only the GFP settings, loads
that config's model-zoo checkpoint, builds its hook, and (slow) its model is grouped, masked at
random, deployed into the folder the fine-tune config reads, and rebuilt from the fine-tune
config with the same outputs.
"""
import ast
import copy
import functools
import glob
import os.path as osp
import re
import tempfile

import pytest

pytest.importorskip('mmdet')
pytest.importorskip('mmpretrain')
import torch  # noqa: E402
import yaml  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import HOOKS  # noqa: E402
from mmengine.utils import get_installed_path  # noqa: E402

import mmgfp  # noqa: E402,F401
from mmgfp.apis.checking.check import build_model, random_masks, rel_diff  # noqa: E402
from mmgfp.apis.deploying.deploy import deploy, load_strict  # noqa: E402
from mmgfp.apis.inputs import demo_batch, loss_forward, tensor_forward  # noqa: E402
from mmgfp.core import FisherPruner, build_groups, make_spec  # noqa: E402
from mmgfp.hooks.fisher_pruning_hook import FisherPruningHook  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# stem -> (configs/ sub-folder, the config it inherits, the model type it builds, where the
# pruning groups must reach)
MODELS = {
    'retinanet_r50_fpn': ('coco', 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
                          'mmdet.RetinaNet', {'backbone', 'neck', 'bbox_head'}),
    'fcos_r50-caffe_fpn_gn-head': ('coco', 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
                                   'mmdet.FCOS', {'backbone', 'neck', 'bbox_head'}),
    'atss_r50_fpn': ('coco', 'mmdet::atss/atss_r50_fpn_1x_coco.py', 'mmdet.ATSS',
                     {'backbone', 'neck', 'bbox_head'}),
    'faster-rcnn_r50_fpn': ('coco', 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                            'mmdet.FasterRCNN', {'backbone', 'neck', 'rpn_head', 'roi_head'}),
    'resnet50': ('imagenet', 'mmpretrain::resnet/resnet50_8xb32_in1k.py',
                 'mmpretrain.ImageClassifier', {'backbone'}),
    'mobilenet-v2': ('imagenet', 'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py',
                     'mmpretrain.ImageClassifier', {'backbone'}),
    'regnetx-3.2gf': ('imagenet', 'mmpretrain::regnet/regnetx-3.2gf_8xb64_in1k.py',
                      'mmpretrain.ImageClassifier', {'backbone'}),
}
STEMS = list(MODELS)
PRUNE = [(s, d) for s in STEMS for d in ('acts', 'flops')]
ALL = [(s, k) for s in STEMS for k in ('gfp_acts', 'gfp_flops', 'gfp_finetune')]
INTERVAL = {'coco': 10, 'imagenet': 25}  # the schedules the configs' headers justify
INPUT_SIZE = (64, 64)  # grouping only needs the graph: small inputs keep the R50s cheap

# What a config may change in its base, beyond the added custom_imports. Exactly these keys
# differ, so a diff against the mmdet/mmpretrain config shows only GFP lines.
CHANGED = {
    ('coco', 'prune'): {'load_from', 'custom_hooks', 'model.backbone.frozen_stages',
                        'model.backbone.init_cfg', 'optim_wrapper.optimizer.lr',
                        'param_scheduler', 'train_cfg.max_epochs'},
    ('coco', 'finetune'): {'load_from', 'model.type', 'model.gfp_architecture',
                           'model.gfp_channel_spec', 'model.backbone.frozen_stages',
                           'model.backbone.init_cfg'},
    ('imagenet', 'prune'): {'load_from', 'custom_hooks', 'optim_wrapper.optimizer.lr',
                            'param_scheduler', 'train_cfg.max_epochs'},
    ('imagenet', 'finetune'): {'load_from', 'model.type', 'model.gfp_architecture',
                               'model.gfp_channel_spec'},
}


def path_of(stem: str, kind: str) -> str:
    return osp.join(REPO, 'configs', MODELS[stem][0], f'{stem}_{kind}.py')


@functools.lru_cache(maxsize=None)
def _parsed(path: str) -> Config:
    return Config.fromfile(path)


def load(path: str) -> Config:
    """``Config.fromfile`` parsed once per file (mmdet/mmpretrain bases are slow to read)."""
    return copy.deepcopy(_parsed(path))


@functools.lru_cache(maxsize=None)
def plain_base(base: str) -> Config:
    """``base`` read as a config that inherits it and changes nothing (same scope handling)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'plain.py')
        with open(path, 'w') as f:
            f.write(f'_base_ = {base!r}\n')
        return Config.fromfile(path)


def pruning_hook(cfg: Config) -> dict:
    hooks = [h for h in cfg.get('custom_hooks', []) if h['type'] == 'FisherPruningHook']
    assert len(hooks) == 1, f'expected one FisherPruningHook, got {hooks}'
    return hooks[0]


def changed_keys(ours: dict, base: dict, prefix: str = '') -> set:
    """Dotted keys whose values differ between two config dicts (nested dicts are walked)."""
    out = set()
    for k in set(ours) | set(base):
        key = prefix + k
        if k not in ours or k not in base:
            out.add(key)
        elif isinstance(ours[k], dict) and isinstance(base[k], dict):
            out |= changed_keys(ours[k], base[k], key + '.')
        elif ours[k] != base[k]:
            out.add(key)
    return out


def header(path: str) -> str:
    """The comment lines of a config, joined into one line (continuations removed)."""
    with open(path) as f:
        lines = [ln.strip()[1:] for ln in f if ln.strip().startswith('#')]
    return ' '.join(' '.join(lines).replace('\\', ' ').split())


def zoo_weights(base: str) -> str:
    """The checkpoint URL that the package's metafile gives for config ``base``."""
    scope, rel = base.split('::')
    folder = osp.join(get_installed_path(scope), '.mim', 'configs', rel.split('/')[0])
    with open(osp.join(folder, 'metafile.yml')) as f:
        meta = yaml.safe_load(f)
    found = [m['Weights'] for m in meta['Models'] if m.get('Config') == f'configs/{rel}']
    assert len(found) == 1, f'{base}: {len(found)} metafile entries'
    return found[0]


def deploy_command(stem: str, delta: str) -> str:
    folder = MODELS[stem][0]
    return (f'python tools/deploy_pruned.py configs/{folder}/{stem}_gfp_{delta}.py '
            f'work_dirs/{stem}_gfp_{delta}/pruned_flops_0.50.pth '
            f'--out-dir work_dirs/{stem}_gfp_{delta}/compact')


def test_every_config_is_checked():
    found = {osp.relpath(p, REPO) for d in ('coco', 'imagenet')
             for p in glob.glob(osp.join(REPO, 'configs', d, '*.py'))
             if not osp.basename(p).startswith('rtmpose')}  # tests/configs/test_pose_configs.py
    assert found == {osp.relpath(path_of(s, k), REPO) for s, k in ALL}


@pytest.mark.parametrize('stem,kind', ALL, ids=[f'{s}_{k}' for s, k in ALL])
def test_inherits_its_base_and_changes_only_gfp_settings(stem, kind):
    folder, base, _, _ = MODELS[stem]
    path = path_of(stem, kind)
    with open(path) as f:
        tree = ast.parse(f.read())
    bases = [n.value for n in tree.body if isinstance(n, ast.Assign)
             and any(getattr(t, 'id', None) == '_base_' for t in n.targets)]
    assert len(bases) == 1 and isinstance(bases[0], ast.Constant)
    assert bases[0].value == base
    cfg = load(path)
    assert cfg.custom_imports == dict(imports=['mmgfp'], allow_failed_imports=False)
    ref = plain_base(base)
    role = 'finetune' if kind == 'gfp_finetune' else 'prune'
    changed = changed_keys(cfg.to_dict(), ref.to_dict()) - {'custom_imports'}
    assert changed == CHANGED[folder, role]
    if role == 'prune':
        # hooks of the base config (mmpretrain's PreciseBNHook for RegNet) are kept
        assert cfg.custom_hooks[:-1] == ref.get('custom_hooks', [])
        assert cfg.param_scheduler == []  # a constant lr while pruning
        assert cfg.optim_wrapper.optimizer.lr < ref.optim_wrapper.optimizer.lr


@pytest.mark.parametrize('stem', STEMS)
def test_prune_configs_load_the_model_zoo_checkpoint(stem):
    url = zoo_weights(MODELS[stem][1])
    assert url.startswith('https://download.openmmlab.com/')
    for delta in ('acts', 'flops'):
        assert load(path_of(stem, f'gfp_{delta}')).load_from == url


@pytest.mark.parametrize('stem,delta', PRUNE, ids=[f'{s}_gfp_{d}' for s, d in PRUNE])
def test_pruning_hook_builds(stem, delta):
    cfg = load(path_of(stem, f'gfp_{delta}'))
    hook = HOOKS.build(pruning_hook(cfg))
    assert isinstance(hook, FisherPruningHook)
    assert hook.delta == delta
    assert hook.interval == INTERVAL[MODELS[stem][0]]
    assert hook.target_metric == 'flops' and hook.target == 0.5
    assert hook.divisor == 8 and hook.channels_per_step >= 1
    assert hook.target in hook.save_thresholds
    assert hook.prune_enabled and hook.init_spec is None and not hook.skip
    # the acts and flops variants differ in delta only
    other = load(path_of(stem, 'gfp_flops' if delta == 'acts' else 'gfp_acts'))
    mine, theirs = cfg.to_dict(), other.to_dict()
    theirs['custom_hooks'][-1]['delta'] = delta
    assert mine == theirs


@pytest.mark.parametrize('stem,delta', PRUNE, ids=[f'{s}_gfp_{d}' for s, d in PRUNE])
def test_prune_config_documents_its_commands(stem, delta):
    folder = MODELS[stem][0]
    text = header(path_of(stem, f'gfp_{delta}'))
    assert f'tools/train.py configs/{folder}/{stem}_gfp_{delta}.py' in text
    assert deploy_command(stem, delta) in text
    assert f'tools/train.py configs/{folder}/{stem}_gfp_finetune.py' in text


@pytest.mark.parametrize('stem', STEMS)
def test_finetune_config_reads_what_deploy_writes(stem):
    folder, _, arch, _ = MODELS[stem]
    cfg = load(path_of(stem, 'gfp_finetune'))
    assert not [h for h in cfg.get('custom_hooks', []) if 'FisherPruningHook' in h['type']]
    assert cfg.model.type == 'GFPCompactModel' and cfg.model.gfp_architecture == arch
    out_dir = f'work_dirs/{stem}_gfp_acts/compact'
    # deploy writes compact.pth and channels.json into --out-dir
    assert cfg.load_from == f'{out_dir}/compact.pth'
    assert cfg.model.gfp_channel_spec == f'{out_dir}/channels.json'
    # ... from the checkpoint the acts run saves when the FLOPs cross its target
    hook = pruning_hook(load(path_of(stem, 'gfp_acts')))
    assert f"pruned_{hook['target_metric']}_{hook['target']:.2f}.pth" == 'pruned_flops_0.50.pth'
    text = header(path_of(stem, 'gfp_finetune'))
    assert deploy_command(stem, 'acts') in text
    assert f'tools/train.py configs/{folder}/{stem}_gfp_finetune.py' in text
    assert re.search(rf'tools/test.py configs/{folder}/{re.escape(stem)}_gfp_finetune.py '
                     rf'work_dirs/{re.escape(stem)}_gfp_finetune/epoch_', text)


@pytest.mark.slow
@pytest.mark.parametrize('stem', STEMS)
def test_groups_deploy_and_finetune_model(stem, tmp_path):
    """Group the pruning config's model, mask it at random, deploy as the header says, and
    build the fine-tune config's model from what deploy wrote: same class, same outputs."""
    _, _, _, parts = MODELS[stem]
    prune_path = path_of(stem, 'gfp_acts')
    cfg = load(prune_path)
    hook = pruning_hook(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, init=False)
    data = demo_batch(model, 2, INPUT_SIZE, seed=0)
    model.train()
    groups = build_groups(model, loss_forward(data), skip=hook.get('skip', ()))
    reached = {p.split('.')[0] for g in groups.prunable for p in g.producers}
    assert parts <= reached, f'no prunable group in {parts - reached}'

    pruner = FisherPruner(model, groups, hook['delta'], hook.get('min_channels', 1),
                          hook['divisor'])
    random_masks(pruner, 0.5, seed=0)
    pruner.masker.attach()
    model.eval()
    with torch.no_grad():
        ref = tensor_forward(data)(model)
    spec = make_spec(pruner.masker)
    pruner.masker.detach()
    ckpt = tmp_path / 'work_dirs' / f'{stem}_gfp_acts' / 'pruned_flops_0.50.pth'
    ckpt.parent.mkdir(parents=True)
    torch.save({'state_dict': model.state_dict(), 'mmgfp': {'spec': spec}}, ckpt)

    ft = load(path_of(stem, 'gfp_finetune'))
    out_dir = tmp_path / osp.dirname(ft.load_from)
    written = deploy(prune_path, str(ckpt), str(out_dir), logger=lambda *a: None)
    assert written['pruned'] == 'yes'
    assert written['checkpoint'] == str(tmp_path / ft.load_from)
    assert written['spec'] == str(tmp_path / ft.model.gfp_channel_spec)

    ft.model.gfp_channel_spec = written['spec']
    compact = build_model(ft, init=False)
    assert type(compact) is type(model)
    state = torch.load(written['checkpoint'], map_location='cpu', weights_only=True)
    load_strict(compact, state['state_dict'], 'compact.pth')
    assert sum(p.numel() for p in compact.parameters()) < sum(
        p.numel() for p in model.parameters())
    compact.eval()
    with torch.no_grad():
        out = tensor_forward(data)(compact)
    assert rel_diff(out, ref) < 1e-4


@pytest.mark.slow
def test_regnet_pruning_config_trains_with_its_hooks(tmp_path):
    """The RegNet pruning config as a Runner builds it, ImageNet swapped for generated digits:
    mmpretrain's PreciseBNHook (kept from the base) and the pruning hook run together, and the
    lr stays at the constant pruning lr."""
    from mmengine.runner import Runner

    cfg = load(path_of('regnetx-3.2gf', 'gfp_acts'))
    precise, gfp = cfg.custom_hooks
    assert precise['type'] == 'PreciseBNHook'
    root = str(tmp_path / 'digits')
    pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=32),
                dict(type='PackInputs')]

    def loader(split):
        return dict(batch_size=4, num_workers=0, persistent_workers=False,
                    sampler=dict(type='DefaultSampler', shuffle=split == 'train'),
                    dataset=dict(type='DigitsClsDataset', data_root=root, split=split,
                                 generate_cfg=dict(num_train=16, num_val=8, seed=0),
                                 pipeline=pipeline))

    # only the data (no validation), the epoch length and the hooks' sample counts change
    cfg.train_dataloader = loader('train')
    cfg.test_dataloader = loader('val')
    cfg.test_evaluator = dict(type='Accuracy', topk=(1, ))
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.model.head.num_classes = 10
    cfg.model.head.topk = (1, )
    cfg.data_preprocessor.num_classes = 10
    cfg.load_from = None  # the model-zoo checkpoint cannot be downloaded here
    cfg.train_cfg.max_epochs = 1
    cfg.work_dir = str(tmp_path / 'work')
    precise['num_samples'] = 8
    gfp['interval'] = 2  # 4 iterations: 2 pruning steps
    runner = Runner.from_cfg(cfg)
    runner.train()

    hook = next(h for h in runner.hooks if isinstance(h, FisherPruningHook))
    assert hook.steps == 2 and hook.pruner.remaining()['flops'] < 1
    assert any(type(h).__name__ == 'PreciseBNHook' for h in runner.hooks)
    logs = ''.join(open(p).read() for p in glob.glob(osp.join(cfg.work_dir, '*', '*.log')))
    assert 'Finish Precise BN' in logs
    assert runner.optim_wrapper.get_lr()['lr'] == [pytest.approx(0.004)]
    ckpt = torch.load(osp.join(cfg.work_dir, 'epoch_1.pth'), map_location='cpu',
                      weights_only=True)
    assert ckpt['mmgfp']['steps'] == 2
