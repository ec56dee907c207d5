"""The interface every OpenMMLab codebase implements, and the lookup from a model or config.

What differs between MMDetection, MMPretrain and the codebases that follow (demo batches, the
input size of a config, tracer rules for modules built on ops the tracer cannot see, fixes of
constructor values after slicing, version bridges) lives in one module per codebase
(``mmgfp/codebases/<scope>.py``) as a subclass of :class:`Codebase`, registered with
:func:`register_codebase`. The core and the hook never branch on the codebase; they ask
:func:`codebase_of` for the one a model or config belongs to.
"""
import contextlib
import importlib.util
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch.nn as nn


class CodebaseError(TypeError):
    """A model or config of no codebase mmgfp serves (or one whose package is missing)."""


class Codebase:
    """What one OpenMMLab codebase needs from mmgfp. Subclasses set ``scope`` and override.

    Attributes:
        scope (str): The registry scope and package name (``'mmdet'``).
        title (str): The name users know (``'MMDetection'``).
        input_size (tuple): ``(H, W)`` of demo batches when the config names no size.
        import_target (str, optional): A module that configs of this codebase list in
            ``custom_imports`` after ``'mmgfp'`` (compact configs get it too), or None.
    """
    scope: str = ''
    title: str = ''
    input_size: Tuple[int, int] = (128, 128)
    import_target: Optional[str] = None

    def available(self) -> bool:
        """Whether the codebase's package is installed."""
        return importlib.util.find_spec(self.scope) is not None

    def default_input_size(self, cfg) -> Tuple[int, int]:
        """``(H, W)`` of demo images for a config of this codebase."""
        return self.input_size

    def num_classes(self, model: nn.Module) -> Optional[int]:
        """The number of classes the model's head predicts, or None where it has none."""
        return None

    def demo_batch(self, model: nn.Module, batch_size: int, input_size: Sequence[int],
                   seed: int, num_classes: Optional[int]) -> dict:
        """A packed batch as the codebase's dataloader gives it (``inputs``, ``data_samples``)."""
        raise NotImplementedError

    def test_batch(self, model: nn.Module, data_batch):
        """``data_batch`` as the codebase's test dataloader gives it (for ``mode='tensor'``
        runs of a training batch; the same batch by default)."""
        return data_batch

    def register_rules(self) -> None:
        """Register tracer rules for the codebase's modules (called on ``import mmgfp``)."""

    def fix_compact(self, model: nn.Module) -> None:
        """Adjust modules whose sizes are constructor values after the model was sliced."""

    @contextlib.contextmanager
    def compat(self) -> Iterator[None]:
        """Bridges needed to import or run the codebase on this stack (none by default)."""
        yield

    def prepare(self) -> None:
        """Import the codebase's package (inside :meth:`compat`), so that MMEngine's registries
        of its scope can import their modules; nothing where the package is missing."""
        if self.available():
            with self.compat():
                importlib.import_module(self.scope)


_CODEBASES: Dict[str, Codebase] = {}


def register_codebase(cls):
    """Class decorator: make an instance of ``cls`` the codebase of its ``scope``."""
    if not cls.scope:
        raise ValueError(f'{cls.__name__} sets no `scope`')
    _CODEBASES[cls.scope] = cls()
    return cls


def codebases() -> Dict[str, Codebase]:
    """Every registered codebase by scope."""
    return dict(_CODEBASES)


def get_codebase(scope: str) -> Codebase:
    """The codebase registered for ``scope`` (``'mmdet'``, ``'mmpretrain'``, ...)."""
    if scope not in _CODEBASES:
        raise CodebaseError(f'mmgfp serves the OpenMMLab codebases {sorted(_CODEBASES)}, not '
                            f'{scope!r}')
    return _CODEBASES[scope]


def config_scope(cfg) -> str:
    """The codebase scope of a config: its ``default_scope``, else the scope of its model type
    (``'mmdet.RetinaNet'``), else ``'mmdet'`` (MMDetection configs often leave it unset)."""
    scope = cfg.get('default_scope')
    if scope:
        return scope
    mtype = (cfg.get('model') or {}).get('type')
    if isinstance(mtype, str) and '.' in mtype and mtype.split('.')[0] in _CODEBASES:
        return mtype.split('.')[0]
    return 'mmdet'


def prepare_scope(cfg_or_scope) -> None:
    """Run :meth:`Codebase.prepare` for a config's (or a scope's) codebase, if mmgfp serves it:
    what tools do before building a model or a Runner from a config."""
    scope = cfg_or_scope if isinstance(cfg_or_scope, str) else config_scope(cfg_or_scope)
    if scope in _CODEBASES:
        _CODEBASES[scope].prepare()


def codebase_of(obj, default: Optional[str] = None) -> Optional[Codebase]:
    """The codebase of a model (by the package its class comes from) or of a config.

    Args:
        obj: An ``nn.Module`` or an MMEngine ``Config``.
        default (str, optional): Returned (as None) instead of raising when the model's class
            belongs to no registered codebase; pass ``'none'`` for plain PyTorch models.
            Defaults to None (raise :class:`CodebaseError`).
    """
    if isinstance(obj, nn.Module):
        scope = type(obj).__module__.split('.')[0]
        if scope in _CODEBASES:
            return _CODEBASES[scope]
        if default == 'none':
            return None
        raise CodebaseError(
            f'{type(obj).__name__} (from {type(obj).__module__}) belongs to none of the '
            f'codebases mmgfp serves ({", ".join(sorted(_CODEBASES))}): build demo batches for '
            'it yourself and use the core API (mmgfp.core.build_groups with your forward '
            'function)')
    return get_codebase(config_scope(obj))
