"""The markdown table of ``benchmarks/zoo.py``: one row per family, then every unprunable
group with its reason."""
import os
import os.path as osp
from collections import Counter

CHECKED = ('pass', 'NOT EQUIVALENT', 'no prunable group')  # rows with a check_model report


def _fmt(n) -> str:
    for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(n) >= scale:
            return f'{n / scale:.2f}{unit}'
    return f'{n:.0f}'


def _by_reason(unprunable: list) -> Counter:
    return Counter(r for g in unprunable for r in (g['reasons'][:1] or ['?']))


def _diff_cell(r: dict) -> str:
    """float32 difference, and the float64 rerun's where float32 exceeded the tolerance."""
    cell = f"{r['max_rel_diff']:.1e}"
    if r.get('max_rel_diff_float64') is not None:
        cell += f" (float64 {r['max_rel_diff_float64']:.1e})"
    elif r.get('float64_note'):
        cell += ' (float64 did not run)'
    return cell


def _note(r: dict) -> str:
    fixed = _by_reason(r['unprunable'])
    note = '; '.join(f'{n}x {reason}' for reason, n in fixed.most_common(2))
    if len(fixed) > 2:
        note += f'; +{len(fixed) - 2} more reasons'
    why = [r['adapted']] if r.get('adapted') else []  # the config changed to fit the size
    if r.get('max_rel_diff_float64') is not None:
        why.append('float32 rounding amplified' + (f" by {r['amplified_by']}"
                                                   if r.get('amplified_by') else ''))
    if r.get('float64_note'):
        why.append(r['float64_note'])
    if why:
        note = '; '.join(why) + '; ' + (note or '-')
    return note


def _row(r: dict) -> str:
    name = r['config'].split('/', 1)[-1] if r.get('config') else '-'
    if r['status'] in CHECKED:
        cells = [r.get('task') or '', 'x'.join(map(str, r['input_size'])),
                 f"{r['num_groups']} ({r['num_prunable_groups']})",
                 f"{_fmt(r['flops_after'])} / {_fmt(r['flops_before'])}",
                 f"{_fmt(r['params_after'])} / {_fmt(r['params_before'])}",
                 _diff_cell(r), '**pass**' if r['status'] == 'pass' else r['status'],
                 _note(r) or '-']
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


VERSIONS = {'mmdet': 'mmdet 3.3.0', 'mmpretrain': 'mmpretrain 1.2.0',
            'mmseg': 'mmsegmentation 1.2.2', 'mmpose': 'mmpose 1.3.2', 'mmyolo': 'mmyolo 0.6.0'}
# how each package's demo input size is chosen (``sizes``: the zoo's --det-size, --seg-size)
SIZE_RULES = {
    'mmdet': 'detectors at {det}x{det} (128, 256 or 320 where a detector needs larger maps: '
             'the Input column)',
    'mmpretrain': 'classifiers at the size of their test pipeline',
    'mmseg': 'segmentors at {seg}x{seg} (their preprocessor pads training batches to that '
             'size instead of the crop size)',
    'mmpose': 'pose models at the input size of their codec (256x192 for COCO top-down; '
              'bottom-up models at half of it)',
    'mmyolo': 'YOLO detectors at {det}x{det} (128 where a model needs larger maps: the Input '
              'column)',
}


def _head(status: Counter, ratio: float, tol: float, packages, sizes: dict) -> list:
    names = [VERSIONS.get(p, p) for p in packages]
    rules = ', '.join(SIZE_RULES[p].format(**sizes) for p in packages if p in SIZE_RULES)
    flags = '' if sorted(packages) == ['mmdet', 'mmpretrain'] else (
        ' --packages ' + ' '.join(packages) + ' --doc PAGE')
    return [
        '# The model zoo under `check_model`' + ('' if not flags else
                                                  ': ' + ', '.join(names)), '',
        'One config per model family of ' + ' and '.join(names) + ' '
        '(`<pkg>/.mim/configs/<family>`), built without weights; a random '
        f'{ratio:g} of every prunable channel group masked, the compact model exported, '
        'rebuilt from its config and compared with the masked one (`mmgfp.apis.checking.check.'
        f'check_model`, seed 0). {rules[0].upper() + rules[1:]}, '
        'one thread. Written by', '',
        f'    .venv/bin/python benchmarks/zoo.py --stored-only{flags}', '',
        'from the results stored in `benchmarks/results/zoo/` (one JSON per family). '
        f'**pass**: max relative difference <= {tol:g} and at least one prunable group. '
        'The difference is measured in float32; where it exceeds the tolerance, the masked '
        'and the compact model are compared again in float64 (same input, masks and replayed '
        'decisions) and the family passes only if that difference is within the tolerance: '
        'rounding a model amplifies (deformable sampling, local-maximum tests, feature-built '
        'graphs) vanishes in float64, a wrong compact model does not. Such rows show both '
        'numbers. '
        'Groups: all (prunable). FLOPs (multiply-accumulates per image) and parameters: after '
        '/ before pruning. The last column names the most common reasons a group stays '
        'unprunable; every unprunable group and its reason are listed under Details.', '',
        'Counts: ' + ', '.join(f'{n} {s}' for s, n in status.most_common()), '',
        '| Family | Config | Task | Input | Groups (prunable) | FLOPs after / before | '
        'Params after / before | Max rel. diff | Result | Unprunable groups / reason |',
        '|---|---|---|---|---|---|---|---|---|---|']


def render_doc(results: list, path: str, ratio: float, tol: float, packages, sizes: dict) -> str:
    """Write the table of ``results`` (stored family results of ``packages``) to ``path``;
    return its text. ``sizes``: the zoo's ``det`` and ``seg`` input sizes."""
    results = sorted(results, key=lambda r: r['family'])
    status = Counter(r['status'] for r in results)
    body = [_row(r) for r in results]
    details = ['', '## Details: unprunable groups by reason', '']
    for r in results:
        details += _details(r)
    text = '\n'.join(_head(status, ratio, tol, packages, sizes) + body + details) + '\n'
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return text
