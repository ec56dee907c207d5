"""FisherPruningHook pieces that need no Runner: the AMP loss scale and the batch size.

Argument checks are in tests/apis/test_bad_input.py.
"""
from types import SimpleNamespace

import torch
from mmengine.optim import OptimWrapper

from mmgfp.hooks import FisherPruningHook
from mmgfp.hooks.fisher_pruning_hook import _batch_size, _grad_scale


def _runner(wrapper):
    return SimpleNamespace(optim_wrapper=wrapper)


def test_grad_scale_reads_an_enabled_loss_scaler():
    """AMP multiplies the loss by the scaler's scale: the hook must divide it out again."""
    scaler = torch.amp.GradScaler('cpu', init_scale=256.0)
    assert _grad_scale(_runner(SimpleNamespace(loss_scaler=scaler))) == 256.0
    off = torch.amp.GradScaler('cpu', init_scale=256.0, enabled=False)
    assert _grad_scale(_runner(SimpleNamespace(loss_scaler=off))) == 1.0


def test_grad_scale_is_one_without_amp():
    model = torch.nn.Linear(2, 2)
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    assert _grad_scale(_runner(wrapper)) == 1.0


def test_batch_size_comes_from_the_data():
    assert _batch_size({'inputs': [torch.zeros(3, 8, 8)] * 5, 'data_samples': []}) == 5
    assert _batch_size((torch.zeros(7, 3, 8, 8), None)) == 7
