"""mmgfp: Group Fisher Pruning for the OpenMMLab 3.x stack."""
from .version import __version__

__all__ = ['__version__']
