"""How right a detector's detections are as labels (``GFPDistillHook(pseudo_labels=...)``).

Runs the model's ``predict`` on training images (their boxes in the batch's input pixels, as
the hook makes them), keeps the detections scoring at least each threshold, and counts per
threshold the kept boxes, the ground-truth boxes, and the kept boxes that match an unmatched
ground-truth box of the same class with IoU >= 0.5 (greedy, highest score first). Use it to
pick ``score_thr`` for a teacher on images like those it will label.

Usage::

    python benchmarks/pseudo_label_check.py configs/digits/retinanet_r18_fpn_digits.py \\
        work_dirs/accuracy_b2000/baseline/iter_2000.pth --images 100:116 --thr 0.3 0.5 0.7

Prints a table (threshold, kept, ground truth, right, precision, recall); ``--json`` saves it.
"""
import argparse
import json
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='an MMDetection config')
    p.add_argument('checkpoint', help='the teacher: the unpruned model')
    p.add_argument('--images', default='0:16', metavar='START:END',
                   help='which images of the training set (default: 0:16)')
    p.add_argument('--split', choices=('train', 'val', 'test'), default='train',
                   help='the data set whose images and labels are read (default: train)')
    p.add_argument('--thr', type=float, nargs='+', default=[0.3, 0.5, 0.7],
                   help='score thresholds (default: 0.3 0.5 0.7)')
    p.add_argument('--batch', type=int, default=8, help='images per forward (default: 8)')
    p.add_argument('--json', help='save the table here')
    args = p.parse_args(argv)
    start, _, end = args.images.partition(':')
    if not (start.isdigit() and end.isdigit() and int(end) > int(start)):
        p.error(f'--images is START:END with END > START, got {args.images!r}')
    args.range = (int(start), int(end))
    if not all(0 < t <= 1 for t in args.thr):
        p.error(f'--thr are scores in (0, 1], got {args.thr}')
    for path in (args.config, args.checkpoint):
        if not osp.isfile(path):
            p.error(f'no such file: {path}')
    return args


def matches(boxes, labels, gt_boxes, gt_labels, iou_thr: float = 0.5) -> int:
    """Kept boxes (highest score first) that take an unmatched ground-truth box of their class
    with IoU >= ``iou_thr``."""
    from mmdet.structures.bbox import bbox_overlaps
    if not len(boxes) or not len(gt_boxes):
        return 0
    iou = bbox_overlaps(boxes, gt_boxes)
    taken = set()
    right = 0
    for i in range(len(boxes)):
        order = iou[i].argsort(descending=True).tolist()
        for j in order:
            if float(iou[i, j]) < iou_thr:
                break
            if j not in taken and int(gt_labels[j]) == int(labels[i]):
                taken.add(j)
                right += 1
                break
    return right


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, init_default_scope
    from mmengine.runner import load_checkpoint

    import mmgfp  # noqa: F401  (registers the digits data sets)
    from mmgfp.apis.deploying.deploy import build_model
    from mmgfp.codebases import get_codebase

    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    mmdet = get_codebase('mmdet')
    model = build_model(cfg, init=False)
    load_checkpoint(model, args.checkpoint, map_location='cpu', logger='silent')
    model.eval()
    dataset = DATASETS.build(cfg[f'{args.split}_dataloader']['dataset'])
    start, end = args.range
    if end > len(dataset):
        raise SystemExit(f'error: --images {start}:{end}, but the {args.split} set has '
                         f'{len(dataset)} images')
    counts = {t: dict(kept=0, gt=0, right=0) for t in args.thr}
    for first in range(start, end, args.batch):
        items = [dataset[i] for i in range(first, min(first + args.batch, end))]
        data = model.data_preprocessor(pseudo_collate(items), False)
        with torch.no_grad():
            for t in args.thr:
                labelled = mmdet.pseudo_labels(model, data['inputs'], data['data_samples'], t)
                for got, sample in zip(labelled, data['data_samples']):
                    gt = sample.gt_instances
                    gt_boxes = getattr(gt.bboxes, 'tensor', gt.bboxes)
                    counts[t]['kept'] += len(got.gt_instances)
                    counts[t]['gt'] += len(gt_boxes)
                    counts[t]['right'] += matches(got.gt_instances.bboxes,
                                                  got.gt_instances.labels, gt_boxes, gt.labels)
    rows = []
    print(f'{osp.basename(args.checkpoint)} on {args.split} images {start}:{end}: its '
          'detections as labels (IoU >= 0.5, same class)')
    print('| score_thr | kept | ground truth | right | precision | recall |')
    print('|---|---|---|---|---|---|')
    for t, c in counts.items():
        prec = c['right'] / c['kept'] if c['kept'] else float('nan')
        rec = c['right'] / c['gt'] if c['gt'] else float('nan')
        rows.append(dict(score_thr=t, precision=prec, recall=rec, **c))
        print(f"| {t:g} | {c['kept']} | {c['gt']} | {c['right']} | {prec:.3f} | {rec:.3f} |")
    out = dict(config=args.config, checkpoint=args.checkpoint, split=args.split,
               images=[start, end], rows=rows)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == '__main__':
    main()
