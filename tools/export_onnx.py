"""Export a (compact) model to ONNX; with --check, compare onnxruntime against PyTorch.

    python tools/export_onnx.py CONFIG CHECKPOINT --out model.onnx [--input-size H W]
        [--batch N] [--opset N] [--exporter {dynamo,torchscript}] [--static-batch] [--check]

CONFIG is usually the compact config that ``tools/deploy_pruned.py`` wrote and CHECKPOINT its
``compact.pth`` (any mmdet single-stage detector / mmpretrain classifier config works too). The
exported graph is ``model(inputs, mode='tensor')``: the raw head outputs of a detector (per FPN
level, before box decoding and NMS) or a classifier's scores, on ``inputs`` already normalised
as the config's ``data_preprocessor`` does. ``--check`` runs onnxruntime on a random batch
(and on a second batch size when the batch axis is dynamic), prints the relative difference of
every output and exits 1 when one exceeds 1e-4.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

TOL = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export a (compact) model to ONNX')
    parser.add_argument('config', help='the compact config (or any mmdet/mmpretrain config)')
    parser.add_argument('checkpoint', help='its checkpoint, e.g. compact.pth')
    parser.add_argument('--out', required=True, help='the ONNX file to write')
    parser.add_argument('--input-size', type=int, nargs=2, default=[224, 224],
                        metavar=('H', 'W'), help='example input size (default: 224 224)')
    parser.add_argument('--batch', type=int, default=1, help='example batch size')
    parser.add_argument('--opset', type=int, default=None,
                        help="ONNX opset (default: the exporter's)")
    parser.add_argument('--exporter', choices=['dynamo', 'torchscript'], default='dynamo',
                        help='torch.export based (default, needs onnxscript) or the legacy '
                        'TorchScript tracer')
    parser.add_argument('--static-batch', action='store_true',
                        help='fixed batch axis (default: dynamic where the graph allows)')
    parser.add_argument('--check', action='store_true',
                        help='compare onnxruntime with PyTorch, exit 1 above 1e-4 relative')
    args = parser.parse_args(argv)
    if args.batch < 1 or min(args.input_size) < 1:
        parser.error('--batch and --input-size must be positive')
    return args


def _describe(info: dict, model) -> str:
    lines = [f"wrote {info['path']} ({info['exporter']} exporter, opset {info['opset']}, "
             f"{'dynamic' if info['dynamic_batch'] else 'fixed'} batch)",
             f"  input  inputs: float32 [{', '.join(map(str, info['input_shape']))}]"]
    pre = getattr(model, 'data_preprocessor', None)
    mean, std = getattr(pre, 'mean', None), getattr(pre, 'std', None)
    if mean is not None and std is not None:
        lines[-1] += (f", normalised as the config's data_preprocessor does (mean "
                      f"{[round(v, 3) for v in mean.flatten().tolist()]}, std "
                      f"{[round(v, 3) for v in std.flatten().tolist()]}"
                      f"{', BGR->RGB' if getattr(pre, '_channel_conversion', False) else ''}"
                      '): do that before the model')
    for name, shape in zip(info['output_names'], info['output_shapes']):
        lines.append(f"  output {name}: [{info['input_shape'][0]}, "
                     f"{', '.join(map(str, shape))}]")
    return '\n'.join(lines)


def _check(model, info, args) -> bool:
    from mmgfp.apis.deploying.onnx_export import check_onnx
    batches = [args.batch, args.batch + 1] if info['dynamic_batch'] else [args.batch]
    worst = {}
    for b in batches:
        for name, d in check_onnx(model, args.out, args.input_size, b, seed=b).items():
            worst[name] = max(worst.get(name, 0.0), d)
    print(f"onnxruntime vs PyTorch, max relative difference (batch {batches}):")
    for name, d in worst.items():
        print(f"  {name}: {d:.2e}{'' if d <= TOL else '  > 1e-4 MISMATCH'}")
    ok = all(d <= TOL for d in worst.values())
    print('CHECK PASSED' if ok else f'CHECK FAILED: an output differs by more than {TOL}')
    return ok


def main(argv=None) -> int:
    args = parse_args(argv)
    import mmgfp  # noqa: F401
    from mmgfp.apis.deploying.onnx_export import ExportError, export_onnx, load_model, require
    from mmgfp.core.spec import SpecError
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'error: checkpoint {args.checkpoint} does not exist')
    try:
        if args.check:  # fail before the export, not after it
            require('onnxruntime', '--check')
        model = load_model(args.config, args.checkpoint)
        info = export_onnx(model, args.out, args.input_size, args.batch, args.opset,
                           args.exporter, not args.static_batch)
        print(_describe(info, model))
        if args.check and not _check(model, info, args):
            return 1
    except (ExportError, SpecError, FileNotFoundError) as e:
        raise SystemExit(f'error: {e}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
