"""MMPose end to end with real MMEngine Runners: train the digits pose config with the hook,
prune, save, resume, deploy, run mmpose's test loop and inferencer on the compact model.

The config is configs/digits/td-hm_r18_digits.py (a small top-down heatmap model) on a few
digits keypoint canvases generated into a temporary folder.
"""
import os.path as osp

import pytest

pytest.importorskip('mmpose')
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import mmgfp  # noqa: E402,F401
from mmgfp.apis.checking.check import rel_diff  # noqa: E402
from mmgfp.apis.inputs import tensor_forward  # noqa: E402
from runner_utils import pruning_hook, train_runner  # noqa: E402

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BASE = osp.join(REPO, 'configs', 'digits', 'td-hm_r18_digits.py')
GEN = dict(num_train=12, num_val=4, seed=0)

TEMPLATE = '''
_base_ = '{base}'
data_root = '{root}/'
train_dataloader = dict(batch_size=8, dataset=dict(data_root=data_root, generate_cfg={gen}))
val_dataloader = dict(batch_size=8, dataset=dict(data_root=data_root, generate_cfg={gen}))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=8, val_interval=1000)
param_scheduler = []
default_hooks = dict(checkpoint=dict(interval=4, by_epoch=False, max_keep_ckpts=-1),
                     logger=dict(interval=2))
log_processor = dict(by_epoch=False)
custom_hooks = [dict(type='FisherPruningHook', interval=2, delta='acts', target=0.9,
                     target_metric='flops', channels_per_step=8, save_thresholds=(0.95, ))]
'''


@pytest.fixture(scope='module')
def pose_config(tmp_path_factory):
    from mmgfp.datasets.digits_pose import prepare_digits_pose
    root = str(tmp_path_factory.mktemp('digits_pose'))
    prepare_digits_pose(root, **GEN)
    path = osp.join(root, 'pose.py')
    with open(path, 'w') as f:
        f.write(TEMPLATE.format(base=BASE, root=root, gen=GEN))
    return path


def test_pose_prune_resume_deploy_test_infer(tmp_path, pose_config):
    work = tmp_path / 'work'
    runner = train_runner(pose_config, work)
    hook = pruning_hook(runner)
    assert hook.finished and hook.pruner.remaining()['flops'] <= 0.9
    assert osp.isfile(work / 'pruned_flops_0.95.pth')
    # killed after 4 iterations and resumed: the same masks as the uninterrupted run
    train_runner(pose_config, tmp_path / 'part', **{'train_cfg.max_iters': 4})
    resumed = train_runner(pose_config, tmp_path / 'part', resume=True)
    assert resumed.iter == 8
    full, res = hook.pruner.masker.keep, pruning_hook(resumed).pruner.masker.keep
    assert full.keys() == res.keys() and all(torch.equal(full[k], res[k]) for k in full)

    import tools.deploy_pruned as deploy_tool
    out = deploy_tool.main([pose_config, str(work / 'iter_8.pth'), '--out-dir',
                            str(tmp_path / 'deploy')])
    assert out['pruned'] == 'yes'
    cfg = Config.fromfile(out['config'])
    init_default_scope('mmpose')
    from mmpose.registry import MODELS
    compact = MODELS.build(cfg.model)
    compact.load_state_dict(torch.load(out['checkpoint'], weights_only=True)['state_dict'])
    masked = runner.model.eval()
    compact.eval()
    batch = next(iter(runner.val_dataloader))
    with torch.no_grad():
        assert rel_diff(tensor_forward(batch)(compact), tensor_forward(batch)(masked)) < 1e-4
    assert sum(p.numel() for p in compact.parameters()) < sum(
        p.numel() for p in masked.parameters())

    # mmpose's own test loop (COCO keypoint AP) on the compact and on the masked model
    import tools.test as test_tool
    compact_ap = test_tool.main([out['config'], out['checkpoint'], '--work-dir',
                                 str(tmp_path / 'test')])['coco/AP']
    masked_ap = test_tool.main([pose_config, str(work / 'iter_8.pth'), '--work-dir',
                                str(tmp_path / 'test_masked')])['coco/AP']
    assert compact_ap == pytest.approx(masked_ap, abs=1e-6)

    # mmpose's inference API takes the compact config and checkpoint as they are
    from mmpose.apis import inference_topdown, init_model
    model = init_model(out['config'], out['checkpoint'], device='cpu')
    img = osp.join(cfg.data_root, 'val', '00000.png')
    results = inference_topdown(model, img, bboxes=np.array([[10, 10, 50, 60]], np.float32))
    assert results[0].pred_instances.keypoints.shape == (1, 5, 2)
