"""The model zoo: ``check_model`` on one config of every model family mmdet and mmpretrain ship.

Run from the repository root, in parts if the machine is small (results are kept per family)::

    .venv/bin/python benchmarks/zoo.py                       # every family not stored yet
    .venv/bin/python benchmarks/zoo.py --family mmdet::yolox mmpretrain::vgg
    .venv/bin/python benchmarks/zoo.py --index 0:40          # the first 40 families
    .venv/bin/python benchmarks/zoo.py --stored-only         # only write docs/zoo.md
    .venv/bin/python benchmarks/zoo.py --list                # families and the config picked

A family is a folder of ``<pkg>/.mim/configs``; its representative config is the first model of
its ``metafile.yml`` whose config exists (else the shortest config name), unless ``PICK`` names
one. Each family runs in its own process (one thread, ``--timeout`` seconds) through
``mmgfp.apis.check.check_model`` at ``--ratio`` 0.5: detectors at ``--det-size`` (64x64),
classifiers at the size of their own test pipeline. The result is stored as
``RESULTS/<pkg>__<family>.json`` and reused unless ``--force``; ``docs/zoo.md`` is written from
every stored result. Families that are not detection, instance segmentation or classification
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
from collections import Counter

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = osp.join(ROOT, 'benchmarks', 'results', 'zoo')
DOC = osp.join(ROOT, 'docs', 'zoo.md')
PACKAGES = ('mmdet', 'mmpretrain')
TOL = 1e-4
# Why a family is NOT EQUIVALENT, measured by rerunning its check (same seed, ratio and size)
# with the masked and the compact model in float64, and by locating the float32 difference.
# Shown in the table; the verdict itself stays as measured.
EXPLAINED = {
    'mmdet::dcn': 'float64: 6.5e-16 -> float32 rounding amplified by deformable sampling '
                  '(offsets move bilinear taps; diff spread over all outputs, 0 at ratio 0)',
    'mmdet::solo': 'float64: 0.0 -> a discrete flip: float32 diff is 3 of 463k cls scores '
                   "(the head's local-maximum test max_pool2d(x) == x), all else <= 8e-7",
    'mmpretrain::vig': 'float64: 7.8e-16 -> float32 rounding amplified through 12 blocks of '
                       'feature-built kNN graphs (diff spread, no logit off by > 1e-3 of max)',
}
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
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--family', nargs='+', help='families to run, e.g. mmdet::yolox '
                   '(default: all)')
    p.add_argument('--index', help='a slice a:b of the family list (after --family)')
    p.add_argument('--ratio', type=float, default=0.5)
    p.add_argument('--det-size', type=int, default=64, help='detector input size (square)')
    p.add_argument('--timeout', type=int, default=300, help='seconds per family')
    p.add_argument('--results', default=RESULTS, help='folder of the stored results')
    p.add_argument('--doc', default=DOC, help='markdown table to write')
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
    return args


# ------------------------------------------------------------------------------ families
def config_root(pkg: str) -> str:
    from importlib.util import find_spec
    spec = find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f'error: {pkg} is not installed')
    return osp.join(list(spec.submodule_search_locations)[0], '.mim', 'configs')


def _metafile_configs(folder: str) -> list:
    path = osp.join(folder, 'metafile.yml')
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


def families() -> list:
    """``[(family, config), ...]`` of both packages, ``family`` as ``pkg::folder``."""
    out = []
    for pkg in PACKAGES:
        root = config_root(pkg)
        for name in sorted(os.listdir(root)):
            folder = osp.join(root, name)
            if name in NOT_FAMILIES or not osp.isdir(folder):
                continue
            fam = f'{pkg}::{name}'
            cfg = PICK.get(fam) or pick_config(folder)
            if cfg is not None:
                out.append((fam, f'{pkg}::{name}/{cfg}'))
    return out


# ------------------------------------------------------------------------------ one family
def _load(config: str):
    from mmgfp.apis.check import load_config
    cfg = load_config(config)
    if not cfg.get('default_scope'):  # some configs leave the scope to the tool that runs them
        cfg.default_scope = config.split('::')[0]
    return cfg


def classify(cfg) -> tuple:
    """``(task, None)``, or ``(None, why the family is skipped)``, from the config's model."""
    mtype = str(cfg.model.get('type', ''))
    if cfg.get('default_scope') == 'mmpretrain':
        if mtype.split('.')[-1] == 'ImageClassifier' and cfg.model.get('head') is None:
            return None, 'a headless backbone config (no classification head to train)'
        if mtype.split('.')[-1] == 'ImageClassifier':
            return 'classification', None
        return None, (f'model type {mtype} is not an image classifier (self-supervised, '
                      'retrieval or multimodal)')
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


def _unprunable(groups: list) -> list:
    return [{'key': g['key'], 'channels': g['channels'], 'reasons': g['reasons']}
            for g in groups if not g['prunable']]


def run_family(family: str, config: str, args) -> dict:
    """Check one family's config in this process (called in the worker)."""
    import torch
    torch.set_num_threads(1)
    import mmgfp  # noqa: F401
    from mmgfp.apis.check import check_model
    from mmgfp.apis.inputs import default_input_size, is_classifier_config
    res = {'family': family, 'config': config}
    cfg = _load(config)
    res['task'], why = classify(cfg)
    if why:
        return dict(res, status='skipped', reason=why)
    size = default_input_size(cfg) if is_classifier_config(cfg) else (args.det_size,) * 2
    res['input_size'] = list(size)
    while True:
        try:
            rep = check_model(cfg, args.ratio, 0, size, TOL)
            break
        except (RuntimeError, ValueError) as e:
            if res['task'] == 'classification' or size[0] >= 256:
                raise
            # some detectors need larger maps (deformable convs on a 2x2 top level, DINO's
            # 900 queries chosen among the tokens): retry larger
            res['note'] = f'{size[0]}x{size[1]} failed ({type(e).__name__}: {str(e)[:80]})'
            size = (max(128, 2 * size[0]), ) * 2
            res['input_size'] = list(size)
    keys = ('num_groups', 'num_prunable_groups', 'flops_before', 'flops_after',
            'params_before', 'params_after', 'max_rel_diff', 'equivalent', 'original_class')
    res.update({k: rep[k] for k in keys})
    res['unprunable'] = _unprunable(rep['groups'])
    ok = rep['equivalent'] and rep['max_rel_diff'] <= TOL and rep['num_prunable_groups'] > 0
    res['status'] = 'pass' if ok else ('no prunable group' if rep['equivalent'] else
                                       'NOT EQUIVALENT')
    return res


# Failures that say the family cannot be built or trained here, not that mmgfp failed.
ENVIRONMENT = (
    ('URLError', 'downloads weights while it is built (no network here): '),
    ('implementation for device cpu not found', 'uses an mmcv op without a CPU kernel: '),
    ('is not installed', 'needs an optional package: '),
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
    config = dict(families()).get(family)
    t0 = time.perf_counter()
    try:
        res = run_family(family, config, args)
    except Exception as e:  # noqa: BLE001  (stored and shown in the table)
        import traceback
        tb = traceback.extract_tb(e.__traceback__)
        where = [f'{osp.relpath(f.filename, ROOT) if f.filename.startswith(ROOT) else f.filename}'
                 f':{f.lineno} {f.name}' for f in tb[-4:]]
        res = {'family': family, 'config': config, 'status': 'error',
               'error': f'{type(e).__name__}: {e}'[:600], 'where': where,
               'in_mmgfp': any('/mmgfp/' in f.filename for f in tb[-3:])}
        why = _environment(e)
        if why:
            res.update(status='skipped', reason=why)
    res['seconds'] = round(time.perf_counter() - t0, 1)
    save(out, res)


def run_subprocess(family: str, config: str, path: str, args) -> dict:
    """Run one family in a child process with a time limit; store and return its result."""
    cmd = [sys.executable, osp.abspath(__file__), '--worker', family, path,
           '--ratio', str(args.ratio), '--det-size', str(args.det_size)]
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
    return osp.join(results, family.replace('::', '__') + '.json')


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
def _fmt(n) -> str:
    for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(n) >= scale:
            return f'{n / scale:.2f}{unit}'
    return f'{n:.0f}'


def _by_reason(unprunable: list) -> Counter:
    return Counter(r for g in unprunable for r in (g['reasons'][:1] or ['?']))


def _row(r: dict) -> str:
    name = r['config'].split('/', 1)[-1] if r.get('config') else '-'
    if r['status'] in ('pass', 'NOT EQUIVALENT', 'no prunable group'):
        fixed = _by_reason(r['unprunable'])
        note = '; '.join(f'{n}x {reason}' for reason, n in fixed.most_common(2))
        if len(fixed) > 2:
            note += f'; +{len(fixed) - 2} more reasons'
        if r['status'] == 'NOT EQUIVALENT' and r['family'] in EXPLAINED:
            note = f"why: {EXPLAINED[r['family']]}; " + (note or '-')
        cells = [r.get('task') or '', 'x'.join(map(str, r['input_size'])),
                 f"{r['num_groups']} ({r['num_prunable_groups']})",
                 f"{_fmt(r['flops_after'])} / {_fmt(r['flops_before'])}",
                 f"{_fmt(r['params_after'])} / {_fmt(r['params_before'])}",
                 f"{r['max_rel_diff']:.1e}", '**pass**' if r['status'] == 'pass' else
                 r['status'], note or '-']
    else:
        why = r.get('reason') or r.get('error', '')
        cells = [r.get('task') or '', '', '', '', '', '', r['status'], why]
    cells = [' '.join(str(c).replace('|', '/').split()) for c in cells]
    return '| ' + ' | '.join([r['family'], f'`{name}`'] + cells) + ' |'


def _details(r: dict) -> list:
    if not r.get('unprunable') and not r.get('where'):
        return []
    lines = [f"### {r['family']} (`{r['config'].split('/', 1)[-1]}`)", '']
    if r.get('where'):
        lines += [f"{r['error']}", '', 'at ' + ' <- '.join(reversed(r['where'])), '']
    groups = {}
    for g in r.get('unprunable', []):
        groups.setdefault(g['reasons'][0] if g['reasons'] else '?', []).append(
            f"`{g['key']}` ({g['channels']})")
    for reason, keys in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f'- {reason}: {len(keys)} group(s): ' + ', '.join(keys))
    return lines + ['']


def write_doc(results: list, path: str, args) -> str:
    results = sorted(results, key=lambda r: r['family'])
    status = Counter(r['status'] for r in results)
    head = [
        '# The model zoo under `check_model`', '',
        'One config per model family of mmdet 3.3.0 and mmpretrain 1.2.0 '
        '(`<pkg>/.mim/configs/<family>`), built without weights; a random '
        f'{args.ratio:g} of every prunable channel group masked, the compact model exported, '
        'rebuilt from its config and compared with the masked one (`mmgfp.apis.check.'
        'check_model`, seed 0). Detectors at '
        f'{args.det_size}x{args.det_size} (128, 256 or 320 where a detector needs larger maps: '
        'the Input column), classifiers at the size of their test pipeline, '
        'one thread. Written by', '',
        '    .venv/bin/python benchmarks/zoo.py --stored-only', '',
        f'from the results stored in `benchmarks/results/zoo/` (one JSON per family). '
        f"**pass**: max relative difference <= {TOL:g} and at least one prunable group. "
        'Groups: all (prunable). FLOPs (multiply-accumulates per image) and parameters: after '
        '/ before pruning. The last column names the most common reasons a group stays '
        'unprunable; every unprunable group and its reason are listed under Details.', '',
        'Counts: ' + ', '.join(f'{n} {s}' for s, n in status.most_common()), '',
        '| Family | Config | Task | Input | Groups (prunable) | FLOPs after / before | '
        'Params after / before | Max rel. diff | Result | Unprunable groups / reason |',
        '|---|---|---|---|---|---|---|---|---|---|']
    body = [_row(r) for r in results]
    details = ['', '## Details: unprunable groups by reason', '']
    for r in results:
        details += _details(r)
    text = '\n'.join(head + body + details) + '\n'
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return text


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
    fams = families()
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
        for i, (fam, cfg) in enumerate(families()):
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
    results = stored_results(args.results)
    done = {r['family'] for r in results}
    results += [{'family': fam, 'config': cfg, 'status': 'not run',
                 'reason': f'no stored result: benchmarks/zoo.py --family {fam}'}
                for fam, cfg in families() if fam not in done]
    write_doc(results, args.doc, args)
    print(f'[zoo] {len(results)} families stored; wrote {args.doc}')
    return results


if __name__ == '__main__':
    main()
