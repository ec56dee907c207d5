"""NVIDIA Model Optimizer (ModelOpt) FastNAS as a peer variant of ``benchmarks/latency.py``.

ModelOpt is optional and lives outside the venv (its pins would otherwise resolve against
ours): ``tools/setup_env.sh`` installs ``requirements/modelopt.txt`` with ``pip install
--target .venv/modelopt --no-deps``, and ``MMGFP_MODELOPT_DIR`` names another such folder.
The folder is *appended* to ``sys.path``, so the venv's own packages always win.

What the ``modelopt`` variant does (``mtp.prune(mode='fastnas')`` of ModelOpt 0.47):

* the model's tensor path (``model(x, data_samples, mode='tensor')``, the raw outputs the
  benchmark times) is wrapped in a plain ``forward(x)`` module, :class:`TensorNet`;
* FastNAS converts every conv/linear/norm into a dynamic module with widths in multiples of
  32 (its default rules), measures how much the score drops at every width of every
  searchable width (its "sensitivity map"), then binary-searches one threshold on that drop
  under the constraint ``{'flops': '<target>%'}`` counted on the same input;
* the score is :class:`OutputAgreement`: minus the relative squared error between the
  subnet's tensor outputs and the original's on one random batch at the pruning input size
  (the models have random weights, so agreement with the original is the only "accuracy");
  no data loader is given, so norm statistics are not recalibrated per subnet;
* the searched widths (``mtn.get_subnet_config``) are stored as JSON; a rerun rebuilds the
  compact model from them (``convert`` + ``select`` + ``export``) without searching again.
"""
import contextlib
import copy
import json
import os
import os.path as osp
import sys
import time
import warnings

import torch
import torch.nn as nn

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ENV = 'MMGFP_MODELOPT_DIR'
DEFAULT_DIR = osp.join(ROOT, '.venv', 'modelopt')
RECIPE = ('.venv/bin/python -m pip install --target .venv/modelopt --no-deps '
          '-r requirements/modelopt.txt  (tools/setup_env.sh does this; or set '
          f'{ENV} to a folder made that way)')


class ModelOptMissing(ImportError):
    """ModelOpt (``modelopt.torch.prune``) cannot be imported."""


def import_modelopt():
    """``(modelopt.torch.prune, modelopt.torch.nas)``, importing from ``$MMGFP_MODELOPT_DIR``
    (default ``.venv/modelopt``) when the venv itself does not have ModelOpt.

    Raises:
        ModelOptMissing: with the install recipe, when the import fails.
    """
    folder = os.environ.get(ENV, DEFAULT_DIR)
    if osp.isdir(folder) and folder not in sys.path:
        sys.path.append(folder)
    try:
        import modelopt.torch.nas as mtn
        import modelopt.torch.prune as mtp
    except Exception as e:  # ImportError, or a dependency at the wrong version
        raise ModelOptMissing(
            f'the modelopt variant needs NVIDIA ModelOpt 0.47 (import failed: {e!r}; looked in '
            f'{folder}{"" if osp.isdir(folder) else " (no such folder)"}). Install it with: '
            f'{RECIPE}') from e
    import torchprofile.profile as tpp
    if not hasattr(tpp, 'handlers'):  # ModelOpt 0.47's FLOPs count patches it (0.0.4 has it)
        raise ModelOptMissing(
            f'ModelOpt 0.47 counts FLOPs with torchprofile 0.0.4, found {tpp.__file__} without '
            f'`profile.handlers` (torchprofile 0.1?). Install the pinned set: {RECIPE}')
    return mtp, mtn


def version() -> str:
    from importlib import metadata
    try:
        return metadata.version('nvidia-modelopt')
    except metadata.PackageNotFoundError:
        return '?'


class TensorNet(nn.Module):
    """``forward(x)`` = ``model(x, data_samples, mode='tensor')``: the raw outputs of an
    MMDetection detector or MMPretrain classifier, as a module FastNAS can trace."""

    def __init__(self, model: nn.Module, data_samples):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, x):
        return self.model(x, self.data_samples, mode='tensor')


def flat(out):
    """The tensors of a (nested) tuple/list/dict of outputs, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in flat(o)]


class OutputAgreement:
    """FastNAS score: ``-sum((f(x) - ref)^2) / sum(ref^2)`` over all tensor outputs (0 for
    the original, more negative the further a subnet's outputs move); counts its calls."""

    def __init__(self, net: nn.Module, x: torch.Tensor):
        self.x = x
        with torch.no_grad():
            self.ref = [t.detach() for t in flat(net.eval()(x))]
        self.calls = 0

    def __call__(self, net: nn.Module) -> float:
        self.calls += 1
        with torch.no_grad():
            out = flat(net(self.x))
        err = sum(float(((a - b) ** 2).sum()) for a, b in zip(out, self.ref))
        return -err / sum(float((b ** 2).sum()) for b in self.ref)


def score_input(orig: nn.Module, batch_size: int, size, seed: int):
    """``(x, data_samples)``: one random batch through the data preprocessor (eval)."""
    from mmgfp.apis.inputs import demo_batch
    data = orig.data_preprocessor(demo_batch(orig, batch_size, size, seed=seed), False)
    return data['inputs'], data['data_samples']


def search(orig: nn.Module, x, samples, flops_target: float, checkpoint=None, score=None):
    """FastNAS on a deep copy of ``orig``: ``(compact model, subnet config, stats)``.

    ``score(net)`` (of the :class:`TensorNet` FastNAS prunes; with a ``calls`` counter)
    replaces :class:`OutputAgreement` on ``x`` when given.
    """
    mtp, mtn = import_modelopt()
    net = TensorNet(copy.deepcopy(orig).eval(), samples)
    score = OutputAgreement(net, x) if score is None else score
    calls = score.calls
    resumed = bool(checkpoint) and osp.isfile(checkpoint)  # its sensitivity map is reused
    t0 = time.perf_counter()
    with _quiet():
        net, state = mtp.prune(net, mode='fastnas',
                               constraints={'flops': f'{flops_target * 100:g}%'},
                               dummy_input=x, config={'score_func': score,
                                                      'checkpoint': checkpoint})
    seconds = time.perf_counter() - t0
    best = state['best']
    stats = {'search_s': seconds, 'score_calls': score.calls - calls,
             'resumed_from': checkpoint if resumed else None,
             'score': best.get('metric'), 'constraints': best.get('constraints')}
    return net.model.eval(), dict(best['config']), stats


def rebuild(orig: nn.Module, x, samples, config: dict) -> nn.Module:
    """The compact model that ``config`` (as :func:`search` returned it) selects, without
    searching: ModelOpt's ``convert`` + ``select`` + ``export`` on a deep copy."""
    _, mtn = import_modelopt()
    with _quiet():
        net = mtn.convert(TensorNet(copy.deepcopy(orig).eval(), samples), mode='fastnas')
        # JSON gives lists where ModelOpt keeps tuples (kernel sizes)
        mtn.select(net, {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
        net = mtn.export(net)
    return net.model.eval()


@contextlib.contextmanager
def _quiet():
    """Silence ModelOpt's prints, progress bars and warnings inside the block."""
    with open(os.devnull, 'w') as null, contextlib.redirect_stdout(null), \
            contextlib.redirect_stderr(null), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield


def kept_widths(compact: nn.Module, groups) -> dict:
    """``{group key: channels}`` read off the compact model: the output width of the group's
    producer layers (the full width where the group has no such layer), so mmgfp's counters
    and a latency table can price ModelOpt's compact too."""
    modules = dict(compact.named_modules())
    kept = {k: g.channels for k, g in groups.groups.items()}
    for name, key in groups.producers.items():
        m = modules.get(name)
        width = getattr(m, 'out_channels', getattr(m, 'out_features', None))
        if width is not None:
            kept[key] = min(kept[key], width)
    return kept


def save(path: str, config: dict, meta: dict) -> None:
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    with open(path, 'w') as f:
        json.dump({'modelopt': version(), **meta, 'subnet_config': config}, f, indent=1,
                  sort_keys=True)


def load(path: str) -> dict:
    with open(path) as f:
        stored = json.load(f)
    if 'subnet_config' not in stored:
        raise ValueError(f'{path} is not a ModelOpt subnet file (no "subnet_config" key); '
                         'delete it or point --reuse-specs elsewhere')
    return stored


def variant(orig: nn.Module, groups, name: str, args, table=None):
    """The ``modelopt`` compact of ``orig`` and its info, as ``_latency_models.prune`` gives
    them for the GFP variants: searched at ``args.target`` of the FLOPs on one random batch at
    the pruning input size, or rebuilt from ``--reuse-specs DIR/<model>__modelopt.json``
    (``prune_s`` 0 then; the stored search time stays in ``info['modelopt']``)."""
    from _latency_models import is_detector
    det = is_detector(name)
    size = (args.prune_det_size if det else args.prune_cls_size,) * 2
    bs = args.prune_det_batch if det else args.prune_cls_batch
    x, samples = score_input(orig, bs, size, args.seed + 1)
    stored = osp.join(args.reuse_specs or '', f'{name}__modelopt.json')
    if args.reuse_specs and osp.isfile(stored):
        print(f'[latency] {name} modelopt: subnet from {stored} (not searched again)')
        meta = load(stored)
        compact, searched = rebuild(orig, x, samples, meta['subnet_config']), False
        stats = {k: v for k, v in meta.items() if k != 'subnet_config'}
    else:
        ckpt = osp.join('work_dirs', 'modelopt', f'{name}_search_{size[0]}_b{bs}_'
                        f'seed{args.seed + 1}.pth')  # ModelOpt resumes its sensitivity map
        os.makedirs(osp.dirname(ckpt), exist_ok=True)
        compact, config, stats = search(orig, x, samples, args.target, ckpt)
        stats.update(flops_target=args.target, score_input=f'{bs}x3x{size[0]}x{size[1]}')
        searched = True
        if args.save_specs:
            save(osp.join(args.save_specs, f'{name}__modelopt.json'), config, stats)
    return compact, compact_info(orig, compact, groups, table, stats, searched)


def compact_info(orig, compact, groups, table, stats, searched):
    """The info ``_latency_models.prune`` gives a GFP variant, for ModelOpt's ``compact``:
    what is left of FLOPs, activations, parameters and (with ``table``) predicted latency,
    counted from its kept widths per group; ``stats`` are the search's facts."""
    from mmgfp.core import count
    kept = kept_widths(compact, groups)
    full = {k: g.channels for k, g in groups.groups.items()}
    now, ref = count(groups, kept.get), count(groups, full.get)
    rem = {k: now[k] / ref[k] for k in now}
    rem['params'] = (sum(p.numel() for p in compact.parameters()) /
                     sum(p.numel() for p in orig.parameters()))
    if table is not None:
        rem['latency'] = table.predict(groups, kept.get) / table.total_us
    return {'remaining': rem, 'prune_s': stats['search_s'] if searched else 0.0, 'steps': 0,
            'fisher_iters': 0, 'rel_diff': float('nan'), 'spec': None, 'kept': kept,
            'channels_pruned': sum(full[k] - kept[k] for k in full), 'modelopt': stats}
