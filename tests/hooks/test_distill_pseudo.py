"""GFPDistillHook(pseudo_labels=...): the teacher's confident detections on images without
labels become their labels, and the student trains on them with its own loss."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmgfp  # noqa: F401
from mmgfp.codebases import get_codebase
from mmgfp.hooks import FisherPruningHook, GFPDistillHook
from mmgfp.hooks.distill_hook import _pseudo_codebase
from runner_utils import assert_same_run, det_config, train_runner

from test_distill_unlabeled import NO_VAL, _hook, _images, _prune

LOADER = dict(dataset=dict(type='DigitsCocoDataset'))  # checked for its shape only


@pytest.fixture(scope='module')
def retinanet(tmp_path_factory):
    """A small RetinaNet-R18 in eval mode whose class 3 scores high everywhere (so the
    teacher detects something), and a raw batch as a data loader gives it."""
    from mmgfp.apis.deploying.deploy import build_model
    from mmgfp.apis.inputs import demo_batch
    tmp = tmp_path_factory.mktemp('retinanet')
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = build_model(Config.fromfile(det_config(tmp, str(tmp / 'unused'))), init=True)
    with torch.no_grad():
        k = model.bbox_head.cls_out_channels
        model.bbox_head.retina_cls.bias.view(-1, k)[:, 3] += 6.0
    return model.eval(), demo_batch(model, 2, (96, 96))


def test_pseudo_labels_are_the_teachers_detections_above_the_threshold(retinanet):
    model, raw = retinanet
    data = model.data_preprocessor(copy.deepcopy(raw), False)
    mmdet = get_codebase('mmdet')
    before = [s.gt_instances.bboxes.clone() for s in data['data_samples']]
    with torch.no_grad():
        preds = model.predict(data['inputs'], copy.deepcopy(data['data_samples']),
                              rescale=False)
        thr = float(torch.cat([p.pred_instances.scores for p in preds]).median())
        got = mmdet.pseudo_labels(model, data['inputs'], data['data_samples'], thr)
    kept = 0
    for sample, pred, old, orig in zip(got, preds, before, data['data_samples']):
        keep = pred.pred_instances.scores >= thr
        kept += int(keep.sum())
        torch.testing.assert_close(sample.gt_instances.bboxes, pred.pred_instances.bboxes[keep])
        assert bool((sample.gt_instances.labels == 3).all())
        assert 'pred_instances' not in sample and len(sample.ignored_instances) == 0
        # in the input's pixels (96 x 96), not the original image's
        assert float(sample.gt_instances.bboxes.max()) <= 96
        # the given samples are untouched
        assert 'pred_instances' not in orig
        torch.testing.assert_close(orig.gt_instances.bboxes, old)
    total = sum(len(p.pred_instances) for p in preds)
    assert 0 < kept < total, 'the threshold (the median score) keeps some boxes, not all'


def test_pseudo_terms_are_the_students_own_loss_on_them(retinanet):
    model, raw = retinanet
    student = copy.deepcopy(model)
    hook = GFPDistillHook(losses=[dict(module='neck', type='cwd')], unlabeled_dataloader=LOADER,
                          pseudo_labels=dict(score_thr=0.5, weight=0.5))
    hook.attach(student, unlabeled=iter([copy.deepcopy(raw)]))
    with torch.no_grad():
        student.bbox_head.retina_reg.bias += 0.2  # the student's boxes differ
    labelled = student.data_preprocessor(copy.deepcopy(raw), True)
    hook.active = True
    out = student.loss(labelled['inputs'], labelled['data_samples'])
    hook.detach(student)
    # by hand: the teacher's labels, then the student's own loss on them
    side = student.data_preprocessor(copy.deepcopy(raw), False)
    with torch.no_grad():
        samples = get_codebase('mmdet').pseudo_labels(hook.teacher, side['inputs'],
                                                      side['data_samples'], 0.5)
    own = student.loss(side['inputs'], samples)
    def total(v):  # RetinaNet gives one term per level
        return float(sum(v)) if isinstance(v, list) else float(v)
    for key in ('loss_cls', 'loss_bbox'):
        assert total(out[key + '_pseudo']) == pytest.approx(0.5 * total(own[key]), rel=1e-5)
    assert total(out['loss_bbox_pseudo']) > 0
    n = sum(len(s.gt_instances) for s in samples) / len(samples)
    assert n > 0 and float(out['pseudo_boxes']) == pytest.approx(n)
    assert 'loss_distill_cwd_neck_unlabeled' in out and 'loss_distill_cwd_neck' in out


def test_bad_pseudo_label_arguments_are_named(retinanet):
    with pytest.raises(ValueError, match='give `unlabeled_dataloader` too'):
        GFPDistillHook(pseudo_labels=dict(score_thr=0.5))
    for bad in (dict(score_thr=0), dict(score_thr=1.5), dict(weight=-1),
                dict(score_thr=True)):
        with pytest.raises(ValueError, match='0 < score_thr <= 1 and weight >= 0'):
            GFPDistillHook(unlabeled_dataloader=LOADER, pseudo_labels=bad)
    with pytest.raises(ValueError, match=r'is dict\(score_thr=0.5, weight=1.0\)'):
        GFPDistillHook(unlabeled_dataloader=LOADER, pseudo_labels=dict(thr=0.5))
    with pytest.raises(ValueError, match='which mmgfp does for MMDetection detectors, not '
                                         'Linear'):
        _pseudo_codebase(torch.nn.Linear(2, 2))
    model, _ = retinanet
    masked = copy.deepcopy(model)
    masked.data_preprocessor.pad_mask = True  # as Mask2Former's: it trains masks
    with pytest.raises(ValueError, match='also trains masks'):
        _pseudo_codebase(masked)
    # only fg_mse (which needs the boxes) is fine with images without labels: the labels
    # are the teacher's
    GFPDistillHook(losses=[dict(module='neck', type='fg_mse')], unlabeled_dataloader=LOADER,
                   pseudo_labels={})


def test_pseudo_labels_train_the_student_but_do_not_rank_channels(tmp_path, det_data):
    """A Runner: the pseudo terms are logged and the first iteration's Fisher information is
    that of the same run without them (one step of the same weights)."""
    config = det_config(tmp_path, det_data, max_iters=1, ckpt_interval=100)
    prune = _prune(interval=100)  # accumulate only
    images = _images(det_data)
    with_p = train_runner(config, tmp_path / 'p', **dict(NO_VAL, custom_hooks=[prune, dict(
        type='GFPDistillHook', fisher='task', unlabeled_dataloader=images,
        pseudo_labels=dict(score_thr=0.01, weight=5.0))]))
    without = train_runner(config, tmp_path / 'n', **dict(NO_VAL, custom_hooks=[prune, dict(
        type='GFPDistillHook', fisher='task', unlabeled_dataloader=images)]))
    scalars = with_p.message_hub.log_scalars
    for key in ('train/loss_cls_pseudo', 'train/loss_bbox_pseudo', 'train/pseudo_boxes'):
        assert key in scalars, key
    assert 0 < scalars['train/loss_cls_pseudo'].data[0][0] < float('inf')
    fa = _hook(with_p, FisherPruningHook).pruner.recorder.fisher
    fb = _hook(without, FisherPruningHook).pruner.recorder.fisher
    assert fa.keys() == fb.keys() and any(bool(v.any()) for v in fa.values())
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], rtol=1e-5, atol=1e-12, msg=k)
    a = dict(with_p.model.named_parameters())
    b = dict(without.model.named_parameters())
    assert any(not torch.allclose(a[k], b[k]) for k in a), 'the pseudo terms train'


def test_pseudo_labels_under_autocast_predict_in_full_precision_with_finite_terms(retinanet):
    """AMP (bfloat16 autocast on CPU here): the teacher predicts in full precision (under
    bfloat16 its predict raised in mmcv's CPU NMS, which takes float32 only), its detections
    label the images, and the student's terms on them are finite, in the dtype of its own
    task loss."""
    model, raw = retinanet
    student = copy.deepcopy(model)
    hook = GFPDistillHook(losses=[dict(module='neck', type='cwd')], unlabeled_dataloader=LOADER,
                          pseudo_labels=dict(score_thr=0.5))
    hook.attach(student, unlabeled=iter([copy.deepcopy(raw)]))
    side = student.data_preprocessor(copy.deepcopy(raw), False)
    labelled = student.data_preprocessor(copy.deepcopy(raw), True)
    hook.active = True
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with torch.no_grad():
            samples = get_codebase('mmdet').pseudo_labels(hook.teacher, side['inputs'],
                                                          side['data_samples'], 0.5)
        out = student.loss(labelled['inputs'], labelled['data_samples'])
    hook.detach(student)
    assert sum(len(s.gt_instances) for s in samples) > 0
    assert all(s.gt_instances.bboxes.dtype == torch.float32 for s in samples)
    for key in ('loss_cls', 'loss_bbox'):
        got, own = out[key + '_pseudo'], out[key]
        got, own = (got, own) if isinstance(got, list) else ([got], [own])
        assert all(g.dtype == o.dtype and bool(torch.isfinite(g)) for g, o in zip(got, own)), key
    assert float(out['pseudo_boxes']) > 0


def test_resume_with_pseudo_labels_equals_an_uninterrupted_run(tmp_path, det_data):
    """The teacher (stored in the checkpoint) labels the same unlabelled batches after a
    resume: the resumed run ends where the uninterrupted one did."""
    config = det_config(tmp_path, det_data, max_iters=6, interval=2, target=0.8, per_step=8,
                        ckpt_interval=3)
    hooks = [_prune(target=0.8), dict(
        type='GFPDistillHook', unlabeled_dataloader=_images(det_data),
        pseudo_labels=dict(score_thr=0.002, weight=2.0))]
    # the untrained teacher scores near RetinaNet's prior (0.01): its test_cfg keeps every
    # score, the threshold is below the prior, so the unlabelled images get boxes
    common = dict(NO_VAL, custom_hooks=hooks, **{'model.test_cfg.score_thr': 0.0,
                                                 'model.test_cfg.max_per_img': 20})
    full = train_runner(config, tmp_path / 'full', **common)
    train_runner(config, tmp_path / 'part', **dict(common, **{'train_cfg.max_iters': 3}))
    resumed = train_runner(config, tmp_path / 'part', **dict(common, resume=True))
    assert resumed.iter == 6 and _hook(resumed, GFPDistillHook)._unlabeled.drawn == 6
    for run in (full, resumed):
        boxes = run.message_hub.log_scalars['train/pseudo_boxes'].data[0]
        assert len(boxes) > 0 and all(b > 0 for b in boxes)
    assert_same_run(full, resumed)
