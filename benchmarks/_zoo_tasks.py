"""The task of a config, per OpenMMLab package, for ``benchmarks/zoo.py``: ``(task, None)``, or
``(None, why the family is skipped)``, read from the config's model (add a package to
``TASKS`` to run its families)."""


def _classify_mmpretrain(cfg) -> tuple:
    mtype = str(cfg.model.get('type', ''))
    if mtype.split('.')[-1] == 'ImageClassifier' and cfg.model.get('head') is None:
        return None, 'a headless backbone config (no classification head to train)'
    if mtype.split('.')[-1] == 'ImageClassifier':
        return 'classification', None
    return None, (f'model type {mtype} is not an image classifier (self-supervised, '
                  'retrieval or multimodal)')


def _classify_mmdet(cfg) -> tuple:
    mtype = str(cfg.model.get('type', ''))
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmdet')
    cls = MODELS.get(mtype)
    where = getattr(cls, '__module__', '')
    if any(f'.{k}.' in where for k in ('mot', 'vis', 'reid', 'trackers', 'tracking_heads')):
        return None, f'model type {mtype} is a tracker (not det/seg/cls)'
    text = str(cfg.model)
    if 'num_stuff_classes' in text and "'num_stuff_classes': 0" not in text:
        return None, f'model type {mtype} is configured for panoptic segmentation'
    if mtype == 'FastRCNN':
        return None, 'Fast R-CNN reads precomputed proposals from the data set'
    if 'Semi' in mtype or 'teacher' in text.lower():
        return None, f'model type {mtype} needs a trained teacher model'
    from mmdet.models.detectors.single_stage_instance_seg import \
        SingleStageInstanceSegmentor
    if (cls is not None and issubclass(cls, SingleStageInstanceSegmentor)) or any(
            k in text for k in ('mask_head', 'InsHead', 'MaskFormer', 'Mask2Former', 'SOLO')):
        return 'instance segmentation', None
    return 'detection', None


def _classify_mmseg(cfg) -> tuple:
    mtype = str(cfg.model.get('type', '')).split('.')[-1]
    if mtype in ('EncoderDecoder', 'CascadeEncoderDecoder'):
        return 'semantic segmentation', None
    return None, f'model type {mtype} is not a semantic segmentor (depth, multimodal)'


def _classify_mmpose(cfg) -> tuple:
    mtype = str(cfg.model.get('type', '')).split('.')[-1]
    if mtype == 'TopdownPoseEstimator':
        return 'top-down pose', None
    if mtype == 'BottomupPoseEstimator':
        return 'bottom-up pose', None
    if mtype == 'PoseLifter':
        return None, '3D pose lifting from 2D keypoint sequences (no image input)'
    return None, f'model type {mtype} is not a 2D pose estimator'


def _classify_mmyolo(cfg) -> tuple:
    mtype = str(cfg.model.get('type', '')).split('.')[-1]
    if mtype != 'YOLODetector':
        return None, f'model type {mtype} is not a YOLO detector'
    head = str(cfg.model.get('bbox_head', {}).get('type', '')).split('.')[-1]
    if 'Rotated' in head:
        return None, f'rotated boxes ({head}): needs MMRotate, which is not installed here'
    if 'Pose' in head:
        return 'bottom-up pose', None
    return ('instance segmentation' if 'Ins' in head else 'detection'), None


# The task of a config, per package (add a package here to run its families).
TASKS = {'mmdet': _classify_mmdet, 'mmpretrain': _classify_mmpretrain,
         'mmseg': _classify_mmseg, 'mmpose': _classify_mmpose, 'mmyolo': _classify_mmyolo}
