from .distill_hook import GFPDistillHook
from .fisher_pruning_hook import FisherPruningHook

__all__ = ['FisherPruningHook', 'GFPDistillHook']
