"""The interface every OpenMMLab codebase implements, and the lookup from a model or config.

What differs between MMDetection, MMPretrain and the codebases that follow (demo batches, the
input size of a config, tracer rules for modules built on ops the tracer cannot see, fixes of
constructor values after slicing, version bridges) lives in one module per codebase
(``mmgfp/codebases/<scope>.py``) as a subclass of :class:`Codebase`, registered with
:func:`register_codebase`. The core and the hook never branch on the codebase; they ask
:func:`codebase_of` for the one a model or config belongs to.
"""
import contextlib
import importlib.util
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch.nn as nn

MMDEPLOY_ONNX_FILE = 'end2end.onnx'


class CodebaseError(TypeError):
    """A model or config of no codebase mmgfp serves (or one whose package is missing)."""


class Codebase:
    """What one OpenMMLab codebase needs from mmgfp. Subclasses set ``scope`` and override.

    Attributes:
        scope (str): The registry scope and package name (``'mmdet'``).
        title (str): The name users know (``'MMDetection'``).
        input_size (tuple): ``(H, W)`` of demo batches when the config names no size.
        import_target (str, optional): A module that configs of this codebase list in
            ``custom_imports`` after ``'mmgfp'`` (compact configs get it too), or None.
    """
    scope: str = ''
    title: str = ''
    input_size: Tuple[int, int] = (128, 128)
    import_target: Optional[str] = None

    def available(self) -> bool:
        """Whether the codebase's package is installed."""
        return importlib.util.find_spec(self.scope) is not None

    def default_input_size(self, cfg) -> Tuple[int, int]:
        """``(H, W)`` of demo images for a config of this codebase."""
        return self.input_size

    def num_classes(self, model: nn.Module) -> Optional[int]:
        """The number of classes the model's head predicts, or None where it has none."""
        return None

    def demo_batch(self, model: nn.Module, batch_size: int, input_size: Sequence[int],
                   seed: int, num_classes: Optional[int]) -> dict:
        """A packed batch as the codebase's dataloader gives it (``inputs``, ``data_samples``)."""
        raise NotImplementedError

    def test_batch(self, model: nn.Module, data_batch):
        """``data_batch`` as the codebase's test dataloader gives it (for ``mode='tensor'``
        runs of a training batch; the same batch by default)."""
        return data_batch

    def gt_boxes(self, data_samples) -> List:
        """The ground-truth boxes of a training batch, one ``(K, 4)`` tensor ``(x1, y1, x2,
        y2)`` in input pixels per image (for ``GFPDistillHook``'s ``fg_mse``)."""
        raise CodebaseError(f"{self.title or type(self).__name__} training batches carry no "
                            "boxes mmgfp reads: distil with type='cwd' (or 'kl', 'mse') "
                            "instead of 'fg_mse'")

    def pseudo_labels(self, teacher: nn.Module, inputs, data_samples,
                      score_thr: float) -> List:
        """Copies of a preprocessed batch's ``data_samples`` labelled with the teacher's
        predictions on ``inputs`` that score at least ``score_thr`` (for
        ``GFPDistillHook(pseudo_labels=...)``); the given samples stay as they are."""
        raise CodebaseError(f'mmgfp makes no pseudo labels for {self.title or self.scope} '
                            'models')

    def check_pseudo_labels(self, model: nn.Module) -> None:
        """Raise ValueError naming why ``model`` cannot train on :meth:`pseudo_labels`."""

    def register_rules(self) -> None:
        """Register tracer rules for the codebase's modules (called on ``import mmgfp``)."""

    def fix_compact(self, model: nn.Module) -> None:
        """Adjust modules whose sizes are constructor values after the model was sliced."""

    @contextlib.contextmanager
    def compat(self) -> Iterator[None]:
        """Bridges needed to import or run the codebase on this stack (none by default)."""
        yield

    # MMDeploy (tools/deploy_mmdeploy.py): a codebase is wired by overriding the four methods
    # below; the defaults refuse with the list of codebases that are
    def mmdeploy_config(self, cfg, dynamic: bool = True,
                        input_shape: Optional[Sequence[int]] = None,
                        opset: Optional[int] = None):
        """MMDeploy's deploy config of a model config: end2end ONNX for ONNX Runtime.

        Args:
            cfg (Config): The model config.
            dynamic (bool): Dynamic input axes (which ones: the codebase's choice, as
                MMDeploy's ``*_onnxruntime_dynamic.py`` configs). Defaults to True.
            input_shape (Sequence[int], optional): ``(width, height)`` of a static export.
                Defaults to None.
            opset (int, optional): ONNX opset; None for the codebase's default.

        Returns:
            Config: ``onnx_config``, ``codebase_config`` and ``backend_config``.
        """
        raise CodebaseError(_not_wired(self))

    def mmdeploy_check(self, model: nn.Module) -> None:
        """Raise :class:`CodebaseError` where MMDeploy cannot export ``model`` as wired here."""
        raise CodebaseError(_not_wired(self))

    def mmdeploy_reference(self, config: str, checkpoint: str, image: str):
        """The codebase's own PyTorch inference of ``image`` (a data sample), computing what
        the exported graph computes (test-time options it cannot export switched off)."""
        raise CodebaseError(_not_wired(self))

    def mmdeploy_compare(self, cfg, ref, got) -> Dict:
        """Compare the PyTorch prediction ``ref`` with MMDeploy's ONNX Runtime prediction
        ``got`` (data samples of one image).

        Returns:
            dict: ``ok`` (bool) and ``lines`` (list[str]: what was compared and the largest
            differences, the reason where not ok).
        """
        raise CodebaseError(_not_wired(self))

    def prepare(self) -> None:
        """Import the codebase's package (inside :meth:`compat`), so that MMEngine's registries
        of its scope can import their modules; nothing where the package is missing."""
        if self.available():
            with self.compat():
                importlib.import_module(self.scope)


_CODEBASES: Dict[str, Codebase] = {}


def mmdeploy_codebases() -> List[str]:
    """Titles of the codebases wired to MMDeploy (they override
    :meth:`Codebase.mmdeploy_config`)."""
    return [cb.title for cb in _CODEBASES.values()
            if type(cb).mmdeploy_config is not Codebase.mmdeploy_config]


def _not_wired(cb: Codebase) -> str:
    return (f'MMDeploy export is wired for {", ".join(mmdeploy_codebases())} models, not '
            f'{cb.title} ones: export the model with tools/export_onnx.py (its tensor outputs, '
            'no post-processing)')


def onnxruntime_deploy_config(codebase_config: dict, output_names: Sequence[str],
                              dynamic_axes: Optional[dict], input_shape: Optional[Sequence[int]],
                              opset: int):
    """A deploy config as MMDeploy's ``<task>_onnxruntime_{dynamic,static}.py`` give it: its
    ``_base_/onnx_config.py`` with the task's outputs and axes, the ONNX Runtime backend.

    Args:
        codebase_config (dict): ``type`` (scope), ``task`` and the task's options.
        output_names (Sequence[str]): Names of the graph outputs.
        dynamic_axes (dict, optional): ONNX dynamic axes by input/output name.
        input_shape (Sequence[int], optional): ``(width, height)``, None where dynamic.
        opset (int): ONNX opset.
    """
    from mmengine.config import Config
    onnx_config = dict(type='onnx', export_params=True, keep_initializers_as_inputs=False,
                       opset_version=int(opset), save_file=MMDEPLOY_ONNX_FILE,
                       input_names=['input'], output_names=list(output_names),
                       input_shape=None if input_shape is None else [int(v) for v in
                                                                     input_shape],
                       optimize=True)
    if dynamic_axes:
        onnx_config['dynamic_axes'] = dynamic_axes
    return Config(dict(onnx_config=onnx_config, codebase_config=dict(codebase_config),
                       backend_config=dict(type='onnxruntime')))


def static_shape(dynamic: bool, input_shape: Optional[Sequence[int]]) -> Optional[List[int]]:
    """``input_shape`` as ``[width, height]`` for a static export, None for a dynamic one."""
    if dynamic:
        return None
    if input_shape is None or len(input_shape) != 2:
        raise ValueError('a static export needs `input_shape` as (width, height), but got '
                         f'{input_shape!r}')
    return [int(v) for v in input_shape]


def register_codebase(cls):
    """Class decorator: make an instance of ``cls`` the codebase of its ``scope``."""
    if not cls.scope:
        raise ValueError(f'{cls.__name__} sets no `scope`')
    _CODEBASES[cls.scope] = cls()
    return cls


def codebases() -> Dict[str, Codebase]:
    """Every registered codebase by scope."""
    return dict(_CODEBASES)


def get_codebase(scope: str) -> Codebase:
    """The codebase registered for ``scope`` (``'mmdet'``, ``'mmpretrain'``, ...)."""
    if scope not in _CODEBASES:
        raise CodebaseError(f'mmgfp serves the OpenMMLab codebases {sorted(_CODEBASES)}, not '
                            f'{scope!r}')
    return _CODEBASES[scope]


def config_scope(cfg) -> str:
    """The codebase scope of a config: its ``default_scope``, else the scope of its model type
    (``'mmdet.RetinaNet'``), else ``'mmdet'`` (MMDetection configs often leave it unset)."""
    scope = cfg.get('default_scope')
    if scope:
        return scope
    mtype = (cfg.get('model') or {}).get('type')
    if isinstance(mtype, str) and '.' in mtype and mtype.split('.')[0] in _CODEBASES:
        return mtype.split('.')[0]
    return 'mmdet'


def prepare_scope(cfg_or_scope) -> None:
    """Run :meth:`Codebase.prepare` for a config's (or a scope's) codebase, if mmgfp serves it:
    what tools do before building a model or a Runner from a config."""
    scope = cfg_or_scope if isinstance(cfg_or_scope, str) else config_scope(cfg_or_scope)
    if scope in _CODEBASES:
        _CODEBASES[scope].prepare()


def codebase_of(obj, default: Optional[str] = None) -> Optional[Codebase]:
    """The codebase of a model (by the package its class comes from) or of a config.

    Args:
        obj: An ``nn.Module`` or an MMEngine ``Config``.
        default (str, optional): Returned (as None) instead of raising when the model's class
            belongs to no registered codebase; pass ``'none'`` for plain PyTorch models.
            Defaults to None (raise :class:`CodebaseError`).
    """
    if isinstance(obj, nn.Module):
        scope = type(obj).__module__.split('.')[0]
        if scope in _CODEBASES:
            return _CODEBASES[scope]
        if default == 'none':
            return None
        raise CodebaseError(
            f'{type(obj).__name__} (from {type(obj).__module__}) belongs to none of the '
            f'codebases mmgfp serves ({", ".join(sorted(_CODEBASES))}): build demo batches for '
            'it yourself and use the core API (mmgfp.core.build_groups with your forward '
            'function)')
    return get_codebase(config_scope(obj))
