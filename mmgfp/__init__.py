"""mmgfp: Group Fisher Pruning for the OpenMMLab 3.x stack.

``import mmgfp`` (e.g. through ``custom_imports``) registers ``FisherPruningHook`` and the
``GFPCompactModel`` builder, and lets torch >= 2.6 load MMEngine checkpoints safely. The core
(``mmgfp.core``) is plain PyTorch and imports none of OpenMMLab.
"""
from .compat import register_safe_globals
from .version import __version__

register_safe_globals()

try:
    import mmengine  # noqa: F401
except ImportError:  # core-only use
    pass
else:
    from . import datasets, hooks, models  # noqa: F401  (registration)

__all__ = ['__version__']
