"""What ``benchmarks/accuracy.py`` needs to know about each task: the codebase-aware pieces.

One :class:`Task` per OpenMMLab codebase the accuracy benchmark runs on, chosen by
:func:`task_of` from the config's scope:

==========  =====================================  ===================  ===================
task        model the config must build            test evaluator       reported (2nd)
==========  =====================================  ===================  ===================
mmdet       a single-stage detector (one bbox_head) CocoMetric (bbox),  bbox mAP (mAP@0.5)
                                                   VOCMetric (mAP)
mmpose      a top-down pose estimator (one head)   CocoMetric, PCK      AP (AP@0.5), PCK
mmseg       an encoder-decoder segmentor           IoUMetric (mIoU)     mIoU % (mAcc %)
mmpretrain  an image classifier (linear head)      Accuracy (top-1)     top-1 (top-5), 0-1
==========  =====================================  ===================  ===================

Each task checks the model and the evaluator before anything trains (a clear error naming the
fix), reads its metric from the evaluator's output, names the layers whose output channels
are predictions (Torch-Pruning must not prune them; GFP's groups never hold them), gives
Torch-Pruning a forward that reaches every layer the loss trains (mmseg's auxiliary heads run
only in the loss), and shrinks the embedded digits data set for ``--quick``.
"""
import importlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch.nn as nn


class Task:
    """The benchmark's view of one codebase. Subclasses set the attributes and override.

    Attributes:
        scope (str): The registry scope (``'mmdet'``).
        keys (tuple): Result keys of the reported metric and its companion (``'mAP'``,
            ``'mAP50'``): the run results and table rows use them.
        headers (tuple): Their table headers.
        digits (str): The type of the project's digits data set of this task (``--quick``
            generates it tiny).
        quick_batch (int): The batch size of every split with ``--quick``.
        default_iters (int): Training iterations after the baseline when ``--iters`` is not
            given.
        sliced_kd_losses (list): GFPDistillHook ``losses`` of ``tp_*_kd`` (a sliced student)
            when ``--kd-losses`` is not given; None: it must be given.
        what (str): What the config must build, for error messages.
    """
    scope = ''
    keys: Tuple[str, str] = ('mAP', 'mAP50')
    headers: Tuple[str, str] = ('bbox mAP', 'mAP@0.5')
    digits = ''
    what = ''
    quick_batch = 1  # --quick's batch size
    default_iters = 300  # --iters when not given
    # tp_*_kd's losses when --kd-losses is not given (None: it must be given): an output loss,
    # which a student sliced by Torch-Pruning can compare with the unpruned teacher
    sliced_kd_losses: Optional[List[dict]] = None

    def model_problem(self, model_cfg: dict, cls) -> Optional[str]:
        """Why the benchmark cannot use a model of registered class ``cls`` (None: it can)."""
        raise NotImplementedError

    def metric_ok(self, metric) -> bool:
        """Whether an evaluator metric object gives the reported metric."""
        raise NotImplementedError

    evaluator_hint = ''  # what to use instead, for the error message

    def read(self, metrics: Dict) -> Dict[str, float]:
        """The reported metric and its companion from the test evaluator's output."""
        raise NotImplementedError

    def empty(self) -> Dict[str, float]:
        """The result when the evaluator returns nothing (no prediction passed a threshold)."""
        return {k: 0.0 for k in self.keys}

    def output_layers(self, model: nn.Module) -> List[nn.Module]:
        """Layers whose output channels are predictions (never pruned by any method)."""
        raise NotImplementedError

    def tp_forward(self, model: nn.Module, data_samples) -> nn.Module:
        """A plain ``forward(x)`` module for Torch-Pruning's tracer that reaches every layer
        the training loss uses (the model's tensor path by default)."""
        import _common as C
        return C.TensorPath(model, data_samples)

    def registry(self, name: str):
        """The codebase's registry ``name`` (``'MODELS'``, ``'DATASETS'``)."""
        return getattr(importlib.import_module(f'{self.scope}.registry'), name)


def _first(metrics: Dict, pairs: Sequence[Tuple[str, str]], keys: Tuple[str, str],
           scale: float = 1.0) -> Dict[str, float]:
    for key, key2 in pairs:
        if key in metrics:
            return {keys[0]: scale * float(metrics[key]),
                    keys[1]: scale * float(metrics.get(key2, 'nan'))}
    raise KeyError(f'the test evaluator gave none of {[k for k, _ in pairs]}, only '
                   f'{sorted(metrics)}')


class Detection(Task):
    scope = 'mmdet'
    digits = 'DigitsCocoDataset'
    what = 'a single-stage detector (e.g. RetinaNet, FCOS, ATSS, RTMDet)'
    evaluator_hint = ("mmdet's CocoMetric (metric='bbox', format_only=False) or VOCMetric "
                      "(metric='mAP')")
    # (mAP, mAP@0.5) keys of mmdet's CocoMetric and VOCMetric
    pairs = (('coco/bbox_mAP', 'coco/bbox_mAP_50'), ('pascal_voc/mAP', 'pascal_voc/AP50'))
    # the head's class scores of every level (the first element of its output)
    sliced_kd_losses = [dict(module='bbox_head', type='sigmoid_kl', output=0)]

    def model_problem(self, model_cfg, cls):
        from mmdet.models.detectors import SingleStageDetector
        if not issubclass(cls, SingleStageDetector) or 'bbox_head' not in model_cfg or \
                'roi_head' in model_cfg:
            return 'is not a single-stage detector (one bbox_head, no roi_head)'
        return None

    def metric_ok(self, m):
        from mmdet.evaluation import CocoMetric, VOCMetric
        return (isinstance(m, CocoMetric) and 'bbox' in m.metrics and not m.format_only) or \
            (isinstance(m, VOCMetric) and m.metric == 'mAP')

    def read(self, metrics):
        return _first(metrics, self.pairs, self.keys)

    def output_layers(self, model):
        # mmdet's single-stage heads keep their prediction convs as direct children of the
        # head (retina_cls, conv_centerness, atss_reg, ...); the shared towers live in lists
        return [m for m in model.bbox_head.children() if isinstance(m, nn.Conv2d)]


class Pose(Task):
    scope = 'mmpose'
    keys = ('AP', 'AP50')
    headers = ('keypoint AP', 'AP@0.5')
    digits = 'DigitsPoseDataset'
    what = 'a top-down pose estimator (e.g. SimpleBaseline, RTMPose)'
    evaluator_hint = "mmpose's CocoMetric (keypoint AP) or PCKAccuracy"
    # (AP, AP@0.5) of CocoMetric; PCK (and AUC) of PCKAccuracy, AUC where EPE is not given
    pairs = (('coco/AP', 'coco/AP .5'), ('PCK', 'AUC'))
    prediction_layers = ('final_layer', 'cls_x', 'cls_y')

    def model_problem(self, model_cfg, cls):
        from mmpose.models.pose_estimators import TopdownPoseEstimator
        if not issubclass(cls, TopdownPoseEstimator) or 'head' not in model_cfg:
            return 'is not a top-down pose estimator with one head'
        return None

    def metric_ok(self, m):
        from mmpose.evaluation import CocoMetric, PCKAccuracy
        return isinstance(m, (CocoMetric, PCKAccuracy))

    def read(self, metrics):
        return _first(metrics, self.pairs, self.keys)

    def output_layers(self, model):
        # the layers that map features to keypoints: HeatmapHead's final_layer, RTMCCHead's
        # cls_x / cls_y
        return [getattr(model.head, n) for n in self.prediction_layers
                if isinstance(getattr(model.head, n, None), (nn.Conv2d, nn.Linear))]


class Segmentation(Task):
    scope = 'mmseg'
    keys = ('mIoU', 'mAcc')
    headers = ('mIoU %', 'mAcc %')
    digits = 'DigitsSegDataset'
    what = 'an encoder-decoder segmentor (e.g. FCN, PSPNet, DeepLabV3+, SegFormer)'
    evaluator_hint = "mmseg's IoUMetric with 'mIoU' in iou_metrics"

    def model_problem(self, model_cfg, cls):
        from mmseg.models.segmentors import EncoderDecoder
        if not issubclass(cls, EncoderDecoder):
            return 'is not an encoder-decoder segmentor'
        return None

    def metric_ok(self, m):
        from mmseg.evaluation import IoUMetric
        return isinstance(m, IoUMetric) and 'mIoU' in m.metrics and not m.format_only

    def read(self, metrics):
        return _first(metrics, (('mIoU', 'mAcc'),), self.keys)

    def output_layers(self, model):
        heads = [model.decode_head] + _aux_heads(model)
        return [h.conv_seg for h in heads if isinstance(getattr(h, 'conv_seg', None),
                                                          nn.Module)]

    def tp_forward(self, model, data_samples):
        return SegTrainPath(model)


def _aux_heads(model: nn.Module) -> List[nn.Module]:
    aux = getattr(model, 'auxiliary_head', None)
    if aux is None:
        return []
    return list(aux) if isinstance(aux, nn.ModuleList) else [aux]


class SegTrainPath(nn.Module):
    """The decode head's and every auxiliary head's logits of an mmseg segmentor: the test
    path runs the decode head only, but training runs the auxiliary heads too, so Torch-Pruning
    must see the backbone channels they read."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        feats = self.model.extract_feat(x)
        return [self.model.decode_head(feats)] + [h(feats) for h in _aux_heads(self.model)]


class Classification(Task):
    scope = 'mmpretrain'
    keys = ('top1', 'top5')
    headers = ('top-1', 'top-5')
    digits = 'DigitsClsDataset'
    quick_batch = 2  # ResNet's last BN sees 1x1 maps on 32x32 images: one image is too few
    # two epochs of the digits set (44 iterations each) after baselines of 10 (ResNet-18) and
    # 30 (MobileNetV2) epochs: 32x32 digits learn fast, and 3 seeds x 5 methods x 2 models
    # must fit a few CPU hours
    default_iters = 88
    sliced_kd_losses = [dict(module='head', type='kl', weight=1.0, tau=4.0)]  # as GFP's
    what = 'an image classifier with a linear head (e.g. ResNet, MobileNetV2)'
    evaluator_hint = "mmpretrain's Accuracy with 1 in topk"

    def model_problem(self, model_cfg, cls):
        from mmpretrain.models import ImageClassifier
        if not issubclass(cls, ImageClassifier) or 'head' not in model_cfg:
            return 'is not an image classifier with a head'
        return None

    def metric_ok(self, m):
        from mmpretrain.evaluation import Accuracy
        return isinstance(m, Accuracy) and 1 in m.topk

    def read(self, metrics):
        # Accuracy reports percent; fractions here, like the other tasks' AP and mAP
        return _first(metrics, (('accuracy/top1', 'accuracy/top5'),), self.keys, 0.01)

    def output_layers(self, model):
        # the head's classifier (LinearClsHead.fc): its outputs are the classes
        fc = getattr(model.head, 'fc', None)
        return [fc] if isinstance(fc, nn.Linear) else []

    def tp_forward(self, model, data_samples):
        return ClsTensorPath(model)


class ClsTensorPath(nn.Module):
    """An mmpretrain classifier's logits (``forward(mode='tensor')``) as ``forward(x)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, mode='tensor')


TASKS: Dict[str, Callable[[], Task]] = {
    'mmdet': Detection, 'mmpose': Pose, 'mmseg': Segmentation, 'mmpretrain': Classification}


def task_of(cfg) -> Task:
    """The task of a config (by its ``default_scope``, as mmgfp's codebases decide).

    Raises:
        SystemExit: For a codebase the accuracy benchmark does not run.
    """
    from mmgfp.codebases.base import config_scope
    scope = config_scope(cfg)
    if scope not in TASKS:
        raise SystemExit(f'error: the accuracy benchmark runs MMDetection, MMPose, '
                         f'MMSegmentation and MMPretrain configs '
                         f'({", ".join(sorted(TASKS))}), not '
                         f'{scope!r} (the config\'s default_scope)')
    return TASKS[scope]()
