"""The families of ``benchmarks/zoo.py``: one folder of ``<pkg>/.mim/configs`` each, the config
that represents it, and the families skipped without building anything (with the reason)."""
import glob
import os
import os.path as osp

# The packages of the original zoo page (docs/zoo.md); the other codebases get a page each
# (``zoo.py --packages mmseg --doc docs/en/model_zoo/mmseg.md``).
PACKAGES = ('mmdet', 'mmpretrain')
# Folders of .mim/configs that hold no model family of their own.
NOT_FAMILIES = {'_base_', 'common', 'legacy_1.x', 'misc', 'strong_baselines', 'lvis',
                'objects365', 'openimages', 'wider_face', 'cityscapes', 'pascal_voc',
                'deepfashion', 'crowdhuman', 'Cityscapes', 'ld', 'ocsort'}
# Families skipped without building anything: the task, and why mmgfp's check does not apply.
SKIP = {
    'mmdet::panoptic_fpn': 'panoptic segmentation (not det/seg/cls)',
    'mmdet::maskformer': 'panoptic segmentation (not det/seg/cls)',
    'mmdet::bytetrack': 'multi-object tracking', 'mmdet::qdtrack': 'multi-object tracking',
    'mmdet::sort': 'multi-object tracking', 'mmdet::deepsort': 'multi-object tracking',
    'mmdet::strongsort': 'multi-object tracking', 'mmdet::ocsort': 'multi-object tracking',
    'mmdet::masktrack_rcnn': 'video instance segmentation (tracking)',
    'mmdet::mask2former_vis': 'video instance segmentation (tracking)',
    'mmdet::reid': 're-identification for tracking',
    'mmdet::glip': 'multimodal: needs the BERT text encoder weights (download)',
    'mmdet::grounding_dino': 'multimodal: needs the BERT text encoder weights (download)',
    'mmdet::mm_grounding_dino': 'multimodal: needs the BERT text encoder weights (download)',
    'mmdet::odinw': 'multimodal (GLIP/Grounding DINO on ODinW data sets)',
    'mmdet::xdecoder': 'multimodal: needs the CLIP text encoder weights (download)',
    'mmdet::soft_teacher': 'semi-supervised teacher/student wrapper (needs a trained teacher)',
    'mmdet::recon_anything': 'not a detector config family',
    'mmdet::dsdl': 'data set description configs (needs the DSDL data)',
    'mmdet::selfsup_pretrain': 'detectors with self-supervised backbones (weights download)',
    'mmdet::scnet': 'instance segmentation with a semantic head: needs stuff maps in the data',
    'mmdet::htc': 'instance segmentation with a semantic head: needs stuff maps in the data',
    'mmpose::body_2d_keypoint/associative_embedding': 'inference only in mmpose 1.3.2: the '
        'config has no training pipeline, and its head reads keypoint_indices, which '
        'PackPoseInputs does not pack',
    'mmpose::hand_3d_keypoint/internet': '3D hand pose (keypoints with depth, two hands, '
                                         'hand type): demo batches are 2D keypoints',
    'mmpose::body_2d_keypoint/edpose': 'a new-style config (read_base) whose base files the '
                                       'mmpose 1.3.2 wheel does not ship (mmpose/configs/_base_)',
    'mmyolo::deploy': 'MMDeploy backend configs (no model of their own)',
    'mmyolo::deploy/model': 'MMDeploy backend configs (no model of their own)',
    'mmyolo::razor/subnets': 'MMRazor NAS subnets (MMRazor does not import on this stack)',
    'mmyolo::rtmdet/distillation': 'MMRazor knowledge distillation of RTMDet (MMRazor does '
                                   'not import on this stack; RTMDet itself: mmyolo::rtmdet)',
    'mmyolo::rtmdet/cspnext_imagenet_pretrain': 'ImageNet pretraining of the CSPNeXt backbone '
        'from mmcls:: base files (MMClassification, superseded by mmpretrain and not '
        'installable next to it); the backbone is checked in mmyolo::rtmdet',
    'mmyolo::yolov5/voc': 'the YOLOv5 models of mmyolo::yolov5 on Pascal VOC (a data set '
                          'variant)',
    'mmyolo::yolov5/crowdhuman': 'the YOLOv5 models of mmyolo::yolov5 on CrowdHuman (a data '
                                 'set variant)',
    'mmyolo::yolov5/mask_refine': 'the YOLOv5 models of mmyolo::yolov5 trained on boxes '
                                  'refined from masks (a data pipeline variant)',
    'mmseg::dsdl': 'data set description configs (needs the DSDL data)',
    'mmseg::san': 'multimodal: needs the CLIP text encoder weights (download)',
    'mmseg::vpd': 'depth estimation on a Stable Diffusion backbone (needs its weights)',
    'mmseg::maskformer': "mmseg 1.2.2's tensor mode cannot run it: EncoderDecoder._forward "
                         'calls MaskFormerHead.forward(x) without the batch_data_samples it '
                         'requires (also tools/export_onnx, mmdeploy)',
    'mmseg::point_rend': "mmseg 1.2.2's tensor mode does not run it (CascadeEncoderDecoder."
                         "_forward: 'TODO support PointRend tensor mode')",
    'mmseg::mask2former': "mmseg 1.2.2's tensor mode cannot run it: EncoderDecoder._forward "
                          'calls Mask2FormerHead.forward(x) without the batch_data_samples it '
                          'requires (also tools/export_onnx, mmdeploy)',
}
# Families whose first metafile model is not a good representative.
PICK = {
    'mmdet::cascade_rcnn': 'cascade-rcnn_r50_fpn_1x_coco.py',
    'mmdet::cascade_rpn': 'cascade-rpn_faster-rcnn_r50-caffe_fpn_1x_coco.py',
    'mmdet::mask_rcnn': 'mask-rcnn_r50_fpn_1x_coco.py',
    'mmdet::mask2former': 'mask2former_r50_8xb2-lsj-50e_coco.py',
    'mmdet::swin': 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
    'mmdet::tood': 'tood_r50_fpn_1x_coco.py',
    'mmdet::regnet': 'retinanet_regnetx-800MF_fpn_1x_coco.py',
    'mmdet::yolox': 'yolox_tiny_8xb8-300e_coco.py',
    'mmdet::res2net': 'faster-rcnn_res2net-101_fpn_2x_coco.py',
    'mmpretrain::resnet': 'resnet18_8xb32_in1k.py',
    'mmpretrain::resnest': 'resnest50_32xb64_in1k.py',
    'mmpretrain::vgg': 'vgg11bn_8xb32_in1k.py',
    'mmpretrain::vision_transformer': 'vit-base-p32_64xb64_in1k.py',
    'mmpretrain::swin_transformer_v2': 'swinv2-tiny-w8_16xb64_in1k-256px.py',
    # the first metafile models are self-supervised pretraining; these fine-tune a classifier
    'mmpretrain::beit': 'benchmarks/beit-base-p16_8xb128-coslr-100e_in1k.py',
    'mmpretrain::eva': 'benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py',
    # the canonical MMPose model (the metafile lists AlexNet first)
    'mmpose::body_2d_keypoint/topdown_heatmap': 'td-hm_hrnet-w32_8xb64-210e_coco-256x192.py',
    # the smallest model of the folder (the metafile lists the large one first)
    'mmyolo::yolov5/ins_seg': 'yolov5_ins_n-v61_syncbn_fast_8xb16-300e_coco_instance.py',
    'mmyolo::yolov5/yolov5u': 'yolov5u_n_syncbn_fast_8xb16-300e_coco.py',
    'mmyolo::yolox/pose': 'yolox-pose_tiny_8xb32-300e-rtmdet-hyp_coco.py',
    'mmyolo::rtmdet/rotated': 'rtmdet-r_s_fast_1xb8-36e_dota.py',
}


def config_root(pkg: str) -> str:
    from importlib.util import find_spec
    spec = find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f'error: {pkg} is not installed')
    return osp.join(list(spec.submodule_search_locations)[0], '.mim', 'configs')


def _metafile_configs(folder: str) -> list:
    path = osp.join(folder, 'metafile.yml')
    if not osp.isfile(path):
        path = osp.join(folder, 'metafile.yaml')  # mmseg's spelling
    if not osp.isfile(path):
        return []
    import yaml
    with open(path) as f:
        meta = yaml.safe_load(f) or {}
    out = []
    for model in meta.get('Models', []) if isinstance(meta, dict) else []:
        cfg = (model or {}).get('Config', '')
        name = osp.basename(cfg)
        if name.endswith('.py') and osp.isfile(osp.join(folder, name)):
            out.append(name)
    return out


def pick_config(folder: str):
    """The family's representative config file name, or None when it has none."""
    names = _metafile_configs(folder)
    if names:
        return names[0]
    names = sorted((n for n in os.listdir(folder) if n.endswith('.py') and
                    not n.startswith('_')), key=lambda n: (len(n), n))
    return names[0] if names else None


def _yml_configs(folder: str) -> list:
    """Configs of the metafiles in ``folder`` (mmpose keeps one per data set, any name)."""
    import yaml
    out = []
    for path in sorted(glob.glob(osp.join(folder, '*.yml'))):
        with open(path) as f:
            meta = yaml.safe_load(f) or {}
        for model in meta.get('Models', []) if isinstance(meta, dict) else []:
            name = osp.basename((model or {}).get('Config', ''))
            if name.endswith('.py') and osp.isfile(osp.join(folder, name)) and name not in out:
                out.append(name)
    return out


def _pose_families(root: str) -> list:
    """mmpose's families are ``<task>/<algorithm>`` (its configs are ``task/algorithm/data
    set/*.py``); the representative is the first metafile model of the COCO folder where there
    is one, else of the first data set folder."""
    out = []
    for task in sorted(os.listdir(root)):
        if task in NOT_FAMILIES or not osp.isdir(osp.join(root, task)):
            continue
        for algo in sorted(os.listdir(osp.join(root, task))):
            base = osp.join(root, task, algo)
            sets = sorted(d for d in os.listdir(base) if osp.isdir(osp.join(base, d))
                          and d != '__pycache__') if osp.isdir(base) else []
            sets.sort(key=lambda d: d != 'coco')
            fam = f'mmpose::{task}/{algo}'
            for d in sets:
                names = _yml_configs(osp.join(base, d)) or sorted(
                    (n for n in os.listdir(osp.join(base, d)) if n.endswith('.py')),
                    key=lambda n: (len(n), n))
                if names:
                    out.append((fam, f'{fam}/{d}/{PICK.get(fam) or names[0]}'))
                    break
    return out


def families(packages=PACKAGES) -> list:
    """``[(family, config), ...]`` of ``packages``, ``family`` as ``pkg::folder``."""
    out = []
    for pkg in packages:
        root = config_root(pkg)
        if pkg == 'mmpose':
            out += _pose_families(root)
            continue
        for name in sorted(os.listdir(root)):
            if name in NOT_FAMILIES or not osp.isdir(osp.join(root, name)):
                continue
            # mmyolo keeps variants in sub-folders (yolov5/ins_seg, rtmdet/rotated, yolox/pose)
            subs = sorted(d for d in os.listdir(osp.join(root, name))
                          if osp.isdir(osp.join(root, name, d)) and d != '__pycache__') \
                if pkg == 'mmyolo' else []
            for rel in [name] + [f'{name}/{d}' for d in subs]:
                fam = f'{pkg}::{rel}'
                cfg = PICK.get(fam) or pick_config(osp.join(root, rel))
                if cfg is not None:
                    out.append((fam, f'{pkg}::{rel}/{cfg}'))
    return out
