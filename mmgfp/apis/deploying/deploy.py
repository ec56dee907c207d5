"""Turn a pruning checkpoint into a compact checkpoint plus a config that builds it."""
import copy
import os
import os.path as osp
import shutil
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict

from mmgfp.core import apply_spec, save_spec
from mmgfp.core.spec import SpecError, atomic_write, is_empty, validate

COMPACT_TYPE = 'GFPCompactModel'


def _is_pretrained_init(v) -> bool:
    return isinstance(v, dict) and v.get('type') == 'Pretrained'


def strip_pretrained(cfg):
    """Drop what would download or read pretrained weights while a model is built: weights come
    from the checkpoint (or are not needed to check an architecture).

    ``init_cfg=dict(type='Pretrained', ...)`` becomes None (and such entries leave a list of
    init configs); ``pretrained='open-mmlab://resnet50_v1c'`` (a checkpoint name or URL, as
    MMSegmentation's EncoderDecoder and older backbones take it) becomes None and
    ``pretrained=True`` (timm and torchvision wrappers) becomes False.
    """
    if isinstance(cfg, dict):
        out = type(cfg)() if isinstance(cfg, ConfigDict) else {}
        for k, v in cfg.items():
            if k == 'init_cfg' and _is_pretrained_init(v):
                out[k] = None
            elif k == 'init_cfg' and isinstance(v, (list, tuple)):
                out[k] = type(v)(strip_pretrained(i) for i in v if not _is_pretrained_init(i))
            elif k == 'pretrained' and isinstance(v, str):
                out[k] = None
            elif k == 'pretrained' and v is True:
                out[k] = False
            else:
                out[k] = strip_pretrained(v)
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(strip_pretrained(v) for v in cfg)
    return cfg


def scoped_type(cfg: Config) -> str:
    t = cfg.model['type']
    if not isinstance(t, str):
        raise TypeError('the model type must be a registered name to deploy, got '
                        f'{t!r}')
    if '.' in t:
        return t
    return f"{cfg.get('default_scope') or 'mmdet'}.{t}"


def compact_config(cfg: Config, spec_ref: str, checkpoint_ref: Optional[str]) -> Config:
    """The original config with a model that builds the compact model, and no pruning hook.

    ``GFPDistillHook`` goes too: in the compact config it would copy its teacher from the
    compact weights, not from the unpruned model.
    """
    if cfg.model.get('type') == COMPACT_TYPE:
        raise ValueError('this config already builds a compact model; deploy the checkpoint '
                         'with the config it was trained with')
    new = copy.deepcopy(cfg)
    model = {k: v for k, v in strip_pretrained(cfg.model).items() if k != 'type'}
    if cfg.get('data_preprocessor') is not None and 'data_preprocessor' not in model:
        # mmpretrain keeps it at top level; the Runner would add it, MODELS.build would not
        model['data_preprocessor'] = copy.deepcopy(cfg.data_preprocessor)
    new.model = dict(type=COMPACT_TYPE, gfp_architecture=scoped_type(cfg),
                     gfp_channel_spec=spec_ref, **model)
    imports = (cfg.get('custom_imports') or {}).get('imports', [])
    imports = [imports] if isinstance(imports, str) else list(imports)  # mmcv takes a name too
    if 'mmgfp' not in imports:
        imports.append('mmgfp')
    from mmgfp.codebases import codebases, config_scope
    target = getattr(codebases().get(config_scope(cfg)), 'import_target', None)
    if target and target not in imports:  # mmgfp.yolo: mmyolo past its version gate
        imports.append(target)
    new.custom_imports = dict(imports=imports, allow_failed_imports=False)
    dropped = ('FisherPruningHook', 'GFPDistillHook')
    hooks = [h for h in cfg.get('custom_hooks', []) or []
             if str(h.get('type')).split('.')[-1] not in dropped]
    new.custom_hooks = hooks
    new.load_from = checkpoint_ref
    new.resume = False
    return new


def read_checkpoint(path: str) -> Dict:
    """Load a checkpoint with ``weights_only`` and say clearly when it cannot be read."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise SpecError(f'cannot read checkpoint {path}: {type(e).__name__}: {e} (truncated, '
                        'corrupted, or not a PyTorch checkpoint?)') from None
    if not isinstance(ckpt, dict):
        raise SpecError(f'{path} is not an MMEngine checkpoint (no dict inside)')
    return ckpt


def state_differences(own: Dict, state_dict: Dict) -> Tuple[List[str], List[str], List[str]]:
    """How ``state_dict`` differs from a model's own ``own``: the keys missing from it, its
    unexpected keys (both sorted), and the keys whose shapes differ (in ``own``'s order)."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [k for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    return missing, unexpected, shapes


def load_strict(model: torch.nn.Module, state_dict: Dict, what: str) -> None:
    """Load ``state_dict`` exactly; a mismatch names the layers and the likely cause."""
    own = model.state_dict()
    missing, unexpected, keys = state_differences(own, state_dict)
    shapes = [f'{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}' for k in keys]
    if missing or unexpected or shapes:
        raise SpecError(f'{what} does not match the config: missing {missing[:3]}, unexpected '
                        f'{unexpected[:3]}, shape mismatches {shapes[:3]}. Use the config the '
                        'checkpoint was trained with.')
    if getattr(state_dict, '_metadata', None) is None:
        # Without torch's per-module versions, version-aware load hooks take the weights for an
        # old checkpoint and "convert" them (MMPose's DEKR head rotates its heatmap channels):
        # the keys and shapes match this model exactly, so its own versions are the right ones
        state_dict = OrderedDict(state_dict)
        state_dict._metadata = getattr(own, '_metadata', None)
    # exact by the check above; strict=False because some modules' load pre-hooks drop keys
    # they rebuild themselves (MMPretrain's Swin-V2 relative_coords_table), which torch's
    # strict mode would then call missing
    model.load_state_dict(state_dict, strict=False)


def build_model(cfg: Config, init: bool = True) -> nn.Module:
    """Build ``cfg.model`` in its default scope, without downloading pretrained weights."""
    import logging

    from mmengine.logging import MMLogger
    from mmengine.registry import MODELS, init_default_scope

    from mmgfp.codebases import prepare_scope
    prepare_scope(cfg)  # codebase bridges (mmyolo's version gate)
    init_default_scope(cfg.get('default_scope') or 'mmdet')
    model_cfg = _one_process_norms(strip_pretrained(cfg.model))
    if cfg.get('data_preprocessor') is not None:  # as Runner / init_model do (mmpretrain)
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = MODELS.build(model_cfg)
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(model)  # SyncBN needs a process group; the check has none
    if init and hasattr(model, 'init_weights'):
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)  # init_weights logs every parameter
        try:
            model.init_weights()
        finally:
            logger.setLevel(level)
    return model


def _one_process_norms(node):
    """mmcv's MMSyncBN needs a process group when it is built: make it (and SyncBN) BN."""
    if isinstance(node, dict):
        node = type(node)({k: _one_process_norms(v) for k, v in node.items()})
        if node.get('type') in ('MMSyncBN', 'SyncBN'):
            node['type'] = 'BN'
        return node
    if isinstance(node, (list, tuple)):
        return type(node)(_one_process_norms(v) for v in node)
    return node


def deploy(config: str, checkpoint: str, out_dir: str, logger=print) -> Dict[str, str]:
    """Write ``compact.pth``, ``channels.json`` and ``<config>_compact.py`` into ``out_dir``.

    Args:
        config (str): The config the checkpoint was trained with (with the pruning hook).
        checkpoint (str): A checkpoint saved while or after pruning.
        out_dir (str): Output folder (created).

    Returns:
        dict: Paths of what was written, and ``'pruned'`` ('yes'/'no').
    """
    from mmengine.registry import init_default_scope

    from mmgfp.codebases import prepare_scope
    cfg = Config.fromfile(config)
    prepare_scope(cfg)  # codebase bridges (mmyolo's version gate)
    init_default_scope(cfg.get('default_scope') or 'mmdet')
    ckpt = read_checkpoint(checkpoint)
    state = ckpt.get('mmgfp') or {}
    spec = state.get('spec')
    os.makedirs(out_dir, exist_ok=True)
    base = osp.splitext(osp.basename(config))[0]
    out = {'checkpoint': osp.join(out_dir, 'compact.pth'),
           'spec': osp.join(out_dir, 'channels.json'),
           'config': osp.join(out_dir, f'{base}_compact.py')}
    state_dict = ckpt.get('state_dict', ckpt)
    model = build_model(cfg, init=False)
    load_strict(model, state_dict, f'checkpoint {checkpoint}')
    if spec is None or is_empty(validate(spec)):
        logger(f'{checkpoint} holds no pruned channels (never pruned, or saved before the '
               'first pruning step): writing an exact copy and the unchanged config')
        atomic_write(out['checkpoint'], lambda p: shutil.copyfile(checkpoint, p))
        plain = copy.deepcopy(cfg)
        plain.load_from = out['checkpoint']
        atomic_write(out['config'], lambda p: plain.dump(p + '.py') or os.replace(p + '.py',
                                                                                   p))
        out['pruned'] = 'no'
        return out
    apply_spec(model, spec)
    meta = {'mmgfp': {'source_checkpoint': osp.abspath(checkpoint)}}
    dataset_meta = (ckpt.get('meta') or {}).get('dataset_meta')
    if dataset_meta is not None:  # a None entry breaks mmdet's init_detector (meta.items())
        meta['dataset_meta'] = dataset_meta
    save_spec(spec, out['spec'])
    atomic_write(out['checkpoint'], lambda p: torch.save(
        {'state_dict': model.state_dict(), 'meta': meta}, p))
    new = compact_config(cfg, '{{ fileDirname }}/channels.json',
                         '{{ fileDirname }}/compact.pth')
    atomic_write(out['config'], lambda p: new.dump(p + '.py') or os.replace(p + '.py', p))
    out['pruned'] = 'yes'
    logger(f'compact model written to {out_dir}: {out["config"]}, {out["checkpoint"]}')
    return out
