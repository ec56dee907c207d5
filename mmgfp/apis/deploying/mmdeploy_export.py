"""Deploy a (compact) OpenMMLab model with MMDeploy to ONNX Runtime, post-processing included.

Codebase-neutral: what differs between codebases lives behind four methods of
:class:`~mmgfp.codebases.base.Codebase` (``mmdeploy_config``, ``mmdeploy_check``,
``mmdeploy_reference``, ``mmdeploy_compare``). Wired today: MMDetection detectors (task
``ObjectDetection``, NMS in the graph), MMPose top-down pose estimators (``PoseDetection``:
SimCC vectors or heatmaps, decoded by MMDeploy's model) and MMSegmentation segmentors
(``Segmentation``: the label map).

MMDeploy's own deploy configs (``configs/<codebase>/<task>/*.py``) are not in its PyPI wheel,
so the codebase writes the equivalent of its ``*_onnxruntime_{dynamic,static}.py`` in code.
:func:`export` runs ``mmdeploy.apis.torch2onnx`` inside
:func:`~mmgfp.apis.deploying.mmdeploy_compat.mmdeploy_compat`; :func:`pytorch_prediction`
(the codebase's own inference API) and :func:`onnxruntime_prediction` (MMDeploy's backend
model) run both on one image and :func:`compare` asks the codebase whether they agree.
"""
import copy
import os
import os.path as osp
from typing import Dict

from mmengine.config import Config

from mmgfp.apis.deploying.mmdeploy_compat import mmdeploy_compat
from mmgfp.codebases import CodebaseError, codebase_of
from mmgfp.codebases.base import MMDEPLOY_ONNX_FILE

ONNX_FILE = MMDEPLOY_ONNX_FILE
DEPLOY_CFG_FILE = 'deploy_cfg.py'


class MMDeployError(RuntimeError):
    """MMDeploy cannot be used or the export failed; the message says why and what to do."""


def require_mmdeploy():
    """Import ``mmdeploy`` or raise :class:`MMDeployError` saying how to install it."""
    try:
        import mmdeploy
    except ImportError as e:
        raise MMDeployError(f'deploying with MMDeploy needs the `mmdeploy` package ({e}): '
                            'pip install -e ".[deploy]" (or: pip install mmdeploy==1.3.1)') \
            from None
    return mmdeploy


def check_model(model_config: str, checkpoint: str) -> None:
    """Fail early, and clearly, where an export would be wrong or fail deep inside MMDeploy.

    Raises:
        MMDeployError: ``checkpoint`` is a pruning checkpoint (masked, full-size layers), or
            ``model_config`` builds a model MMDeploy is not wired for here.
        SpecError: The checkpoint cannot be read or does not fit the config.
    """
    from mmgfp.apis.deploying.onnx_export import ExportError, load_model
    try:
        model = load_model(model_config, checkpoint)
    except ExportError as e:
        raise MMDeployError(str(e)) from None
    try:
        codebase_of(model).mmdeploy_check(model)
    except CodebaseError as e:
        raise MMDeployError(f'{model_config} builds a {type(model).__name__}: {e}') from None


def deploy_config(model_cfg: Config, dynamic: bool = True, input_shape=None,
                  opset=None) -> Config:
    """MMDeploy's deploy config for ``model_cfg`` (see :meth:`Codebase.mmdeploy_config`).

    Raises:
        MMDeployError: The config's codebase is not wired to MMDeploy, or the shape does not
            fit the model.
    """
    try:
        return codebase_of(model_cfg).mmdeploy_config(model_cfg, dynamic, input_shape, opset)
    except (CodebaseError, ValueError) as e:
        raise MMDeployError(str(e)) from None


def export(model_config: str, checkpoint: str, out_dir: str, image: str,
           deploy_cfg: Config, device: str = 'cpu') -> Dict[str, str]:
    """Export with ``mmdeploy.apis.torch2onnx``; write the deploy config beside the ONNX file.

    Args:
        model_config (str): The (compact) model config.
        checkpoint (str): Its checkpoint (``compact.pth``).
        out_dir (str): Output folder (created).
        image (str): An image the config's test pipeline reads; traced through the model.
        deploy_cfg (Config): From :func:`deploy_config`.
        device (str): Device of the PyTorch model while exporting. Defaults to 'cpu'.

    Returns:
        dict: ``onnx`` and ``deploy_cfg`` paths.
    """
    require_mmdeploy()
    from mmdeploy.apis import torch2onnx
    os.makedirs(out_dir, exist_ok=True)
    out = {'onnx': osp.join(out_dir, ONNX_FILE), 'deploy_cfg': osp.join(out_dir, DEPLOY_CFG_FILE)}
    deploy_cfg.dump(out['deploy_cfg'])
    with mmdeploy_compat():
        try:
            torch2onnx(image, out_dir, ONNX_FILE, copy.deepcopy(deploy_cfg),
                       Config.fromfile(model_config), checkpoint, device)
        except Exception as e:
            raise MMDeployError(f'mmdeploy.apis.torch2onnx failed on {model_config}: '
                                f'{type(e).__name__}: {e}') from e
    if not osp.isfile(out['onnx']):
        raise MMDeployError(f'mmdeploy.apis.torch2onnx wrote no {out["onnx"]}')
    return out


def pytorch_prediction(model_config: str, checkpoint: str, image: str):
    """The codebase's own PyTorch inference on ``image`` (one data sample)."""
    cfg = Config.fromfile(model_config)
    return codebase_of(cfg).mmdeploy_reference(model_config, checkpoint, image)


def onnxruntime_prediction(model_config: str, deploy_cfg: Config, onnx_file: str, image: str):
    """MMDeploy's ONNX Runtime model (its task's ``End2EndModel``) on ``image``: MMDeploy's
    pre-processing, the graph, MMDeploy's decoding (one data sample)."""
    require_mmdeploy()
    import torch
    from mmdeploy.apis.utils import build_task_processor
    processor = build_task_processor(Config.fromfile(model_config), copy.deepcopy(deploy_cfg),
                                     'cpu')
    model = processor.build_backend_model([onnx_file])
    data, _ = processor.create_input(image, None)
    with torch.no_grad():
        return model.test_step(data)[0]


def compare(model_cfg: Config, ref, got) -> Dict:
    """Whether PyTorch's prediction ``ref`` and ONNX Runtime's ``got`` agree (the codebase
    decides what agreeing means): ``ok`` and ``lines`` (see :meth:`Codebase.mmdeploy_compare`)."""
    return codebase_of(model_cfg).mmdeploy_compare(model_cfg, ref, got)
