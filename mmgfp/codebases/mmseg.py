"""MMSegmentation: demo batches of label maps, at the crop size the config trains on, and
MMDeploy's Segmentation task.

Semantic segmentors (``EncoderDecoder``, ``CascadeEncoderDecoder``) need no tracer rules: the
core follows their backbones, necks and decode heads as they are (pyramid pooling, ASPP,
attention and the resize of the logits to the label size are ops the tracer sees). Auxiliary
heads run only in the loss: they are traced (and grouped with the layers they read) by the
loss forward the hook and ``check_model`` use, so their input channels are sliced with the
backbone's; a deployed config keeps them, and they are simply not run at test time.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .base import Codebase, CodebaseError, register_codebase

SEGMENTOR_INPUT_SIZE = (512, 512)  # when the config names no crop size


def _pair(value) -> Optional[Tuple[int, int]]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def _decode_head(model: nn.Module):
    head = getattr(model, 'decode_head', None)
    if isinstance(head, nn.ModuleList):  # CascadeEncoderDecoder: the last head predicts
        head = head[-1]
    return head


def random_label_maps(batch_size: int, input_size: Sequence[int], num_classes: int,
                      seed: int, cell: int = 8) -> torch.Tensor:
    """``(N, 1, H, W)`` label maps of random classes in blocks of ``cell`` pixels.

    No pixel is marked ignored (255): mmseg 1.2.2's cross-entropy with ``class_weight`` (CGNet)
    indexes the weights with every label and fails on ignored pixels.
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = input_size
    coarse = torch.randint(0, max(num_classes, 2), (batch_size, 1, -(-h // cell), -(-w // cell)),
                           generator=gen)
    full = coarse.repeat_interleave(cell, 2).repeat_interleave(cell, 3)
    return full[:, :, :h, :w].contiguous()


def label_edges(label: torch.Tensor) -> torch.Tensor:
    """``(1, H, W)`` 0/1 map of the pixels whose right or lower neighbour has another label
    (what mmseg's ``GenerateEdge`` gives PIDNet, one pixel wide)."""
    edge = torch.zeros_like(label)
    edge[..., :, :-1] |= (label[..., :, 1:] != label[..., :, :-1]).long()
    edge[..., :-1, :] |= (label[..., 1:, :] != label[..., :-1, :]).long()
    return edge


@register_codebase
class MMSegmentation(Codebase):
    """Semantic segmentors: random label maps of the decode head's classes; demo images at the
    crop size the config trains on (its data preprocessor's ``size``, which pads every training
    batch to it), 512x512 where it names none."""
    scope = 'mmseg'
    title = 'MMSegmentation'
    input_size = SEGMENTOR_INPUT_SIZE

    def default_input_size(self, cfg) -> Tuple[int, int]:
        model = cfg.get('model') or {}
        for pre in (model.get('data_preprocessor'), cfg.get('data_preprocessor')):
            size = _pair((pre or {}).get('size'))
            if size is not None:  # mmseg sizes are (H, W): crop_size = (512, 1024)
                return size
        return _pair(cfg.get('crop_size')) or self.input_size

    def num_classes(self, model: nn.Module) -> Optional[int]:
        head = _decode_head(model)
        return int(head.num_classes) if hasattr(head, 'num_classes') else None

    def demo_batch(self, model: nn.Module, batch_size: int, input_size: Sequence[int],
                   seed: int, num_classes: Optional[int]) -> dict:
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        from mmgfp.codebases.inputs import random_images
        num_classes = num_classes or self.num_classes(model) or 10
        h, w = input_size
        labels = random_label_maps(batch_size, input_size, num_classes, seed)
        samples = []
        for label in labels:
            sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                                 pad_shape=(h, w)))
            sample.gt_sem_seg = PixelData(data=label)
            sample.gt_edge_map = PixelData(data=label_edges(label))  # PIDNet's boundary loss
            samples.append(sample)
        return {'inputs': random_images(model, batch_size, input_size, seed),
                'data_samples': samples}

    def mmdeploy_config(self, cfg, dynamic: bool = True,
                        input_shape: Optional[Sequence[int]] = None,
                        opset: Optional[int] = None):
        """Task Segmentation: one label map ``output``; dynamic batch, height and width."""
        return seg_deploy_config(cfg, dynamic, input_shape, opset)

    def mmdeploy_check(self, model: nn.Module) -> None:
        from mmseg.models.segmentors import EncoderDecoder
        if not isinstance(model, EncoderDecoder):  # what MMDeploy rewrites
            raise CodebaseError('MMDeploy\'s Segmentation task exports encoder-decoder '
                                f'segmentors, not a {type(model).__name__}')

    def mmdeploy_reference(self, config: str, checkpoint: str, image: str):
        return pytorch_segmentation(config, checkpoint, image)

    def mmdeploy_compare(self, cfg, ref, got) -> Dict:
        return compare_segmentation(cfg, ref, got)


# MMDeploy (task Segmentation), as its configs/mmseg/segmentation_onnxruntime_*.py: the graph
# runs whole-image inference and ends with the argmax (``with_argmax=True``), one label map.
LOGIT_TOL = 1e-4  # relative to max(1, |logit|): float32 kernels of ORT and PyTorch differ ~1e-6


def seg_deploy_config(cfg, dynamic: bool = True, input_shape: Optional[Sequence[int]] = None,
                      opset: Optional[int] = None):
    """MMDeploy's deploy config of a segmentor (see :meth:`MMSegmentation.mmdeploy_config`)."""
    from .base import onnxruntime_deploy_config, static_shape
    shape = static_shape(dynamic, input_shape)
    axes = None if shape else {n: {0: 'batch', 2: 'height', 3: 'width'}
                               for n in ('input', 'output')}
    return onnxruntime_deploy_config(
        dict(type='mmseg', task='Segmentation', with_argmax=True), ['output'], axes, shape,
        opset or 11)


def pytorch_segmentation(config: str, checkpoint: str, image: str):
    """MMSegmentation's ``init_model`` + ``inference_model`` on ``image``, whole-image
    inference (MMDeploy's graph runs no sliding window)."""
    from mmengine.runner import load_checkpoint
    from mmseg.apis import inference_model, init_model
    model = init_model(config, None, device='cpu')
    load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    from mmengine.config import ConfigDict
    model.test_cfg = ConfigDict(dict(model.test_cfg or {}, mode='whole'))
    return inference_model(model, image)


def _margins(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per pixel, how far PyTorch's label is from changing: the gap between the two best
    logits, or for one output channel how far its sigmoid is from the threshold."""
    if logits.shape[0] == 1:
        return (logits[0].sigmoid() - threshold).abs()
    top = logits.topk(2, dim=0).values
    return top[0] - top[1]


def compare_segmentation(cfg, ref, got) -> Dict:
    """Same label at every pixel, except where PyTorch's two best logits are within
    :data:`LOGIT_TOL` (a tie that rounding decides)."""
    meta = got.metainfo
    if tuple(meta.get('ori_shape', ())) != tuple(meta.get('img_shape', ())):
        return {'ok': False, 'lines': [
            f'the test pipeline resized the image from {meta.get("ori_shape")} to '
            f'{meta.get("img_shape")}: MMDeploy resizes the label map back (nearest), '
            'MMSegmentation the logits (bilinear), so labels differ along borders; check with '
            'an image the pipeline does not resize']}
    a, b = ref.pred_sem_seg.data.cpu(), got.pred_sem_seg.data.cpu()
    if a.shape != b.shape:
        return {'ok': False, 'lines': [f'PyTorch gives a {tuple(a.shape)} label map, ONNX '
                                       f'Runtime {tuple(b.shape)}']}
    logits = ref.seg_logits.data.cpu().float()
    tol = LOGIT_TOL * max(1.0, float(logits.abs().max()))
    head = cfg.model.decode_head
    head = head[-1] if isinstance(head, (list, tuple)) else head
    margin = _margins(logits, float(head.get('threshold') or 0.3))  # mmseg's default
    differ = (a != b).reshape(margin.shape)
    bad = differ & (margin > tol)
    res = {'ok': not bool(bad.any()), 'pixels': int(a.numel()), 'differ': int(differ.sum()),
           'min_margin': float(margin.min())}
    ties = res['differ'] - int(bad.sum())
    lines = [f'{res["pixels"]} pixels: {res["differ"]} labels differ ({ties} of them ties: '
             f'the two best PyTorch logits within {tol:.1e}); smallest margin between the two '
             f'best logits {res["min_margin"]:.2e}']
    if (cfg.model.get('test_cfg') or {}).get('mode', 'whole') != 'whole':
        lines.append('PyTorch ran whole-image inference, not the config\'s mode (the graph '
                     'runs the whole image)')
    if not res['ok']:
        lines.append(f'{int(bad.sum())} pixels have another label beyond the tolerance')
    return dict(res, lines=lines)
