"""FisherPruningHook on TOOD under a real Runner.

TOOD's head reads the training epoch from the message hub in its loss (it switches from the
ATSS assigner to its task-aligned one after ``initial_epoch``); a Runner sets it, the hook must
trace and prune through that loss, and the pruned model must deploy.
"""
import pytest

import mmgfp  # noqa: F401
from runner_utils import det_config, train_runner
from test_hook_e2e import _check_pruned_run, _deploy_and_compare

pytestmark = pytest.mark.slow


def test_tood_prune_and_deploy(tmp_path, det_data):
    config = det_config(tmp_path, det_data, base='tood/tood_r50_fpn_1x_coco.py', name='tood',
                        max_iters=4, interval=1, ckpt_interval=4)
    work = tmp_path / 'work'
    runner = train_runner(config, work)
    head = runner.model.bbox_head
    assert head.epoch == 0 and head.epoch < head.initial_epoch  # the loss the hook traced
    _check_pruned_run(runner, str(work))
    _deploy_and_compare(config, str(work / 'iter_4.pth'), tmp_path / 'deploy', runner)
