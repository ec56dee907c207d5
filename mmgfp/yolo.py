"""Import target for MMYOLO configs: ``custom_imports = dict(imports=['mmgfp', 'mmgfp.yolo'])``.

Importing this module imports mmyolo through mmgfp's bridge of its version gate (mmyolo 0.6.0
asserts ``mmcv < 2.1.0``; see :mod:`mmgfp.codebases.mmyolo`), so that a Runner and MMEngine's
registries of the ``mmyolo`` scope find mmyolo already imported. ``import mmgfp`` alone never
touches mmyolo.
"""
from mmgfp.codebases.mmyolo import import_mmyolo

import_mmyolo()
