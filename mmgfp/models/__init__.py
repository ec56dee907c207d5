from mmgfp.codebases import register_rules

from .compact import build_compact_model

register_rules()

__all__ = ['build_compact_model']
