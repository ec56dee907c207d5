"""One module per OpenMMLab codebase (see :mod:`mmgfp.codebases.base`).

Importing this package registers every codebase; none of them imports its OpenMMLab package
until a method is called, so ``import mmgfp`` stays cheap and works with any subset installed.
"""
from . import mmdet, mmpretrain, mmseg  # noqa: F401  (registration)
from .base import (Codebase, CodebaseError, codebase_of, codebases, config_scope, get_codebase,
                   register_codebase)


def fix_compact(model) -> None:
    """Apply every codebase's fixes after slicing: each looks for its own module types, which
    other codebases reuse (MMYOLO builds on MMDetection's), so all of them run."""
    for cb in codebases().values():
        cb.fix_compact(model)


def register_rules() -> None:
    """Register every installed codebase's tracer rules (called on ``import mmgfp``)."""
    for cb in codebases().values():
        cb.register_rules()


__all__ = ['Codebase', 'CodebaseError', 'codebase_of', 'codebases', 'config_scope',
           'fix_compact', 'get_codebase', 'register_codebase', 'register_rules']
