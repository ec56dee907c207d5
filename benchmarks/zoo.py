"""The model zoo: ``check_model`` on one config of every model family mmdet and mmpretrain ship.

Run from the repository root, in parts if the machine is small (results are kept per family)::

    .venv/bin/python benchmarks/zoo.py                       # every family not stored yet
    .venv/bin/python benchmarks/zoo.py --family mmdet::yolox mmpretrain::vgg
    .venv/bin/python benchmarks/zoo.py --index 0:40          # the first 40 families
    .venv/bin/python benchmarks/zoo.py --stored-only         # only write docs/en/model_zoo.md
    .venv/bin/python benchmarks/zoo.py --list                # families and the config picked
    .venv/bin/python benchmarks/zoo.py --packages mmseg --doc docs/en/model_zoo/mmseg.md

A family is a folder of ``<pkg>/.mim/configs``; its representative config is the first model of
its ``metafile.yml`` whose config exists (else the shortest config name), unless ``PICK`` names
one. Each family runs in its own process (one thread, ``--timeout`` seconds) through
``mmgfp.apis.checking.check.check_model`` at ``--ratio`` 0.5: detectors at ``--det-size`` (64x64),
classifiers at the size of their own test pipeline, segmentors at ``--seg-size`` (128x128,
their preprocessor's padding size set to it). The result is stored as
``RESULTS/<pkg>__<family>.json`` and reused unless ``--force``; the page (``docs/en/model_zoo.md`` for
mmdet and mmpretrain, ``--doc`` for other ``--packages``) is written from the stored results of
its packages. Families that are not detection, instance segmentation or classification
(panoptic, tracking, self-supervised, multimodal...) or that cannot be built without data or
downloaded weights are listed as skipped, with the reason.
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _zoo_families import NOT_FAMILIES, PACKAGES, PICK, SKIP, families  # noqa: E402,F401
from _zoo_render import render_doc  # noqa: E402
from _zoo_tasks import TASKS  # noqa: E402

RESULTS = osp.join(ROOT, 'benchmarks', 'results', 'zoo')
DOC = osp.join(ROOT, 'docs', 'en', 'model_zoo.md')
TOL = 1e-4
# What amplifies float32 rounding in the families whose check needs its float64 rerun (located
# by comparing the float32 differences output by output; stored with the result and shown).
AMPLIFIED_BY = {
    'mmdet::dcn': 'deformable sampling (offsets move bilinear taps; spread over all outputs, '
                  '0 at ratio 0)',
    'mmdet::solo': "the head's local-maximum test max_pool2d(x) == x flipping on 1 ulp (3 of "
                   '463k class scores)',
    'mmpretrain::vig': '12 blocks of k-NN graphs built from features (spread over all logits)',
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--family', nargs='+', help='families to run, e.g. mmdet::yolox '
                   '(default: all)')
    p.add_argument('--index', help='a slice a:b of the family list (after --family)')
    p.add_argument('--ratio', type=float, default=0.5)
    p.add_argument('--packages', nargs='+',
                   help=f'OpenMMLab packages whose families run (default: {" ".join(PACKAGES)}, '
                   f'or those of --family; known: {" ".join(sorted(TASKS))})')
    p.add_argument('--det-size', type=int, default=64, help='detector input size (square)')
    p.add_argument('--seg-size', type=int, default=128, help='segmentor input size (square)')
    p.add_argument('--timeout', type=int, default=300, help='seconds per family')
    p.add_argument('--results', default=RESULTS, help='folder of the stored results')
    p.add_argument('--doc', help='markdown table to write (default: docs/en/model_zoo.md for mmdet and '
                   'mmpretrain, docs/en/model_zoo/<packages>.md otherwise)')
    p.add_argument('--force', action='store_true', help='rerun stored families')
    p.add_argument('--stored-only', action='store_true', help='run nothing, write the table')
    p.add_argument('--list', action='store_true', help='print the families and configs')
    p.add_argument('--worker', nargs=2, metavar=('FAMILY', 'OUT'), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stored_only and args.force:
        p.error('--stored-only and --force contradict each other: pick one')
    if args.index is not None:
        try:
            a, b = args.index.split(':')
            args.index = (int(a) if a else None, int(b) if b else None)
        except ValueError:
            p.error(f'--index must be a slice a:b of integers, but got {args.index!r}')
    if not 0 <= args.ratio < 1:
        p.error(f'--ratio must lie in [0, 1), but got {args.ratio}')
    if args.packages is None:
        named = list(dict.fromkeys(f.split('::')[0] for f in args.family or []))
        args.packages = named if set(named) - set(PACKAGES) else list(PACKAGES)
    unknown = [k for k in args.packages if k not in TASKS]
    if unknown:
        p.error(f'--packages {unknown}: the zoo knows {sorted(TASKS)} (benchmarks/zoo.py TASKS)')
    if args.doc is None:
        default = sorted(args.packages) == sorted(PACKAGES)
        args.doc = DOC if default else osp.join(ROOT, 'docs', 'en', 'model_zoo',
                                                '_'.join(args.packages) + '.md')
    return args


# ------------------------------------------------------------------------------ one family
def _load(config: str):
    from mmgfp.apis.checking.check import load_config
    cfg = load_config(config)
    if not cfg.get('default_scope'):  # some configs leave the scope to the tool that runs them
        cfg.default_scope = config.split('::')[0]
    return cfg


def classify(cfg) -> tuple:
    """``(task, None)``, or ``(None, why the family is skipped)``, from the config's model."""
    return TASKS[cfg.get('default_scope') or 'mmdet'](cfg)


def _unprunable(groups: list) -> list:
    return [{'key': g['key'], 'channels': g['channels'], 'reasons': g['reasons']}
            for g in groups if not g['prunable']]


def _in_mmcv_ops(e: Exception):
    """``file:line function`` of the innermost frame of ``e`` when it lies in mmcv.ops."""
    import traceback
    frames = traceback.extract_tb(e.__traceback__)
    last = frames[-1] if frames else None
    if last is None or '/mmcv/ops/' not in last.filename:
        return None
    return f"mmcv/ops/{last.filename.split('/mmcv/ops/')[1]}:{last.lineno} {last.name}"


def _check(cfg, res: dict, args):
    """check_model at growing input sizes (detectors) and, where an mmcv op asserts on its
    input (MaskedConv2d takes one image per batch), one image per batch."""
    from mmgfp.apis.checking.check import check_model
    size, batch = tuple(res['input_size']), 2
    while True:
        try:
            return check_model(cfg, args.ratio, 0, size, TOL, batch_size=batch)
        except AssertionError as e:
            where = _in_mmcv_ops(e)
            if where is None or batch == 1:
                raise
            res['note'] = f'at 2 images per batch: AssertionError in {where}'
            batch = 1
        except (RuntimeError, ValueError) as e:
            if res['task'] in ('classification', 'top-down pose', 'bottom-up pose') or \
                    size[0] >= 256 or _environment(e):
                raise
            # some detectors need larger maps (deformable convs on a 2x2 top level, DINO's
            # 900 queries chosen among the tokens): retry larger; a segmentor at its crop size
            # (LRASPP pools 49x49 windows)
            res['note'] = f'{size[0]}x{size[1]} failed ({type(e).__name__}: {str(e)[:80]})'
            crop = res.pop('crop_size', None)
            size = tuple(crop) if crop else (max(128, 2 * size[0]), ) * 2
            if crop:
                _seg_at_size(cfg, size, res)
            res['input_size'] = list(size)


def _seg_at_size(cfg, size, res: dict) -> None:
    """Build an mmseg config for the zoo's input size: its preprocessor pads training batches to
    its ``size`` (the crop size, 512x1024 for Cityscapes), and transformer backbones that size
    their position tables by ``img_size`` (BEiT's relative position bias) get the zoo's."""
    for pre in (cfg.get('data_preprocessor'), cfg.model.get('data_preprocessor')):
        if isinstance(pre, dict) and pre.get('size') is not None:
            pre['size'] = tuple(size)
    backbone = cfg.model.get('backbone') or {}
    if backbone.get('img_size') is not None:
        res['adapted'] = f"backbone img_size {backbone['img_size']} set to {size[0]}"
        backbone['img_size'] = tuple(size) if isinstance(backbone['img_size'], (list, tuple)) \
            else size[0]


def run_family(family: str, config: str, args, res: dict) -> dict:
    """Check one family's config in this process (called in the worker); fills ``res``."""
    import torch
    torch.set_num_threads(1)
    import mmgfp  # noqa: F401
    from mmgfp.apis.inputs import default_input_size, is_classifier_config
    cfg = _load(config)
    res['task'], why = classify(cfg)
    if why:
        return dict(res, status='skipped', reason=why)
    size = default_input_size(cfg) if is_classifier_config(cfg) or cfg.default_scope == \
        'mmpose' else (args.det_size,) * 2
    if cfg.default_scope == 'mmseg':
        res['crop_size'] = list(default_input_size(cfg))  # the retry size
        size = (args.seg_size,) * 2
        _seg_at_size(cfg, size, res)
    # 512x512 or 640x640 codecs: half of it is enough, except for CID, whose test-time head
    # samples features at the heatmap size of its own codec (one image: MMPose.test_batch)
    if res['task'] == 'bottom-up pose' and cfg.default_scope == 'mmpose' and \
            family != 'mmpose::body_2d_keypoint/cid':
        size = tuple(s // 2 for s in size)
    res['input_size'] = list(size)
    rep = _check(cfg, res, args)
    keys = ('num_groups', 'num_prunable_groups', 'flops_before', 'flops_after',
            'params_before', 'params_after', 'max_rel_diff', 'max_rel_diff_float64',
            'float64_note', 'verdict', 'equivalent', 'original_class')
    res.update({k: rep[k] for k in keys})
    if rep['max_rel_diff_float64'] is not None and family in AMPLIFIED_BY:
        res['amplified_by'] = AMPLIFIED_BY[family]
    res['unprunable'] = _unprunable(rep['groups'])
    ok = rep['equivalent'] and rep['num_prunable_groups'] > 0
    res['status'] = 'pass' if ok else ('no prunable group' if rep['equivalent'] else
                                       'NOT EQUIVALENT')
    return res


# Failures that say the family cannot be built or trained here, not that mmgfp failed.
ENVIRONMENT = (
    ('URLError', 'downloads weights while it is built (no network here): '),
    ('implementation for device cpu not found', 'uses an mmcv op without a CPU kernel: '),
    ('is not installed', 'needs an optional package: '),
    ('please install it', 'needs an optional package: '),
    ("doesn't support to train", 'cannot compute a training loss (Fisher needs one): '),
    ("doesn't support training", 'cannot compute a training loss (Fisher needs one): '),
)


def _environment(e: Exception):
    text = f'{type(e).__name__}: {e}'
    for key, why in ENVIRONMENT:
        if key in text:
            return why + ' '.join(text.split())[:200]
    return None


def worker(family: str, out: str, args) -> None:
    config = dict(families([family.split('::')[0]])).get(family)
    t0 = time.perf_counter()
    res = {'family': family, 'config': config}
    try:
        res = run_family(family, config, args, res)
    except Exception as e:  # noqa: BLE001  (stored and shown in the table)
        import traceback
        tb = traceback.extract_tb(e.__traceback__)
        where = [f'{osp.relpath(f.filename, ROOT) if f.filename.startswith(ROOT) else f.filename}'
                 f':{f.lineno} {f.name}' for f in tb[-4:]]
        res.update({'status': 'error', 'error': f'{type(e).__name__}: {e}'[:600],
                    'where': where, 'in_mmgfp': any('/mmgfp/' in f.filename for f in tb[-3:])})
        why = _environment(e)
        if why:
            note = f" ({res['note']})" if res.get('note') else ''
            res.update(status='skipped', reason=why + note)
    res['seconds'] = round(time.perf_counter() - t0, 1)
    save(out, res)


def run_subprocess(family: str, config: str, path: str, args) -> dict:
    """Run one family in a child process with a time limit; store and return its result."""
    cmd = [sys.executable, osp.abspath(__file__), '--worker', family, path,
           '--ratio', str(args.ratio), '--det-size', str(args.det_size),
           '--seg-size', str(args.seg_size)]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=args.timeout,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        res = {'family': family, 'config': config, 'status': 'timeout',
               'error': f'no result within {args.timeout} s', 'seconds': args.timeout}
        save(path, res)
        return res
    if proc.returncode != 0 or not osp.isfile(path):
        tail = (proc.stderr or proc.stdout or '').strip().splitlines()[-3:]
        res = {'family': family, 'config': config, 'status': 'error', 'in_mmgfp': False,
               'error': f'worker exited {proc.returncode}: ' + ' | '.join(tail)[:600],
               'seconds': round(time.perf_counter() - t0, 1)}
        save(path, res)
        return res
    return load(path)


# ------------------------------------------------------------------------------ storage
def result_path(results: str, family: str) -> str:
    # mmpose's families are task/algorithm: one flat file name all the same
    return osp.join(results, family.replace('::', '__').replace('/', '.') + '.json')


def save(path: str, res: dict) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(res, f, indent=1, default=str)
    os.replace(path + '.tmp', path)


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def stored_results(results: str) -> list:
    return [load(p) for p in sorted(glob.glob(osp.join(results, '*.json')))]


# ------------------------------------------------------------------------------ the table
def write_doc(results: list, path: str, args) -> str:
    """Write the markdown table of ``results`` to ``path`` (see ``_zoo_render``)."""
    results = [r for r in results if r['family'].split('::')[0] in args.packages]
    return render_doc(results, path, args.ratio, TOL, args.packages,
                      {'det': args.det_size, 'seg': args.seg_size})


# ------------------------------------------------------------------------------ main
def _not_a_classifier(family: str, config: str):
    """Why an mmpretrain family is skipped, read from its config without building it (a worker
    process would import mmgfp, mmdet and mmpretrain for nothing)."""
    if not family.startswith('mmpretrain::'):
        return None
    try:
        return classify(_load(config))[1]  # imports mmengine and torch, not the packages
    except Exception:  # noqa: BLE001  (the worker reports it with its traceback)
        return None


def select(args) -> list:
    fams = families(args.packages)
    if args.family:
        known = dict(fams)
        unknown = [f for f in args.family if f not in known]
        if unknown:
            raise SystemExit(f'error: unknown --family {unknown}; see --list for the '
                             'families (pkg::folder)')
        fams = [(f, known[f]) for f in args.family]
    if args.index:
        fams = fams[slice(*args.index)]
    return fams


def main(argv=None) -> list:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], args)
        return []
    fams = select(args)
    if args.list:
        for i, (fam, cfg) in enumerate(families(args.packages)):
            print(f'{i:4d} {fam:40s} {cfg}' + (f'  [skip: {SKIP[fam]}]' if fam in SKIP
                                                else ''))
        return []
    for fam, cfg in ([] if args.stored_only else fams):
        path = result_path(args.results, fam)
        if osp.isfile(path) and not args.force:
            continue
        why = SKIP.get(fam) or _not_a_classifier(fam, cfg)
        if why:
            res = {'family': fam, 'config': cfg, 'status': 'skipped', 'reason': why}
            save(path, res)
        else:
            print(f'[zoo] {fam}: {cfg} ...', flush=True)
            res = run_subprocess(fam, cfg, path, args)
        print(f"[zoo]   {fam}: {res['status']} {res.get('max_rel_diff', '')} "
              f"{res.get('error', res.get('reason', ''))[:200]} ({res.get('seconds', 0)} s)",
              flush=True)
    results = [r for r in stored_results(args.results)
               if r['family'].split('::')[0] in args.packages]
    done = {r['family'] for r in results}
    results += [{'family': fam, 'config': cfg, 'status': 'not run',
                 'reason': f'no stored result: benchmarks/zoo.py --family {fam}'}
                for fam, cfg in families(args.packages) if fam not in done]
    write_doc(results, args.doc, args)
    print(f'[zoo] {len(results)} families stored; wrote {args.doc}')
    return results


if __name__ == '__main__':
    main()
