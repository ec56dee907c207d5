"""Tell float32 rounding amplified by the model from a wrong compact model: rerun in float64.

A masked model and its compact copy sum the same products in another order, so in float32 they
differ by rounding (~1e-7). Most models pass that on unchanged; some amplify it: deformable
convolutions (offsets computed from features move the bilinear sampling taps), a head's
local-maximum test ``max_pool2d(x) == x`` flipping on one ulp (SOLO), k-NN graphs built from
features (ViG). There the float32 outputs differ by more than the tolerance although the
compact model is right. Rounding shrinks by ~1e-9 in float64 while a wrong kept channel does
not, so :func:`float64_diff` repeats the comparison with float64 copies of both models (same
input, same masks, the masked model's discrete decisions replayed in the compact one) and
:func:`equivalence` passes a model only if that difference is within the tolerance.

mmcv ops without a float64 CPU kernel (NMS) run on float32 copies of their inputs and say so.
"""
import copy
import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from mmgfp.core import ChannelMasker, GroupSet
from mmgfp.apis.checking.replay import Decisions

# Messages of a kernel that has no float64 version (mmcv's CPU NMS, ATen's dispatch).
_NO_DOUBLE_KERNEL = ('expected scalar type Float but found Double', "not implemented for 'Double'")


def _cast(obj: Any, src: torch.dtype, dst: torch.dtype) -> Any:
    """``obj`` with every ``src`` tensor in it (lists, tuples, dicts) cast to ``dst``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dst) if obj.dtype == src else obj
    if isinstance(obj, (list, tuple)) and not hasattr(obj, '_fields'):
        return type(obj)(_cast(o, src, dst) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, src, dst) for k, v in obj.items()}
    return obj


def _to_double(module, args, kwargs):
    """Forward pre-hook: float32 tensors a module is given become float64 (data the
    preprocessor made float32, constants a head builds in float32)."""
    return _cast(args, torch.float32, torch.float64), _cast(kwargs, torch.float32, torch.float64)


def as_float64(model: nn.Module) -> nn.Module:
    """A float64 deep copy of ``model`` whose modules cast their float32 inputs to float64."""
    copied = copy.deepcopy(model).double()
    for m in copied.modules():
        m.register_forward_pre_hook(_to_double, with_kwargs=True)
    return copied


def _mmcv_functions() -> List[type]:
    """The autograd Functions of mmcv.ops that are imported (the custom CPU kernels)."""
    found, todo = [], list(torch.autograd.Function.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__.startswith('mmcv.ops'):
            found.append(cls)
    return found


def _float32_fallback(cls: type, apply: Callable, used: List[str]) -> Callable:

    def apply_float64(*args, **kwargs):
        try:
            return apply(*args, **kwargs)
        except RuntimeError as e:
            if not any(m in str(e) for m in _NO_DOUBLE_KERNEL):
                raise
        if cls.__name__ not in used:
            used.append(cls.__name__)
        out = apply(*_cast(args, torch.float64, torch.float32),
                    **_cast(kwargs, torch.float64, torch.float32))
        return _cast(out, torch.float32, torch.float64)

    return apply_float64


@contextmanager
def float64_mode():
    """Default dtype float64 for the block; mmcv ops without a float64 CPU kernel run on
    float32 copies of their inputs (their names are appended to the yielded list)."""
    used: List[str] = []
    patched = [cls for cls in _mmcv_functions() if 'apply' not in vars(cls)] \
        if 'mmcv.ops' in sys.modules else []
    old = torch.get_default_dtype()
    try:
        for cls in patched:
            cls.apply = staticmethod(_float32_fallback(cls, cls.apply, used))
        torch.set_default_dtype(torch.float64)
        yield used
    finally:
        torch.set_default_dtype(old)
        for cls in patched:
            if 'apply' in vars(cls):
                delattr(cls, 'apply')


def float64_diff(masked: nn.Module, groups: GroupSet, masks: Dict[str, torch.Tensor],
                 compact: nn.Module, run: Callable[[nn.Module], Any],
                 compare: Callable[[nn.Module, Decisions], float]) -> Dict:
    """Compare float64 copies of a masked model and its compact model.

    Args:
        masked (nn.Module): The model before slicing, masks detached (left unchanged).
        groups (GroupSet): Its groups.
        masks (dict): The keep masks (``ChannelMasker.state_dict()``).
        compact (nn.Module): The compact model (left unchanged).
        run (callable): ``run(model)`` runs the forward pass whose outputs are compared.
        compare (callable): ``compare(compact64, reference)``: the difference of the compact
            copy from the masked copy's recorded run (:class:`Decisions`).

    Returns:
        dict: ``diff`` (float), ``float32_ops`` (mmcv ops that ran in float32).
    """
    with float64_mode() as used:
        masked64 = as_float64(masked)
        masker = ChannelMasker(masked64, groups)
        masker.load_state_dict(masks)
        masker.attach()
        reference = Decisions(masked64)
        with torch.no_grad(), reference.active():
            reference.outputs = run(masked64)
        diff = compare(as_float64(compact), reference)
    return {'diff': diff, 'float32_ops': list(used)}


def equivalence(diff32: float, tol: float, rerun: Optional[Callable[[], Dict]]) -> Dict:
    """The verdict on a masked/compact pair whose float32 difference is ``diff32``.

    Within ``tol``: equivalent. Above it, ``rerun()`` (:func:`float64_diff` on the pair) decides:
    equivalent only if the float64 difference is within ``tol``; if float64 cannot run, not
    equivalent, and the verdict says why.

    Returns:
        dict: ``equivalent``, ``max_rel_diff`` (float32), ``max_rel_diff_float64`` (None when
        not needed or not run), ``float64_note`` and ``verdict`` (one line for people).
    """
    out = {'max_rel_diff': diff32, 'max_rel_diff_float64': None, 'float64_note': None}
    if diff32 <= tol:
        return dict(out, equivalent=True, verdict=f'float32 {diff32:.1e}: EQUIVALENT')
    head = f'float32 {diff32:.1e} (above {tol:.0e})'
    try:
        got = rerun() if rerun is not None else None
    except Exception as e:  # noqa: BLE001  (an op without a float64 kernel: said, not raised)
        note = f'float64 could not run: {type(e).__name__}: {" ".join(str(e).split())[:300]}'
        return dict(out, equivalent=False, float64_note=note,
                    verdict=f'{head}, {note}: NOT EQUIVALENT')
    if got is None:
        return dict(out, equivalent=False, verdict=f'{head}: NOT EQUIVALENT')
    diff64, ops = got['diff'], got['float32_ops']
    note = f'mmcv ops run in float32: {", ".join(ops)}' if ops else None
    ok = diff64 <= tol
    text = (f'float32 {diff32:.1e}' + (' (rounding amplified)' if ok else '') +
            f', float64 {diff64:.1e}' + (f' ({note})' if note else '') +
            (': EQUIVALENT' if ok else ': NOT EQUIVALENT'))
    return dict(out, equivalent=ok, max_rel_diff_float64=diff64, float64_note=note,
                verdict=text)
