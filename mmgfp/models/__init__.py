from . import mmdet_rules
from .compact import build_compact_model

mmdet_rules.register()

__all__ = ['build_compact_model']
