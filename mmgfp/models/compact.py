"""``GFPCompactModel``: build a pruned model through the normal registry.

A deployed config keeps the original model dict and changes only its ``type``::

    model = dict(type='GFPCompactModel', gfp_architecture='mmdet.RetinaNet',
                 gfp_channel_spec='{{ fileDirname }}/channels.json',
                 backbone=..., neck=..., bbox_head=..., ...)

``MODELS.build(cfg.model)`` then returns a real ``RetinaNet`` whose layers are already the
compact sizes, so mmdet's and mmpretrain's tools (test, inference, fine-tuning) use it as is, and
``cfg.model.backbone`` and friends stay where those tools look for them.
"""
from typing import Dict, Union

import torch
import torch.nn as nn
from mmengine.registry import MODELS

from mmgfp.core import apply_spec, load_spec
from mmgfp.core.spec import SpecError
from mmgfp.codebases import fix_compact


def _guard_loading(model: nn.Module, spec: Dict) -> None:
    """Make loading a checkpoint of other shapes into the sliced layers an error, not a warning.

    MMEngine loads checkpoints non-strictly and only warns on shape mismatches, which would
    leave a pruned layer randomly initialised: a silently wrong model.
    """
    modules = dict(model.named_modules())

    def make_hook(name, module):

        def hook(state_dict, prefix, *args):
            for pname, p in list(module.named_parameters(recurse=False)) + list(
                    module.named_buffers(recurse=False)):
                key = prefix + pname
                if key in state_dict and p is not None and p.dim() and \
                        tuple(state_dict[key].shape) != tuple(p.shape):
                    raise SpecError(
                        f'checkpoint does not match the pruned config: {key} has shape '
                        f'{tuple(state_dict[key].shape)} in the checkpoint but '
                        f'{tuple(p.shape)} in the model the channel spec describes. Use the '
                        'checkpoint written next to this config by tools/deploy_pruned.py.')

        return hook

    for name in spec['layers']:
        mod_name = name if name in modules else name.rpartition('.')[0]
        module = modules.get(mod_name)
        if module is not None:
            module._register_load_state_dict_pre_hook(make_hook(mod_name, module))


def build_compact_model(gfp_architecture: str, gfp_channel_spec: Union[str, Dict],
                        **kwargs) -> nn.Module:
    """Build ``gfp_architecture`` from ``kwargs`` and slice it to ``gfp_channel_spec``.

    Args:
        gfp_architecture (str): The original model type, scoped (e.g. ``'mmdet.RetinaNet'``).
        gfp_channel_spec (str | dict): The channel spec, a JSON path or the dict itself.
        **kwargs: The original model config (backbone, neck, heads, data_preprocessor...).

    Returns:
        nn.Module: An instance of the original class with the pruned layer sizes.
    """
    spec = load_spec(gfp_channel_spec)
    model = MODELS.build(dict(type=gfp_architecture, **kwargs))
    apply_spec(model, spec)
    fix_compact(model)
    _guard_loading(model, spec)
    model.gfp_channel_spec = spec
    return model


if 'GFPCompactModel' not in MODELS.module_dict:
    MODELS.register_module('GFPCompactModel', module=build_compact_model)
