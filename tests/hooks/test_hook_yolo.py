"""End to end with an MMYOLO Runner: YOLOv5-n (configs/digits/yolov5_n_digits.py, MMYOLO's fast
config: yolov5_collate batches) on digits: train with the hook, prune, save, resume, deploy,
MMYOLO's test loop and MMDetection's inference API on the compact config."""
import glob
import importlib.util
import os.path as osp

import pytest
import torch

if importlib.util.find_spec('mmyolo') is None:  # importing it needs mmgfp's bridge
    pytest.skip('mmyolo is not installed (pip install -e .[yolo])', allow_module_level=True)
from mmengine.config import Config  # noqa: E402

import mmgfp  # noqa: F401,E402
from mmgfp.apis.checking.check import rel_diff  # noqa: E402
from mmgfp.apis.inputs import tensor_forward  # noqa: E402
from runner_utils import DET_GEN, hook_masks, pruning_hook, train_runner  # noqa: E402

pytestmark = pytest.mark.slow
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BASE = osp.join(REPO, 'configs', 'digits', 'yolov5_n_digits.py')

CHILD = '''
_base_ = '{base}'
gen = {gen}
train_dataloader = dict(batch_size=2, dataset=dict(data_root='{root}/', generate_cfg=gen))
val_dataloader = dict(batch_size=4, dataset=dict(data_root='{root}/', generate_cfg=gen))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='{root}/annotations/val.json')
test_evaluator = val_evaluator
model = dict(test_cfg=dict(nms_pre=100, max_per_img=20))
# SGD: Adam turns the float noise of near-zero gradients into full steps (lr * sign), and the
# resumed run would drift from the uninterrupted one
optim_wrapper = dict(optimizer=dict(_delete_=True, type='SGD', lr=0.01, momentum=0.9,
                                            weight_decay=1e-4))
train_cfg = dict(max_iters=8, val_begin=1000, val_interval=1000)  # no validation
default_hooks = dict(checkpoint=dict(interval=4), logger=dict(interval=2))
custom_hooks = [dict(type='FisherPruningHook', interval=2, delta='acts', target=0.9,
                     target_metric='flops', channels_per_step=16, save_thresholds=(0.95,))]
'''


def _compact(out):
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(out['config'])
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    model.load_state_dict(torch.load(out['checkpoint'], weights_only=True)['state_dict'])
    return model.eval()


def test_yolov5_prune_resume_deploy_test(tmp_path, det_data):
    config = str(tmp_path / 'yolov5_n.py')
    with open(config, 'w') as f:
        f.write(CHILD.format(base=BASE, gen=DET_GEN, root=det_data))
    runner = train_runner(config, tmp_path / 'work')
    hook = pruning_hook(runner)
    assert hook.finished and hook.steps >= 1
    assert hook.pruner.remaining()['flops'] <= 0.9
    assert osp.isfile(tmp_path / 'work' / 'pruned_flops_0.95.json')
    # resumed from the checkpoint of iteration 4: the same masks and weights at iteration 8
    resumed = train_runner(config, tmp_path / 'resumed', resume=True,
                     load_from=str(tmp_path / 'work' / 'iter_4.pth'))
    assert resumed.iter == 8
    a, b = hook_masks(runner), hook_masks(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    import tools.deploy_pruned as deploy_tool
    out = deploy_tool.main([config, str(tmp_path / 'work' / 'iter_8.pth'), '--out-dir',
                            str(tmp_path / 'deploy')])
    assert out['pruned'] == 'yes'
    compact, masked = _compact(out), runner.model.eval()
    assert type(compact).__name__ == 'YOLODetector'
    assert (sum(p.numel() for p in compact.parameters()) <
            sum(p.numel() for p in masked.parameters()))
    # the masked model's outputs, on a test batch (DetDataSample list) and on a training batch
    # (yolov5_collate's dict, which the codebase turns into a test batch for mode='tensor')
    for batch in (next(iter(runner.val_dataloader)), next(iter(runner.train_dataloader))):
        with torch.no_grad():
            assert rel_diff(tensor_forward(batch)(compact), tensor_forward(batch)(masked)) < 1e-4

    import tools.test as test_tool
    metrics = test_tool.main([out['config'], out['checkpoint'], '--work-dir',
                              str(tmp_path / 'test')])
    masked_metrics = test_tool.main([config, str(tmp_path / 'work' / 'iter_8.pth'),
                                     '--work-dir', str(tmp_path / 'test_masked')])
    assert metrics['coco/bbox_mAP'] == pytest.approx(masked_metrics['coco/bbox_mAP'], abs=1e-3)
    # MMDetection's inference API (what MMYOLO's demos use) takes the compact config as is
    from mmdet.apis import inference_detector, init_detector
    det = init_detector(out['config'], out['checkpoint'], device='cpu')
    img = sorted(glob.glob(osp.join(det_data, 'val', '*.png')))[0]
    assert inference_detector(det, img).pred_instances.bboxes.shape[-1] == 4
