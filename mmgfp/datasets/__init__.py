"""Offline demo data: detection, classification, keypoint and segmentation sets drawn from
scikit-learn's digits.

Importing this package registers ``DigitsCocoDataset`` in MMDetection's ``DATASETS`` registry,
``DigitsClsDataset`` in MMPretrain's, ``DigitsPoseDataset`` in MMPose's and ``DigitsSegDataset``
in MMSegmentation's, for those installed. The generators (:func:`prepare_digits_det`,
:func:`prepare_digits_cls`, :func:`prepare_digits_pose`, :func:`prepare_digits_seg`) need only
numpy, Pillow and scikit-learn.
"""
from . import digits, digits_pose, digits_seg
from .digits import (DIGIT_CLASSES, DIGIT_PALETTE, is_complete, load_source_digits,
                     prepare_digits_cls, prepare_digits_det, source_indices)
from .digits_pose import DIGITS_POSE_METAINFO, prepare_digits_pose
from .digits_seg import SEG_CLASSES, prepare_digits_seg

__all__ = ['DIGIT_CLASSES', 'DIGIT_PALETTE', 'SEG_CLASSES', 'is_complete', 'load_source_digits',
           'prepare_digits_cls', 'prepare_digits_det', 'prepare_digits_seg', 'source_indices',
           'DIGITS_POSE_METAINFO', 'prepare_digits_pose']

if hasattr(digits, 'DigitsCocoDataset'):
    from .digits import DigitsCocoDataset  # noqa: F401
    __all__.append('DigitsCocoDataset')
if hasattr(digits, 'DigitsClsDataset'):
    from .digits import DigitsClsDataset  # noqa: F401
    __all__.append('DigitsClsDataset')
if hasattr(digits_pose, 'DigitsPoseDataset'):
    from .digits_pose import DigitsPoseDataset  # noqa: F401
    __all__.append('DigitsPoseDataset')
if hasattr(digits_seg, 'DigitsSegDataset'):
    from .digits_seg import DigitsSegDataset  # noqa: F401
    __all__.append('DigitsSegDataset')
