"""The teacher of :class:`GFPDistillHook`: a frozen copy of the student, or the unpruned model
built from its config when the student is physically smaller (sliced).

A masked student has the unpruned shapes, so the teacher is a copy of it with the unpruned
weights loaded. A sliced student (Torch-Pruning's pruners, or a deployed compact being
fine-tuned) has fewer channels than the checkpoint of the unpruned model: the teacher is then
built from the unpruned model's config, in the registry scope MMEngine would build it in, and
the checkpoint is loaded strictly into it.
"""
import copy
from typing import Dict, Optional, Union

import torch.nn as nn
from mmengine.config import Config


def state_of(ckpt: Dict) -> Dict:
    """The weights of a checkpoint dict (``state_dict``, else the dict itself), without the
    ``module.`` prefix a DDP-wrapped model saves."""
    state = ckpt.get('state_dict', ckpt)
    if state and all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    return state


def mismatch(model: nn.Module, state: Dict) -> Optional[str]:
    """None when ``state`` has exactly ``model``'s keys and shapes; else the first difference."""
    from mmgfp.apis.deploying.deploy import state_differences
    own = model.state_dict()
    missing, unexpected, shapes = state_differences(own, state)
    for key in sorted(missing + unexpected):
        return f"{key!r} is {'missing from' if key in own else 'unexpected in'} the weights"
    for key in shapes:
        return (f'{key} is {tuple(state[key].shape)} in the weights and '
                f'{tuple(own[key].shape)} in the student')
    return None


def config_of(cfg: Union[str, dict, Config, None]) -> Optional[Config]:
    """A config holding ``model`` from a config path, a config (dict) with a ``model`` key, or
    a model dict (with ``type``; built in the current default scope). None stays None."""
    if cfg is None:
        return None
    if isinstance(cfg, str):
        cfg = Config.fromfile(cfg)
    if not isinstance(cfg, (dict, Config)):
        raise ValueError(f'`teacher_cfg` is a config path, a config with `model`, or a model '
                         f'dict with `type`, but got {type(cfg).__name__}')
    if cfg.get('model') is None:
        if 'type' not in cfg:
            raise ValueError('`teacher_cfg` has neither `model` (a config) nor `type` (a model '
                             f'dict): keys {sorted(cfg)}')
        cfg = dict(model=cfg)
    return cfg if isinstance(cfg, Config) else Config(copy.deepcopy(cfg))


def checkpoint_config(ckpt: Dict) -> Optional[Config]:
    """The config stored in a checkpoint's ``meta`` (``'cfg'`` or ``'config'``: config text or
    a dict), if it has a model; else None."""
    meta = ckpt.get('meta') if isinstance(ckpt.get('meta'), dict) else {}
    text = meta.get('cfg', meta.get('config'))
    if isinstance(text, str):
        try:
            text = Config.fromstring(text, file_format='.py')
        except Exception:  # noqa: BLE001  (unreadable config text: as if none were stored)
            return None
    if isinstance(text, (dict, Config)) and text.get('model') is not None:
        return config_of(text)
    return None


def build_unpruned(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` as MMEngine's Runner would (the config's default scope, its top-level
    ``data_preprocessor``), without pretrained weights and leaving the current scope alone."""
    from mmengine.registry import DefaultScope

    from mmgfp.apis.deploying.deploy import build_model
    current = DefaultScope.get_current_instance()
    scope = cfg.get('default_scope') or (current.scope_name if current else None)
    cfg = copy.deepcopy(cfg)
    cfg.default_scope = scope
    with DefaultScope.overwrite_default_scope(scope):
        return build_model(cfg, init=False)


def make_teacher(student: nn.Module, state: Optional[Dict], cfg: Optional[Config],
                 what: str) -> nn.Module:
    """The frozen teacher: a copy of ``student`` (with ``state`` loaded if given) when the
    shapes fit, else ``cfg``'s model with ``state`` loaded strictly.

    Args:
        student (nn.Module): The model being trained (masked, or sliced).
        state (dict, optional): The unpruned weights; None: the student's own.
        cfg (Config, optional): Config of the unpruned model, for a sliced student.
        what (str): Where ``state`` comes from, for error messages.
    """
    from mmgfp.apis.deploying.deploy import load_strict
    differs = None if state is None else mismatch(student, state)
    if differs is None:
        teacher = copy.deepcopy(student)
        teacher.__dict__.pop('loss', None)
        if state is not None:
            load_strict(teacher, state, what)
    elif cfg is None:
        raise ValueError(
            f'GFPDistillHook: {what} does not fit the student ({differs}): the student is '
            'smaller (sliced), so the teacher cannot be a copy of it. Give the unpruned '
            "model's config as `teacher_cfg` (a Runner's `cfg.model` is used when it fits)")
    else:
        teacher = build_unpruned(cfg)
        load_strict(teacher, state, f'{what} (into the model of `teacher_cfg`)')
        device = next(iter(student.parameters()), None)
        if device is not None:
            teacher.to(device.device)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
