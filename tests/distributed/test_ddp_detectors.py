"""Pruning detectors under MMEngine DDP: 2 CPU processes (gloo) vs one process, same samples.

RetinaNet (single-stage) and Faster R-CNN (two-stage) with a ResNet-18 at a quarter width on
64x64 digits canvases. Detection losses are normalised per process (RetinaNet by its positive
anchors, the RPN by its sampled anchors, the RoI head by its RoIs), so a DDP step is the mean
of per-rank losses, not the loss of one large batch. The one-process reference therefore
takes, per optimiser step, the batches the ranks took in that DDP iteration one after the
other (``GFPTestRankOrderSampler``) with ``accumulative_counts=2``: the same losses, the same
averaged gradients, and per-sample Fisher terms with the same scale (MMEngine divides the loss
by the accumulation count as the hook divides by the world size). Its hook interval and
iterations are doubled. All samplers are deterministic (every anchor and every RoI taken): the
RoI head sees each image's proposals plus its ground truth, so images, and ranks, give uneven
RoI counts. The Faster R-CNN job loses rank 1 after a checkpoint taken between two pruning
steps and is resumed; it must end where one uninterrupted process on the same samples ends.
"""
import os.path as osp
import re
import sys
import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)
from test_ddp import (_assert_same_masks, _assert_same_updates,  # noqa: E402
                      _assert_statistics_match, _launch, _load, _ok, _pruned, _summing_group,
                      _train_here)

WORLD, BATCH = 2, 2
MAX_ITERS, INTERVAL, MID = 6, 3, 4  # pruning at 3 and 6; a checkpoint at 4, rank 1 lost at 5
# The reference repeats the ranks' arithmetic, so the weights agree to the bit (seen on one core
# and on two); the small LR is not what makes them agree, only what PER_STEP was chosen with.
PER_STEP, LR = 8, 1e-5
GEN = dict(num_train=16, num_val=2, seed=0, canvas=64, digit_size=(10, 24))

MODELS = {
    'retinanet': ('retinanet/retinanet_r18_fpn_1x_coco.py', '''
    bbox_head=dict(num_classes=10, in_channels=16, feat_channels=16, stacked_convs=1)'''),
    # every anchor and every proposal sampled: no random choice, RoIs = proposals + gt boxes
    'faster_rcnn': ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', '''
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=16),
                  bbox_head=dict(in_channels=16, fc_out_channels=32, num_classes=10)),
    train_cfg=dict(rpn=dict(sampler=dict(num=100000)),
                   rpn_proposal=dict(nms_pre=100, max_per_img=30),
                   rcnn=dict(sampler=dict(num=100000)))'''),
}

TEMPLATE = '''
_base_ = 'mmdet::{base}'
custom_imports = dict(imports=['mmgfp', 'ddp_probe'], allow_failed_imports=False)
model = dict(
    backbone=dict(depth=18, base_channels=16, init_cfg=None, norm_eval=True, frozen_stages=-1),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=16),{model})
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                          'scale_factor'))]
train_dataloader = dict(
    batch_size={batch}, num_workers=0, persistent_workers=False, batch_sampler=None,
    sampler=dict(type='{sampler}', shuffle=True, seed=0{sampler_args}),
    dataset=dict(type='DigitsCocoDataset', data_root='{data_root}/', generate_cfg={gen},
                 ann_file='annotations/train.json', data_prefix=dict(img='train/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=1), pipeline=pipeline))
val_dataloader = val_cfg = val_evaluator = None
test_dataloader = test_cfg = test_evaluator = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters},
                 val_interval=100000)
param_scheduler = []
optim_wrapper = dict(_delete_=True, type='OptimWrapper', accumulative_counts={accum},
                     optimizer=dict(type='SGD', lr={lr}, weight_decay=0.0001))
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval={ckpt}, by_epoch=False,
                                     max_keep_ckpts=-1),
                     logger=dict(type='LoggerHook', interval=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
load_from = '{start}'
env_cfg = dict(dist_cfg=dict(backend='gloo', timeout=120))
custom_hooks = [
    dict(type='FisherPruningHook', interval={interval}, delta='acts', target=0.3,
         target_metric='flops', channels_per_step={per_step}, save_thresholds=()),
    dict(type='GFPTestRankProbe', dump_iters=[{mid}]{lose}),
]
'''


def _write(path, name, data_root, start, single=False, lose=''):
    k = WORLD if single else 1  # one process: a step per WORLD batches, the ranks' batches
    sampler = ('GFPTestRankOrderSampler', f', world={WORLD}, batch={BATCH}') if single else \
        ('DefaultSampler', '')
    base, model = MODELS[name]
    with open(path, 'w') as f:
        f.write(TEMPLATE.format(
            base=base, model=model, batch=BATCH, sampler=sampler[0], sampler_args=sampler[1],
            data_root=data_root, gen=GEN, max_iters=MAX_ITERS * k, accum=k, lr=LR,
            ckpt=MID * k if not single else 100000, start=start, interval=INTERVAL * k,
            per_step=PER_STEP, mid=MID * k, lose=lose))
    return path


def _starting_point(config, out):
    """mmdet's initialisation, BN running statistics measured on the data (see test_ddp.py)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    from mmgfp.apis.checking.check import build_model
    cfg = Config.fromfile(config)
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = build_model(cfg, init=True)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
        bn.train()
    with torch.no_grad():
        for batch in Runner.build_dataloader(cfg.train_dataloader):
            model.extract_feat(model.data_preprocessor(batch, False)['inputs'])
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, out)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Config paths per model: 'ddp', 'ddp_lose' and 'single'; and the starting weights."""
    from mmgfp.datasets.digits import prepare_digits_det
    tmp = tmp_path_factory.mktemp('ddp_det')
    data_root = str(tmp / 'digits')
    prepare_digits_det(data_root, **GEN)
    out = {}
    for name in MODELS:
        start = str(tmp / f'{name}_start.pth')
        paths = {'start': start}
        paths['ddp'] = _write(str(tmp / f'{name}_ddp.py'), name, data_root, start)
        paths['ddp_lose'] = _write(str(tmp / f'{name}_ddp_lose.py'), name, data_root, start,
                                   lose=f', lose_rank=1, lose_after={MID}')
        paths['single'] = _write(str(tmp / f'{name}_single.py'), name, data_root, start,
                                 single=True)
        _starting_point(paths['ddp'], start)
        out[name] = paths
    out['retinanet']['ddp_pseudo'] = _with_pseudo_labels(out['retinanet']['ddp'], data_root)
    return out


# GFPDistillHook with the training canvases as images without labels (no LoadAnnotations), the
# teacher's detections as their labels. Scores of the untrained teacher are near RetinaNet's
# prior (0.01): its test_cfg keeps every score and the threshold is below the prior, so the
# unlabelled batches carry boxes and the pseudo box loss is not zero.
PSEUDO = '''
model.update(test_cfg=dict(score_thr=0.0, max_per_img=20))
custom_hooks.append(dict(
    type='GFPDistillHook', losses=[dict(module='neck', type='cwd')],
    pseudo_labels=dict(score_thr=0.002, weight=1.0),
    unlabeled_dataloader=dict(dataset=dict(
        type='DigitsCocoDataset', data_root='{data_root}/', generate_cfg={gen},
        ann_file='annotations/train.json', data_prefix=dict(img='train/'), test_mode=True,
        pipeline=[dict(type='LoadImageFromFile'), dict(type='PackDetInputs')]))))
'''


def _with_pseudo_labels(config, data_root):
    path = config[:-3] + '_pseudo.py'
    with open(config) as f, open(path, 'w') as out:
        out.write(f.read() + PSEUDO.format(data_root=data_root, gen=GEN))
    return path


def _compare(ddp_dir, single_dir, start, what):
    """Both ranks and one process on the same samples: masks, steps, weights, statistics."""
    r0, r1 = (_load(ddp_dir, f'rank{r}_iter{MAX_ITERS}.pth') for r in range(WORLD))
    one = _load(single_dir, f'rank0_iter{MAX_ITERS * WORLD}.pth')
    assert r0['wrapped'] and r1['wrapped'] and not one['wrapped']
    # the one process read, per step, what rank 0 and then rank 1 read in that DDP iteration
    # (a resumed job's probes saw only the iterations after the restart)
    pairs = [s for pair in zip(r0['samples'], r1['samples']) for s in pair]
    assert len(pairs) > 0 and one['samples'][-len(pairs):] == pairs
    assert r0['samples'] != r1['samples']
    _assert_same_masks(r0['masks'], r1['masks'], f'{what}: rank 0 vs rank 1')
    for k in r0['state_dict']:
        assert torch.equal(r0['state_dict'][k], r1['state_dict'][k]), k
    assert r0['steps'] == one['steps'] == MAX_ITERS // INTERVAL
    assert _pruned(one['masks']) >= PER_STEP * one['steps']
    _assert_same_masks(r0['masks'], one['masks'], f'{what}: DDP vs one process')
    _assert_same_updates(start, r0['state_dict'], one['state_dict'], f'{what}: DDP vs one')


def _compare_statistics(ddp_dir, single_dir, what):
    """Between two pruning steps: the same sums on both ranks, equal to one process's."""
    m0, m1 = (_load(ddp_dir, f'rank{r}_iter{MID}.pth') for r in range(WORLD))
    m_one = _load(single_dir, f'rank0_iter{MID * WORLD}.pth')
    for k in m0['fisher']:
        assert torch.equal(m0['fisher'][k], m1['fisher'][k]), k
    assert m0['hits'] == m1['hits'] == m_one['hits']  # per-rank calls summed = sub-batches'
    _assert_statistics_match(m0['fisher'], m_one['fisher'], what)


@pytest.fixture(scope='module')
def single_runs(setup, tmp_path_factory):
    return {name: _train_here(p['single'], tmp_path_factory.mktemp(f'{name}_single'))
            for name, p in setup.items()}


@pytest.mark.slow
def test_retinanet_ddp_matches_one_process(setup, single_runs, tmp_path):
    paths = setup['retinanet']
    ddp = _ok([paths['ddp']], tmp_path / 'ddp')
    start = torch.load(paths['start'], weights_only=True)['state_dict']
    _compare(ddp, single_runs['retinanet'], start, 'RetinaNet')
    _compare_statistics(ddp, single_runs['retinanet'], 'RetinaNet')


@pytest.mark.slow
def test_retinanet_ddp_with_pseudo_labels_keeps_the_ranks_identical(setup, tmp_path):
    """Each rank labels its own shard of the unlabelled images with the teacher's detections
    and adds the student's loss on them: the extra forwards run on both ranks without a hang
    or a failed all-reduce, the terms are logged with boxes, and the ranks keep bit-identical
    weights and the same masks (what DDP's averaged gradients and the hook's summed Fisher
    statistics give; no one-process reference here, the unlabelled shards differ)."""
    ddp = _ok([setup['retinanet']['ddp_pseudo']], tmp_path / 'ddp_pseudo')
    r0, r1 = (_load(ddp, f'rank{r}_iter{MAX_ITERS}.pth') for r in range(WORLD))
    with open(tmp_path / 'ddp_pseudo' / 'launch.log', errors='replace') as f:
        log = f.read()
    for key in ('loss_cls_pseudo', 'loss_bbox_pseudo', 'pseudo_boxes'):
        assert key in log, key
    boxes = [float(v) for v in re.findall(r'pseudo_boxes: ([0-9.]+)', log)]
    assert boxes and all(b > 0 for b in boxes), 'the teacher labelled the unlabelled images'
    _assert_same_masks(r0['masks'], r1['masks'], 'pseudo labels: rank 0 vs rank 1')
    assert r0['steps'] == MAX_ITERS // INTERVAL and _pruned(r0['masks']) >= PER_STEP
    for k in r0['state_dict']:
        assert torch.equal(r0['state_dict'][k], r1['state_dict'][k]), k
    assert _load(ddp, f'iter_{MAX_ITERS}.pth')['mmgfp_distill'] == dict(
        unlabeled_batches=MAX_ITERS)


@pytest.mark.slow
def test_faster_rcnn_ddp_with_uneven_rois_resumes_after_losing_a_rank(setup, single_runs,
                                                                       tmp_path):
    """Rank 1 dies after the checkpoint at MID; the restarted job ends as one process does."""
    paths = setup['faster_rcnn']
    work = tmp_path / 'lost'
    rc, _ = _launch([paths['ddp_lose']], work)
    assert rc != 0, 'losing a rank must fail the job'
    assert osp.isfile(work / f'iter_{MID}.pth')
    # the statistics at the checkpoint (before the rank was lost): equal to one process's
    _compare_statistics(str(work), single_runs['faster_rcnn'], 'Faster R-CNN')
    state = _load(str(work), f'iter_{MID}.pth')['mmgfp']
    assert not state['finished'] and state['steps'] == MID // INTERVAL
    _ok([paths['ddp'], '--resume'], work)
    log = open(work / 'launch.log', errors='replace').read()
    assert 'FisherPruningHook: masks restored from the checkpoint (resume)' in log
    assert 'summed over the batch as one sample' not in log  # every RoI found its image
    start = torch.load(paths['start'], weights_only=True)['state_dict']
    _compare(str(work), single_runs['faster_rcnn'], start, 'Faster R-CNN, resumed')


# -- the fold of RoI rows onto images, with threads standing in for ranks (no processes) ------
class _Cut(nn.Module):
    """Stands in for an RoI extractor: one row per RoI, cut from the map of its image."""

    def forward(self, feats, rois):
        rows = feats.index_select(0, rois[:, 0].long())
        return F.adaptive_avg_pool2d(rows, 2) * rois[:, 1:2, None, None]


class _RoINet(nn.Module):
    """conv -> relu -> cut rows per RoI -> flatten -> fc -> relu -> fc   (loss over RoIs)"""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.cut = _Cut()
        self.fc1 = nn.Linear(24, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x, rois):
        return self.fc2(torch.relu(self.fc1(self.cut(torch.relu(self.c1(x)), rois).flatten(1))))


def _rois(counts, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.cat([torch.full((c, ), i, dtype=torch.long) for i, c in enumerate(counts)])
    return torch.cat([img[:, None].float(), torch.rand(len(img), 4, generator=g) + 0.5], 1)


def _vouch_cut(tracer, module, inputs, output):
    from mmgfp.core.layout import Layout
    tracer.set_layout(output, Layout(1, tracer.layout(inputs[0]).segs))


@pytest.fixture
def roi_source():
    """_Cut tells the image of each row (as mmdet's RoI extractors do, codebases/mmdet.py)."""
    from mmgfp.core import VouchedModule
    from mmgfp.core.fisher import RowSource
    VouchedModule.register(_Cut, _vouch_cut)
    RowSource.register(_Cut, lambda m, args: args[1][:, 0])
    yield
    RowSource.registry.pop(_Cut)
    VouchedModule.registry.pop(_Cut)


def _fisher(model, x, rois, y, scale=1.0, reduce=None):
    from mmgfp.core import FisherPruner, build_groups
    pruner = FisherPruner(model, build_groups(model, lambda m: m(x, rois)))
    rec = pruner.recorder
    rec.start()
    rec.begin_iter(len(x))
    F.cross_entropy(model(x, rois), y).backward()  # averaged over this process's RoIs
    rec.end_iter(scale, reduce)
    rec.stop()
    pruner.masker.detach()
    return rec.fisher


def test_uneven_rois_fold_onto_their_images(roi_source):
    """Per-image Fisher terms with 1..4 RoIs per image: by batch or image by image, the same.

    The reference runs one image at a time with its share of the batch loss; the batched
    recorder folds each RoI row onto its image (``rois[:, 0]``), so it must agree. 8 RoIs for
    4 images would also pass for equal blocks of 2, which would be wrong here.
    """
    torch.manual_seed(0)
    counts = [1, 4, 1, 2]
    x, rois = torch.randn(4, 3, 6, 6), _rois(counts, 0)
    y = torch.randint(0, 3, (len(rois), ))
    model = _RoINet()
    batched = _fisher(model, x, rois, y)
    ref, first = {}, 0
    for i, c in enumerate(counts):
        part = slice(first, first + c)
        r = rois[part].clone()
        r[:, 0] = 0
        # loss of image i's RoIs, normalised by the whole batch's RoI count as in the batch
        single = _fisher(model, x[i:i + 1], r, y[part], scale=len(rois) / c)
        ref = {k: ref.get(k, 0) + v for k, v in single.items()}
        first += c
    assert batched.keys() == ref.keys() and len(ref) == 2  # c1 and fc1
    for k in ref:
        assert float(ref[k].sum()) > 0
        # float32 gradients summed in two orders: relative errors up to ~1e-5 on other CPUs,
        # thread counts or seeds (the core suite's tolerance)
        torch.testing.assert_close(batched[k], ref[k], rtol=1e-4,
                                   atol=1e-6 * float(ref[k].abs().max()))


def test_ranks_with_uneven_rois_sum_to_one_process(roi_source):
    """Two ranks (threads) with 3 and 6 RoIs: their summed statistics equal one process's
    on the same two batches, each batch's loss normalised by its own RoIs (as in the DDP
    tests above)."""
    torch.manual_seed(1)
    batches = []
    for counts in ([1, 2], [4, 2]):
        rois = _rois(counts, len(batches))
        batches.append((torch.randn(2, 3, 6, 6), rois, torch.randint(0, 3, (len(rois), ))))
    model = _RoINet()
    one = [_fisher(model, *b, scale=WORLD) for b in batches]
    one = {k: one[0][k] + one[1][k] for k in one[0]}
    models = [_RoINet() for _ in range(WORLD)]  # a replica per rank, as under DDP
    for m in models:
        m.load_state_dict(model.state_dict())
    reduces, ranks, errors = _summing_group(WORLD), [None] * WORLD, []

    def run(r):
        try:
            ranks[r] = _fisher(models[r], *batches[r], scale=WORLD, reduce=reduces[r])
        except Exception as e:  # noqa: BLE001  (a thread's error would be lost)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r, )) for r in range(WORLD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for k in one:
        assert float(one[k].sum()) > 0
        assert torch.equal(ranks[0][k], ranks[1][k])
        torch.testing.assert_close(ranks[0][k], one[k], rtol=1e-6, atol=0)
