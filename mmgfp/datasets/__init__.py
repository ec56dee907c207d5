"""Offline demo data: detection and classification sets drawn from scikit-learn's digits.

Importing this package registers ``DigitsCocoDataset`` in MMDetection's ``DATASETS`` registry
and ``DigitsClsDataset`` in MMPretrain's, for whichever of the two is installed. The generators
(:func:`prepare_digits_det`, :func:`prepare_digits_cls`) need only numpy, Pillow and
scikit-learn.
"""
from . import digits
from .digits import (DIGIT_CLASSES, DIGIT_PALETTE, is_complete, load_source_digits,
                     prepare_digits_cls, prepare_digits_det, source_indices)

__all__ = ['DIGIT_CLASSES', 'DIGIT_PALETTE', 'is_complete', 'load_source_digits',
           'prepare_digits_cls', 'prepare_digits_det', 'source_indices']

if hasattr(digits, 'DigitsCocoDataset'):
    from .digits import DigitsCocoDataset  # noqa: F401
    __all__.append('DigitsCocoDataset')
if hasattr(digits, 'DigitsClsDataset'):
    from .digits import DigitsClsDataset  # noqa: F401
    __all__.append('DigitsClsDataset')
