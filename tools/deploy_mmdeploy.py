"""Deploy a (compact) OpenMMLab model with MMDeploy to ONNX Runtime, post-processing included.

    python tools/deploy_mmdeploy.py CONFIG CHECKPOINT --out DIR --image IMG
        [--backend onnxruntime] [--static W H] [--opset N] [--check]

CONFIG is usually the compact config ``tools/deploy_pruned.py`` wrote and CHECKPOINT its
``compact.pth`` (any config of a wired model works). The MMDeploy task follows the config's
codebase: MMDetection detectors (``ObjectDetection``: outputs ``dets`` [N, K, 5] = boxes + score
and ``labels`` [N, K], NMS included), MMPose top-down estimators (``PoseDetection``: SimCC
vectors ``simcc_x``/``simcc_y`` or heatmaps ``output``, at the codec's input size) and
MMSegmentation segmentors (``Segmentation``: the label map ``output``). DIR receives
``end2end.onnx`` (input ``input``: the normalised image batch) and ``deploy_cfg.py``, MMDeploy's
deploy config for it (MMDeploy's own configs are not in its wheel; this one is written in code by
the codebase, ``mmgfp/codebases/<scope>.py``). With ``deploy_cfg.py`` MMDeploy's own API runs the
model, e.g. ``mmdeploy.apis.inference_model(CONFIG, DIR/deploy_cfg.py, [DIR/end2end.onnx], IMG,
'cpu')``. The export runs inside mmgfp's compatibility layer for current PyTorch
(``mmgfp/apis/deploying/mmdeploy_compat.py``). ``--check`` runs the codebase's own PyTorch
inference and MMDeploy's ONNX Runtime model on IMG and exits 1 unless they agree: detections
(boxes within 0.01 px, scores within 1e-4, same labels) at or above the score threshold, and at
least one; keypoints within 0.01 px and scores within 1e-4 (relative); the same label at every
pixel but near-ties of the logits.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

BACKENDS = ('onnxruntime', )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Deploy a model with MMDeploy (ONNX Runtime)')
    parser.add_argument('config', help='the compact config (or any config of a detector, '
                        'top-down pose estimator or segmentor)')
    parser.add_argument('checkpoint', help='its checkpoint, e.g. compact.pth')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--image', required=True,
                        help="an image the config's test pipeline reads (traced, and checked)")
    parser.add_argument('--backend', choices=BACKENDS, default='onnxruntime',
                        help='MMDeploy backend (default: onnxruntime)')
    parser.add_argument('--static', type=int, nargs=2, default=None, metavar=('W', 'H'),
                        help='fixed input width and height (default: dynamic batch and size; '
                        "pose: the codec's size and a dynamic batch); MMDeploy resizes to it, so "
                        "--check agrees only where the config's test pipeline gives that size too")
    parser.add_argument('--opset', type=int, default=None,
                        help="ONNX opset (default: 16 for detectors with a RoI head, whose "
                        "RoIAlign needs opset 16's aligned mode; else 11, MMDeploy's)")
    parser.add_argument('--check', action='store_true',
                        help='compare ONNX Runtime predictions with PyTorch on --image')
    args = parser.parse_args(argv)
    if args.static is not None and min(args.static) < 1:
        parser.error(f'--static W H must be positive, but got {args.static}')
    return args


def _check(args, cfg, deploy_cfg, onnx_file) -> bool:
    from mmgfp.apis.deploying import mmdeploy_export as md
    ref = md.pytorch_prediction(args.config, args.checkpoint, args.image)
    got = md.onnxruntime_prediction(args.config, deploy_cfg, onnx_file, args.image)
    res = md.compare(cfg, ref, got)
    lines = res['lines']
    print('\n'.join(lines[:-1] if not res['ok'] else lines))
    print(f'CHECK FAILED: {lines[-1]}' if not res['ok'] else 'CHECK PASSED')
    return res['ok']


def main(argv=None) -> int:
    args = parse_args(argv)
    import mmgfp  # noqa: F401
    from mmengine.config import Config

    from mmgfp.apis.deploying import mmdeploy_export as md
    from mmgfp.core.spec import SpecError
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint'),
                       (args.image, 'image')):
        if not osp.isfile(path):
            raise SystemExit(f'error: {what} {path} does not exist')
    try:
        md.require_mmdeploy()
        md.check_model(args.config, args.checkpoint)
        cfg = Config.fromfile(args.config)
        deploy_cfg = md.deploy_config(cfg, args.static is None, args.static, args.opset)
        out = md.export(args.config, args.checkpoint, args.out, args.image, deploy_cfg)
        print(f"wrote {out['onnx']} and {out['deploy_cfg']}")
        if args.check and not _check(args, cfg, deploy_cfg, out['onnx']):
            return 1
    except (md.MMDeployError, SpecError, ValueError) as e:
        raise SystemExit(f'error: {e}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
