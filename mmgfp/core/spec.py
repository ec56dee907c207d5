"""The channel spec: which channels every pruned group and layer keeps, as readable JSON.

::

    {"format": "mmgfp.channel_spec", "version": 1,
     "groups": {"backbone.layer1.0.conv1": {"channels": 64, "block": 1, "kept": "0-12,14-63"}},
     "layers": {"backbone.layer1.0.conv1": {"type": "Conv2d", "out": "0-12,14-63",
                                             "out_channels": 64}, ...}}

``groups`` lets pruning resume from a spec; ``layers`` is all :func:`apply_spec` needs to make a
compact model, without tracing. Kept indices are written as ranges (``"0-12,14-63"``).
"""
import json
import os
import tempfile
from typing import Callable, Dict, List, Optional

import torch

from .grouping import GroupSet, LayerChannels
from .masks import ChannelMasker

FORMAT = 'mmgfp.channel_spec'
VERSION = 1


class SpecError(ValueError):
    """A channel spec that is malformed or does not fit the model."""


def to_ranges(idx) -> str:
    idx = sorted(int(i) for i in idx)
    parts, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            parts.append(str(start) if start == v else f'{start}-{v}')
            start = None
    return ','.join(parts)


def from_ranges(text: str, limit: int, where: str) -> List[int]:
    """Parse ``"0-3,7"``; every index must lie in ``[0, limit)``, sorted, no repeats."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f'{where}: kept channels must be a non-empty range string like '
                        f'"0-3,7", got {text!r}')
    out: List[int] = []
    for part in text.split(','):
        lo, sep, hi = part.strip().partition('-')
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise SpecError(f'{where}: {part!r} is not an index or a range a-b') from None
        if a > b or a < 0 or b >= limit or (out and a <= out[-1]):
            raise SpecError(f'{where}: range {part!r} is out of order or outside 0-{limit - 1}')
        out.extend(range(a, b + 1))
    return out


def _layer_indices(lc: LayerChannels, masker: ChannelMasker) -> torch.Tensor:
    parts, off = [], 0
    for key, n in lc.segs:
        parts.append(masker.kept_channels(key) + off)
        off += n
    ch = torch.cat(parts)
    return (ch[:, None] * lc.inner + torch.arange(lc.inner)).flatten()


def make_spec(masker: ChannelMasker) -> Dict:
    """The spec of the masker's current masks (only what is actually pruned is listed)."""
    gs: GroupSet = masker.groups
    pruned = {k for k, v in masker.keep.items() if not bool(v.all())}
    groups = {k: {'channels': gs.groups[k].channels, 'block': gs.groups[k].block,
                  'kept': to_ranges(masker.kept_channels(k).tolist())}
              for k in masker.keep}
    layers: Dict[str, Dict] = {}

    def entry(name):
        return layers.setdefault(name, {'type': gs.layer_types.get(name, '?')})

    for name, key in gs.producers.items():
        if key in pruned:
            e = entry(name)
            e['out'] = to_ranges(masker.kept_channels(key).tolist())
            e['out_channels'] = gs.groups[key].channels
    for table, field in ((gs.consumers, 'in'), (gs.passthrough, 'out')):
        for name, lc in table.items():
            if any(k in pruned for k, _ in lc.segs):
                e = entry(name)
                e[field] = to_ranges(_layer_indices(lc, masker).tolist())
                e[f'{field}_channels'] = lc.size
    for name, (lc, dim) in gs.params.items():
        if any(k in pruned for k, _ in lc.segs):
            e = entry(name)
            e.update(dim=dim, out=to_ranges(_layer_indices(lc, masker).tolist()),
                     out_channels=lc.size)
    return {'format': FORMAT, 'version': VERSION, 'groups': groups, 'layers': layers}


def masks_from_spec(masker: ChannelMasker, spec: Dict) -> None:
    """Set the masker's masks from a spec's ``groups`` (to continue pruning or fine-tune)."""
    validate(spec)
    unknown = sorted(set(spec['groups']) - set(masker.keep))
    if unknown:
        raise SpecError(f'spec names groups this model does not have: {unknown[:5]}; was it '
                        'made for another config?')
    for key, g in spec['groups'].items():
        group = masker.groups.groups[key]
        if g['channels'] != group.channels or g['block'] != group.block:
            raise SpecError(f'group {key!r}: spec has {g["channels"]} channels in blocks of '
                            f'{g["block"]}, the model {group.channels} in blocks of '
                            f'{group.block}')
        kept = from_ranges(g['kept'], group.channels, f'group {key!r}')
        units = sorted({c // group.block for c in kept})
        if len(units) * group.block != len(kept):
            raise SpecError(f'group {key!r}: kept channels do not form whole blocks')
        keep = torch.zeros(group.units, dtype=torch.bool)
        keep[units] = True
        masker.set_keep(key, keep)


def validate(spec) -> Dict:
    """Check the spec's structure; raise :class:`SpecError` naming what is wrong."""
    if not isinstance(spec, dict) or spec.get('format') != FORMAT:
        raise SpecError(f'not an mmgfp channel spec (expected "format": "{FORMAT}")')
    if spec.get('version') != VERSION:
        raise SpecError(f'channel spec version {spec.get("version")!r} is not supported '
                        f'(this mmgfp reads version {VERSION})')
    for field in ('groups', 'layers'):
        if not isinstance(spec.get(field), dict):
            raise SpecError(f'channel spec has no "{field}" mapping')
    for key, g in spec['groups'].items():
        if not isinstance(g, dict) or not all(
                isinstance(g.get(f), int) and g.get(f) > 0 for f in ('channels', 'block')):
            raise SpecError(f'group {key!r} needs positive integer "channels" and "block"')
        from_ranges(g.get('kept'), g['channels'], f'group {key!r}')
    for name, e in spec['layers'].items():
        if not isinstance(e, dict) or not isinstance(e.get('type'), str):
            raise SpecError(f'layer {name!r} needs a "type"')
        for field in ('in', 'out'):
            if field in e:
                size = e.get(f'{field}_channels')
                if not isinstance(size, int) or size <= 0:
                    raise SpecError(f'layer {name!r} needs a positive "{field}_channels"')
                from_ranges(e[field], size, f'layer {name!r} "{field}"')
    return spec


def atomic_write(path: str, write: Callable[[str], object]) -> None:
    """Let ``write(tmp)`` fill a temporary file beside ``path``, then rename it to ``path``.

    A crash or an error while writing never leaves a half-written ``path`` nor replaces a
    complete earlier one; the temporary file is removed on errors.
    """
    dirname = os.path.dirname(os.path.abspath(path))
    os.makedirs(dirname, exist_ok=True)
    # 'tmp_' rather than a leading dot: torch.save refuses some dot-names
    fd, tmp = tempfile.mkstemp(dir=dirname, prefix='tmp_', suffix='_' + os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_spec(spec: Dict, path: str) -> None:
    """Write the spec as JSON atomically (a crash never leaves a half-written file)."""
    validate(spec)

    def dump(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(spec, f, indent=1)

    atomic_write(path, dump)


def load_spec(path_or_spec) -> Dict:
    """Read and validate a spec from a JSON file path, or validate a dict."""
    if isinstance(path_or_spec, dict):
        return validate(path_or_spec)
    try:
        with open(path_or_spec) as f:
            spec = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f'{path_or_spec} is not valid JSON (truncated or corrupted?): {e}') \
            from None
    return validate(spec)


def is_empty(spec: Optional[Dict]) -> bool:
    return not spec or not spec.get('layers')
