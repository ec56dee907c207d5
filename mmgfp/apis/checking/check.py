"""Check that mmgfp handles an architecture: group, prune at random, compact, rebuild, compare."""
import copy
import os.path as osp
import random
import tempfile
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config

from mmgfp.core import (FisherPruner, GroupSet, apply_spec, make_spec,
                        save_spec)
from mmgfp.apis.deploying.deploy import (  # noqa: F401  (also public here)
    build_model, compact_config, load_strict)
from mmgfp.apis.inputs import (clear_shape_errors, default_input_size, demo_batch, model_groups,
                               prepare_like_training, tensor_forward)
from mmgfp.apis.checking.precision import equivalence, float64_diff
from mmgfp.apis.checking.replay import Decisions


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Give norm layers non-trivial statistics so equivalence is tested, not assumed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and m.affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def _tiny_constant(p: torch.Tensor) -> bool:
    """Whether ``p`` holds one nonzero value of magnitude <= 1e-3 everywhere (a layer scale)."""
    v = p.flatten()[0]
    return bool(v != 0 and v.abs() <= 1e-3 and (p == v).all())


def randomize_zero_params(model: nn.Module, seed: int = 0) -> None:
    """Give parameters initialised to zero (a ViT's classifier, ConvNeXt-V2's GRN, zero-init
    branches) small random values, and layer scales initialised to a tiny constant (1e-6 in
    ConvNeXt, EdgeNeXt, HorNet) random values of 0.5 to 1.5 with their sign: an output that
    ignores the pruned channels, or reads them scaled by 1e-6 next to an identity path, would
    make equivalence vacuous (a kept channel zeroed in ConvNeXt's compact model changed its
    output by 3e-7)."""
    gen = torch.Generator().manual_seed(seed + 1)
    scales = torch.Generator().manual_seed(seed + 2)  # its own stream: zero-init draws stay
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif p.numel() > 1 and _tiny_constant(p):
                p.copy_(p.flatten()[0].sign() * (0.5 + torch.rand(p.shape, generator=scales)))


def random_masks(pruner: FisherPruner, ratio: float, seed: int) -> None:
    """Mask a random fraction ``ratio`` of the units of every prunable group (keep >= 1)."""
    gen = torch.Generator().manual_seed(seed)
    for key, keep in pruner.masker.keep.items():
        n = keep.numel()
        drop = min(int(round(ratio * n)), n - 1)
        order = torch.randperm(n, generator=gen)
        new = torch.ones(n, dtype=torch.bool)
        new[order[:drop]] = False
        pruner.masker.set_keep(key, new)


def _tensor_diff(out, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` over the finite values; infinities must match exactly and
    a NaN in either is a difference (inf): ``max`` over a structure would drop a NaN."""
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
        return float('inf')
    ref, out = ref.double(), out.double()
    finite = torch.isfinite(ref) & torch.isfinite(out)
    if not bool(finite.all()):
        if bool(ref.isnan().any() or out.isnan().any()) or not torch.equal(out[~finite],
                                                                            ref[~finite]):
            return float('inf')
        ref, out = ref[finite], out[finite]
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def rel_diff(out, ref) -> float:
    """Largest ``||out - ref|| / ||ref||`` over matching tensors of two output structures."""
    if isinstance(ref, torch.Tensor):
        return _tensor_diff(out, ref)
    if isinstance(ref, (list, tuple)):
        if not isinstance(out, (list, tuple)) or len(out) != len(ref):
            return float('inf')
        return max([rel_diff(o, r) for o, r in zip(out, ref)] + [0.0])
    if isinstance(ref, dict):
        return max([rel_diff(out[k], ref[k]) for k in ref] + [0.0])
    return 0.0


def group_table(gs: GroupSet) -> list:
    return [{'key': g.key, 'channels': g.channels, 'block': g.block, 'prunable': g.prunable,
             'reasons': g.reasons, 'producers': g.producers, 'consumers': g.consumers,
             'passthrough': g.passthrough, 'params': g.params} for g in gs.groups.values()]


def analyze(cfg: Config, input_size: Optional[Sequence[int]] = None, batch_size: int = 2,
            seed: int = 0) -> Dict:
    """Groups of the model a config builds (no weights needed).

    Args:
        cfg (Config): An mmdet/mmpretrain config.
        input_size (Sequence[int], optional): ``(H, W)`` of the demo images. Defaults to None:
            a classifier's test-pipeline size (see :func:`default_input_size`), 128x128 for
            detectors.
        batch_size (int): Demo images. Defaults to 2.
        seed (int): Seed of the demo batch. Defaults to 0.
    """
    model = build_model(cfg)
    size = tuple(input_size) if input_size is not None else default_input_size(cfg)
    data = demo_batch(model, batch_size, size, seed)
    prepare_like_training(model)
    model.train()
    with clear_shape_errors(size):
        gs = model_groups(model, data)
    return {'model': model, 'groups': gs, 'data': data, 'input_size': size}


def seeded(run, seed: int = 0):
    """``run`` with torch's random state reset first: models that draw random numbers in their
    test forward (SegNeXt's Hamburger head draws NMF bases with ``torch.rand`` on every call)
    then draw the same ones in the masked and the compact model."""

    def fn(model):
        torch.manual_seed(seed)
        return run(model)

    return fn


def compact_pair(cfg: Config, ratio: float = 0.5, seed: int = 0,
                 input_size: Optional[Sequence[int]] = None,
                 work_dir: Optional[str] = None, batch_size: int = 2) -> Dict:
    """Mask a random ``ratio`` of every prunable group, run the masked model once (recording its
    decisions, see :mod:`mmgfp.apis.checking.replay`), export it and rebuild the compact model from the
    written config.

    Returns:
        dict: ``rebuilt`` (the compact model, eval mode), ``reference`` (the masked model's
        :class:`Decisions`, outputs in ``reference.outputs``), ``data``, ``groups``,
        ``pruner``, ``remaining`` (its fractions of the costs), ``model`` (the original, now
        sliced in place), ``masked`` (a copy of it before slicing, masks detached; for the
        float64 rerun), ``masks`` (the keep masks) and ``input_size``.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f'`ratio` must lie in [0, 1), but got {ratio!r}')
    torch.manual_seed(seed)
    random.seed(seed)  # batch augments that draw with Python's or NumPy's generator
    np.random.seed(seed)  # (PPYOLOE's random resize of training batches: FLOPs follow it)
    found = analyze(cfg, input_size, batch_size, seed)
    model, gs, data = found['model'], found['groups'], found['data']
    randomize_norms(model, seed)
    randomize_zero_params(model, seed)
    pruner = FisherPruner(model, gs)
    random_masks(pruner, ratio, seed)
    pruner.masker.attach()
    model.eval()
    reference = Decisions(model)
    with torch.no_grad(), reference.active():
        reference.outputs = seeded(tensor_forward(data))(model)
    remaining = pruner.remaining()  # counted on the masked model, before it is sliced
    spec = make_spec(pruner.masker)
    pruner.masker.detach()
    masked = copy.deepcopy(model)  # unsliced: the float64 rerun attaches the masks again
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        apply_spec(model, spec)
        save_spec(spec, osp.join(tmp, 'channels.json'))
        new_cfg = compact_config(cfg, osp.join(tmp, 'channels.json'), None)
        new_cfg.dump(osp.join(tmp, 'compact.py'))
        rebuilt = build_model(Config.fromfile(osp.join(tmp, 'compact.py')), init=False)
    load_strict(rebuilt, _without_aliases(model.state_dict(), rebuilt.state_dict()),
                'the compact state dict')
    prepare_like_training(rebuilt)
    rebuilt.eval()
    return {'rebuilt': rebuilt, 'reference': reference, 'data': data, 'groups': gs,
            'pruner': pruner, 'remaining': remaining, 'model': model, 'masked': masked,
            'masks': pruner.masker.state_dict(), 'input_size': found['input_size']}


def _without_aliases(state: Dict, own: Dict) -> Dict:
    """``state`` less the keys ``own`` lacks that name a tensor ``state`` has under another
    key: a module a training forward registered a second time (DDQ-DETR's
    ``decoder.aux_reg_branches``, the head's own branches)."""
    seen = {(v.data_ptr(), tuple(v.shape)) for k, v in state.items() if k in own}
    return {k: v for k, v in state.items()
            if k in own or (v.data_ptr(), tuple(v.shape)) not in seen}


def compare(rebuilt: nn.Module, data, reference: Decisions) -> float:
    """Largest relative difference between ``rebuilt`` and the recorded reference run: the
    outputs and the tapped values before each decision, the decisions replayed."""
    return replayed_diff(rebuilt, seeded(tensor_forward(data)), reference)


def replayed_diff(rebuilt: nn.Module, run, reference: Decisions) -> float:
    """:func:`compare` with the forward pass ``run(model)`` instead of a data batch."""
    replay = Decisions(rebuilt, reference)
    with torch.no_grad(), replay.active():
        out = run(rebuilt)
    if replay.counts() != reference.counts():
        return float('inf')  # the compact model took another path
    return rel_diff({'outputs': out, 'taps': replay.taps},
                    {'outputs': reference.outputs, 'taps': reference.taps})


def verdict(pair: Dict, diff: float, tol: float, run=None) -> Dict:
    """:func:`mmgfp.apis.checking.precision.equivalence` of a :func:`compact_pair` whose float32
    difference is ``diff``: above ``tol``, both models are compared again in float64.
    ``run(model)`` is the forward pass (default: ``tensor_forward`` of the pair's data)."""
    run = run or seeded(tensor_forward(pair['data']))

    def rerun():
        return float64_diff(pair['masked'], pair['groups'], pair['masks'], pair['rebuilt'],
                            run, lambda compact, ref: replayed_diff(compact, run, ref))

    return equivalence(diff, tol, rerun)


def check_model(cfg: Config, ratio: float = 0.5, seed: int = 0,
                input_size: Optional[Sequence[int]] = None, tol: float = 1e-4,
                work_dir: Optional[str] = None, batch_size: int = 2) -> Dict:
    """Group, prune at random by masks, export, rebuild from the compact config, compare.

    Discrete decisions (proposals, RoI levels, cascade refinements) are taken by the masked
    model and replayed in the compact one; the values they are taken on are compared too.
    Where the float32 difference exceeds ``tol``, both models are compared again in float64
    (:mod:`mmgfp.apis.checking.precision`): rounding that the model amplifies (deformable sampling,
    local-maximum tests, feature-built graphs) vanishes there, a wrong compact model does not.

    Args:
        cfg (Config): An mmdet/mmpretrain config.
        ratio (float): Fraction of every prunable group to mask at random. Defaults to 0.5.
        seed (int): Seed of the masks, norm statistics and demo batch. Defaults to 0.
        input_size (Sequence[int], optional): ``(H, W)``; see :func:`analyze`. Defaults to
            None.
        tol (float): Largest relative difference that counts as equivalent. Defaults to 1e-4.
        work_dir (str, optional): Where the temporary compact config is written. Defaults to
            None (the system's temporary folder).
        batch_size (int): Demo images per batch. Defaults to 2.

    Returns:
        dict: ``num_groups``, ``num_prunable_groups``, ``flops/params/acts_before/after``,
        ``max_rel_diff`` (float32), ``max_rel_diff_float64`` (None unless float32 exceeded
        ``tol``), ``float64_note``, ``equivalent``, ``verdict`` (one line), ``replayed``,
        ``groups``, ``input_size`` and ``rebuilt_class``.
    """
    return pair_report(compact_pair(cfg, ratio, seed, input_size, work_dir, batch_size), tol)


def pair_report(pair: Dict, tol: float = 1e-4) -> Dict:
    """:func:`check_model`'s report on what :func:`compact_pair` returned."""
    rebuilt, pruner, gs = pair['rebuilt'], pair['pruner'], pair['groups']
    found = verdict(pair, compare(rebuilt, pair['data'], pair['reference']), tol)
    remaining, full = pair['remaining'], pruner.full
    return {
        'num_groups': len(gs.groups), 'num_prunable_groups': len(gs.prunable),
        'flops_before': full['flops'], 'flops_after': full['flops'] * remaining['flops'],
        'params_before': full['params'],
        'params_after': sum(p.numel() for p in rebuilt.parameters()),
        'params_after_predicted': full['params'] * remaining['params'],
        'acts_before': full['acts'], 'acts_after': full['acts'] * remaining['acts'],
        **found,
        'replayed': pair['reference'].counts(), 'input_size': list(pair['input_size']),
        'rebuilt_class': type(rebuilt).__name__,
        'original_class': type(pair['model']).__name__, 'groups': group_table(gs)}


def load_config(path: str) -> Config:
    """``Config.fromfile`` that also takes ``mmdet::path`` / ``mmpretrain::path`` names, and
    runs the bridges its codebase needs (:func:`mmgfp.codebases.prepare_scope`: MMYOLO)."""
    cfg = _read_config(path)
    from mmgfp.codebases import prepare_scope
    prepare_scope(cfg)
    return cfg


def _read_config(path: str) -> Config:
    if '::' in path and not osp.isfile(path):
        from mmengine.utils import get_installed_path
        scope, rel = path.split('::', 1)
        try:
            root = get_installed_path(scope)
        except Exception:
            raise FileNotFoundError(f'{path}: package {scope!r} is not installed') from None
        full = osp.join(root, '.mim', 'configs', rel)
        if not osp.isfile(full):
            raise FileNotFoundError(f'{path}: {scope} ships no config {rel} (looked in '
                                    f'{osp.dirname(full)})')
        path = full
    if not osp.isfile(path):
        raise FileNotFoundError(f'config {path} does not exist')
    try:
        return Config.fromfile(path)
    except RuntimeError as e:
        if 'lazy_import' not in str(e):
            raise
        # A plain config whose base imports a module at its top (mmpretrain 1.2's RepLKNet base
        # imports build_classifier for a __main__ demo): mmengine takes that base for a
        # lazy-import config and refuses the mix. Read the whole chain as plain configs.
        try:
            return Config.fromfile(path, lazy_import=False)
        except Exception:  # noqa: BLE001  (the first error says more)
            raise e from None
