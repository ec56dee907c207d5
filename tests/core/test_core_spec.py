"""Channel specs: round trips, clear errors on bad files, atomic saves, and a fuzz test."""
import copy
import json
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_toys import groups_of, inputs, make, masked_and_compact, outputs, random_masks
from core_toys import rel_diff
from mmgfp.core import ChannelMasker, SpecError, apply_spec, load_spec, make_spec
from mmgfp.core import masks_from_spec, save_spec
from mmgfp.core import spec as spec_mod
from mmgfp.core.spec import from_ranges, to_ranges


def _masked(name='residual', seed=0):
    model, x = make(name), inputs()
    gs = groups_of(model, x)
    masker = ChannelMasker(model, gs)
    random_masks(masker, seed)
    return model, x, gs, masker


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# -- ranges ----------------------------------------------------------------------------------
def test_ranges_examples():
    assert to_ranges([0, 1, 2, 3, 7]) == '0-3,7'
    assert to_ranges([5]) == '5'
    assert to_ranges([3, 1, 2, 9, 10]) == '1-3,9-10'
    assert from_ranges('0-3,7', 8, 'x') == [0, 1, 2, 3, 7]
    assert from_ranges(' 2 , 4-5 ', 6, 'x') == [2, 4, 5]


@settings(derandomize=True, database=None, deadline=None)
@given(st.sets(st.integers(0, 63), min_size=1))
def test_ranges_round_trip(idx):
    assert from_ranges(to_ranges(idx), 64, 'x') == sorted(idx)


@pytest.mark.parametrize('text,msg', [
    ('', 'non-empty range string'),
    ('  ', 'non-empty range string'),
    (None, 'non-empty range string'),
    (7, 'non-empty range string'),
    ('0-8', 'outside 0-7'),
    ('8', 'outside 0-7'),
    ('-1', "'-1' is not an index"),
    ('3-1', 'out of order'),
    ('4,2', 'out of order'),
    ('1,1', 'out of order'),
    ('0-3,2-5', 'out of order'),
    ('a', "'a' is not an index or a range a-b"),
    ('1-2-3', 'is not an index'),
    ('1,', "'' is not an index"),
    ('1.5', 'is not an index'),
])
def test_bad_ranges(text, msg):
    with pytest.raises(SpecError, match='^where: ') as e:
        from_ranges(text, 8, 'where')
    assert msg in str(e.value)


# -- round trip ------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['residual', 'depthwise', 'linear_head', 'concat', 'groupnorm'])
def test_round_trip(tmp_path, name):
    model, x, gs, masker = _masked(name)
    spec = make_spec(masker)
    assert spec['format'] == 'mmgfp.channel_spec' and spec['version'] == 1
    assert set(spec['groups']) == set(masker.keep)
    path = str(tmp_path / 'sub' / 'spec.json')
    save_spec(spec, path)
    assert [p.name for p in (tmp_path / 'sub').iterdir()] == ['spec.json']
    loaded = load_spec(path)
    assert loaded == json.loads(json.dumps(spec)) and loaded == spec
    assert load_spec(spec) is spec  # a dict is validated and returned
    other = ChannelMasker(model, gs)
    masks_from_spec(other, loaded)
    for k in masker.keep:
        assert torch.equal(other.keep[k], masker.keep[k])
    assert make_spec(other) == spec
    # the loaded spec makes the same compact model
    ref, compact, _ = masked_and_compact(model, x, masker)
    compact2 = apply_spec(copy.deepcopy(model), loaded)
    assert _shapes(compact2) == _shapes(compact)
    with torch.no_grad():
        for a, b in zip(outputs(compact2(x)), ref):
            assert rel_diff(a, b) < 1e-5


def test_spec_content_residual():
    model, x, gs, masker = _masked('residual')
    key = gs.producers['stem.0']
    keep = torch.ones(8, dtype=torch.bool)
    keep[[2, 5]] = False
    masker.set_keep(key, keep)
    masker.set_keep(gs.producers['b1.0'], torch.ones(6, dtype=torch.bool))
    spec = make_spec(masker)
    assert spec['groups'][key] == {'channels': 8, 'block': 1, 'kept': '0-1,3-4,6-7'}
    assert spec['groups']['b1.0'] == {'channels': 6, 'block': 1, 'kept': '0-5'}
    layers = spec['layers']
    assert layers['stem.0'] == {'type': 'Conv2d', 'out': '0-1,3-4,6-7', 'out_channels': 8}
    assert layers['short'] == {'type': 'Conv2d', 'out': '0-1,3-4,6-7', 'out_channels': 8,
                               'in': '0-1,3-4,6-7', 'in_channels': 8}
    assert layers['stem.1'] == {'type': 'BatchNorm2d', 'out': '0-1,3-4,6-7', 'out_channels': 8}
    assert layers['scale'] == {'type': 'Parameter', 'dim': 1, 'out': '0-1,3-4,6-7',
                               'out_channels': 8}
    assert 'b1.1' not in layers  # only what is pruned is listed
    assert set(layers) == {'stem.0', 'stem.1', 'b1.0', 'b2.0', 'b2.1', 'short', 'head', 'scale'}
    assert layers['b1.0'] == {'type': 'Conv2d', 'in': '0-1,3-4,6-7', 'in_channels': 8}


def test_spec_content_flatten_and_blocks():
    model, x, gs, masker = _masked('linear_head')
    keep = torch.ones(6, dtype=torch.bool)
    keep[1] = False
    masker.set_keep('b.0', keep)
    assert make_spec(masker)['layers']['fc2']['in'] == '0-15,32-95'
    model, x, gs, masker = _masked('depthwise')
    masker.set_keep('pw.0', torch.tensor([True, False, True]))
    spec = make_spec(masker)
    assert spec['groups']['pw.0'] == {'channels': 12, 'block': 4, 'kept': '0-3,8-11'}
    assert spec['layers']['g.0'] == {'type': 'Conv2d', 'out': '0-3,8-11', 'out_channels': 12}


# -- errors ----------------------------------------------------------------------------------
def _spec():
    model, x, gs, masker = _masked('residual')
    return model, gs, masker, make_spec(masker)


def test_truncated_and_corrupted_files(tmp_path):
    _, _, _, spec = _spec()
    text = json.dumps(spec)
    for i, junk in enumerate([text[:len(text) // 2], text[:-1], '', b'\xff\xfe\x00\x01garbage']):
        p = tmp_path / f'{i}.json'
        if isinstance(junk, bytes):
            p.write_bytes(junk)
        else:
            p.write_text(junk)
        with pytest.raises(SpecError, match='is not valid JSON'):
            load_spec(str(p))


@pytest.mark.parametrize('mutate,msg', [
    (lambda s: s.update(version=2), 'version 2 is not supported'),
    (lambda s: s.pop('version'), 'version None is not supported'),
    (lambda s: s.update(format='other'), 'not an mmgfp channel spec'),
    (lambda s: s.pop('layers'), 'no "layers" mapping'),
    (lambda s: s.update(groups=[]), 'no "groups" mapping'),
    (lambda s: s['groups']['b2.0'].update(channels=0), 'positive integer "channels"'),
    (lambda s: s['groups']['b2.0'].update(block='1'), 'positive integer "channels" and "block"'),
    (lambda s: s['groups']['b2.0'].update(kept=''), "group 'b2.0': kept channels must be a "
     'non-empty'),
    (lambda s: s['groups']['b2.0'].update(kept='0-8'), "group 'b2.0': range '0-8' is out of "
     'order or outside 0-7'),
    (lambda s: s['groups']['b2.0'].update(kept='x'), "group 'b2.0': 'x' is not an index"),
    (lambda s: s['layers']['head'].pop('type'), "layer 'head' needs a \"type\""),
    (lambda s: s['layers']['head'].pop('in_channels'), 'needs a positive "in_channels"'),
    (lambda s: s['layers']['head'].update(**{'in': '0-99'}), 'outside 0-7'),
    (lambda s: s['layers']['head'].update(**{'in': ''}), 'non-empty range string'),
])
def test_malformed_spec_messages(tmp_path, mutate, msg):
    _, _, _, spec = _spec()
    mutate(spec)
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert msg in str(e.value)
    p = tmp_path / 's.json'
    p.write_text(json.dumps(spec))
    with pytest.raises(SpecError, match='.') as e2:
        load_spec(str(p))
    assert str(e2.value) == str(e.value)


def test_not_a_dict(tmp_path):
    p = tmp_path / 's.json'
    p.write_text('[1, 2]')
    with pytest.raises(SpecError, match='not an mmgfp channel spec'):
        load_spec(str(p))


def test_spec_for_another_model():
    model, gs, masker, spec = _spec()
    cases = [
        (lambda s: s['groups']['b2.0'].update(channels=9, kept='0-8'),
         "group 'b2.0': spec has 9 channels in blocks of 1, the model 8 in blocks of 1"),
        (lambda s: s['groups'].update(nope={'channels': 2, 'block': 1, 'kept': '0'}),
         "groups this model does not have: ['nope']"),
    ]
    for mutate, msg in cases:
        s = copy.deepcopy(spec)
        mutate(s)
        with pytest.raises(SpecError) as e:
            masks_from_spec(ChannelMasker(model, gs), s)
        assert msg in str(e.value)


def test_masks_from_spec_needs_whole_blocks():
    model, x, gs, masker = _masked('depthwise')
    spec = make_spec(masker)
    spec['groups']['pw.0']['kept'] = '0-5'
    with pytest.raises(SpecError, match="group 'pw.0': kept channels do not form whole blocks"):
        masks_from_spec(ChannelMasker(model, gs), spec)


@pytest.mark.parametrize('mutate,msg', [
    (lambda s: s['layers'].update(nope={'type': 'Conv2d', 'out': '0', 'out_channels': 1}),
     "layer 'nope', which this model does not have"),
    (lambda s: s['layers']['head'].update(type='Linear'),
     "layer 'head' is a Conv2d here but a Linear in the spec"),
    (lambda s: s['layers']['short'].update(out_channels=9),
     "layer 'short' has 8 output channels but the spec expects 9"),
    (lambda s: s['layers']['head'].update(in_channels=16, **{'in': '0-9'}),
     "layer 'head' has 8 input channels but the spec expects 16"),
    (lambda s: s['layers']['scale'].update(dim=0), "parameter 'scale' of shape (1, 8, 1, 1) "
     'does not fit the spec'),
    (lambda s: s['layers']['scale'].pop('out'), "parameter 'scale' needs the \"out\" channels"),
    (lambda s: s['layers'].update(**{'b1': {'type': 'Sequential', 'out': '0', 'out_channels': 6}}),
     "layer 'b1' of type Sequential cannot be sliced"),
    (lambda s: s['layers'].update(**{'b1.2.weight': {'type': 'Parameter', 'dim': 0, 'out': '0',
                                                     'out_channels': 1}}),
     "parameter 'b1.2.weight', which this model does not have"),
])
def test_apply_spec_errors_leave_the_model_untouched(mutate, msg):
    model, gs, masker, spec = _spec()
    before = _shapes(model)
    mutate(spec)
    # insert the bad entry last so that good entries come before it in the plan
    spec['layers'] = dict(sorted(spec['layers'].items(), key=lambda kv: kv[0] in
                                 ('head', 'short', 'scale', 'nope', 'b1', 'b1.2.weight')))
    with pytest.raises(SpecError) as e:
        apply_spec(model, spec)
    assert msg in str(e.value)
    assert _shapes(model) == before


def test_entries_without_indices_slice_nothing():
    model, gs, masker, spec = _spec()
    spec['layers'] = {'stem.1': {'type': 'BatchNorm2d'}, 'head': {'type': 'Conv2d'}}
    before = _shapes(model)
    apply_spec(model, spec)
    assert _shapes(model) == before
    model, x, gs, masker = _masked('depthwise')
    apply_spec(model, {'format': 'mmgfp.channel_spec', 'version': 1, 'groups': {},
                       'layers': {'dw.0': {'type': 'Conv2d'}, 'g.1': {'type': 'BatchNorm2d'}}})


# -- saving --------------------------------------------------------------------------------
def test_save_spec_is_atomic(tmp_path, monkeypatch):
    _, _, _, spec = _spec()
    path = tmp_path / 'spec.json'
    save_spec(spec, str(path))
    good = path.read_text()

    def broken_dump(obj, f, **kw):
        f.write('{"format": "mmgfp.chan')  # a crash half-way through writing
        raise OSError('disk full')

    monkeypatch.setattr(spec_mod.json, 'dump', broken_dump)
    other = copy.deepcopy(spec)
    other['groups']['b2.0']['kept'] = '0'
    with pytest.raises(OSError, match='disk full'):
        save_spec(other, str(path))
    assert path.read_text() == good
    assert sorted(os.listdir(tmp_path)) == ['spec.json']  # no temporary file left behind
    monkeypatch.undo()
    assert load_spec(str(path)) == spec


def test_save_spec_refuses_invalid_specs(tmp_path):
    _, _, _, spec = _spec()
    path = tmp_path / 'spec.json'
    save_spec(spec, str(path))
    bad = copy.deepcopy(spec)
    bad['groups']['b2.0']['kept'] = ''
    with pytest.raises(SpecError):
        save_spec(bad, str(path))
    assert load_spec(str(path)) == spec
    assert sorted(os.listdir(tmp_path)) == ['spec.json']


def test_save_spec_overwrites(tmp_path):
    model, gs, masker, spec = _spec()
    path = str(tmp_path / 'spec.json')
    save_spec(spec, path)
    masker.set_keep('b1.0', torch.tensor([True, False, False, False, False, True]))
    spec2 = make_spec(masker)
    save_spec(spec2, path)
    assert load_spec(path) == spec2 != spec


# -- fuzz --------------------------------------------------------------------------------------
_JUNK = [None, -1, 0, 1, 2, 3, 7, 8, 100, 1.5, True, False, '', ' ', 'abc', '0', '0-3', '1,0',
         '0-', '-', '0-99', '5-2', '0,,1', 'Conv2d', 'BatchNorm2d', 'Linear', 'Parameter',
         'mmgfp.channel_spec', [], {}, [1], {'type': 'Conv2d'}]


def _paths(obj, prefix=()):
    """All (path, value) pairs of a JSON tree, containers included."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k, ))


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def _perturb_ranges(text, draw):
    """Small edits of a range string that often still parse."""
    op = draw(st.sampled_from(['drop', 'dup', 'digit', 'append', 'shift']))
    if op == 'drop' and text:
        i = draw(st.integers(0, len(text) - 1))
        return text[:i] + text[i + 1:]
    if op == 'dup' and text:
        i = draw(st.integers(0, len(text) - 1))
        return text[:i] + text[i] + text[i:]
    if op == 'digit':
        digits = [i for i, c in enumerate(text) if c.isdigit()]
        if digits:
            i = draw(st.sampled_from(digits))
            return text[:i] + str(draw(st.integers(0, 9))) + text[i + 1:]
    if op == 'append':
        return text + draw(st.sampled_from([',9', ',11', ',0', '-9', ',', '-']))
    return ','.join(str(int(p) + 1) if p.isdigit() else p for p in text.split(','))


@st.composite
def mutated_specs(draw, spec):
    spec = copy.deepcopy(spec)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(spec) if p]
        path = draw(st.sampled_from(paths))
        parent, key = _get(spec, path[:-1]), path[-1]
        action = draw(st.sampled_from(['delete', 'junk', 'perturb', 'perturb', 'add', 'rename']))
        if action == 'delete':
            del parent[key]
        elif action == 'junk':
            parent[key] = draw(st.sampled_from(_JUNK))
        elif action == 'perturb' and isinstance(parent[key], str):
            parent[key] = _perturb_ranges(parent[key], draw)
        elif action == 'perturb' and isinstance(parent[key], int):
            parent[key] = parent[key] + draw(st.sampled_from([-2, -1, 1, 4]))
        elif action == 'add' and isinstance(parent[key], dict):
            parent[key][draw(st.sampled_from(['in', 'out', 'in_channels', 'out_channels', 'dim',
                                              'type', 'x', 'stem.0', 'scale']))] = \
                draw(st.sampled_from(_JUNK))
        elif action == 'rename':
            new = draw(st.sampled_from(['in', 'out', 'stem.0', 'b1.0', 'x.y', 'scale', 'head']))
            if new not in parent:
                parent[new] = parent.pop(key)
    text = json.dumps(spec)
    if draw(st.integers(0, 9)) == 0:
        text = text[:draw(st.integers(0, len(text)))]
    return text


_FUZZ_BASE = {}


def _fuzz_base(name):
    if name not in _FUZZ_BASE:
        model, x, gs, masker = _masked(name, seed=5)
        ref, _, spec = masked_and_compact(model, x, masker)
        _FUZZ_BASE[name] = (model, x, gs, spec)
    return _FUZZ_BASE[name]


def _fuzz_one(name, text, tmp_path):
    model, x, gs, spec = _fuzz_base(name)
    path = tmp_path / f'fuzz-{name}.json'
    path.write_text(text)
    try:
        loaded = load_spec(str(path))
    except SpecError:
        return 'rejected'
    # 1) masks: either SpecError, or masks whose spec makes an equivalent compact model
    masker = ChannelMasker(model, gs)
    try:
        masks_from_spec(masker, loaded)
    except SpecError:
        pass
    else:
        ref, compact, _ = masked_and_compact(model, x, masker)
        with torch.no_grad():
            for a, b in zip(outputs(compact(x)), ref):
                assert rel_diff(a, b) < 1e-5
    # 2) surgery: either SpecError with the model untouched, or a sliced model
    target = copy.deepcopy(model)
    before = _shapes(target)
    try:
        apply_spec(target, loaded)
    except SpecError:
        assert _shapes(target) == before
        return 'apply rejected'
    if loaded['layers'] == spec['layers']:
        # the mutation only touched the groups: the compact model is the original one's
        masker = ChannelMasker(model, gs)
        masks_from_spec(masker, spec)
        ref, _, _ = masked_and_compact(model, x, masker)
        with torch.no_grad():
            for a, b in zip(outputs(target(x)), ref):
                assert rel_diff(a, b) < 1e-5
        return 'equivalent'
    return 'applied'


@pytest.mark.parametrize('name', ['residual', 'depthwise', 'linear_head'])
def test_fuzz_mutated_specs(name, tmp_path):
    """A mutated spec loads and applies to an equivalent model, or raises SpecError.

    Never another exception type (KeyError, TypeError, AttributeError, ...), and a rejected
    ``apply_spec`` leaves the model untouched.
    """
    _, _, _, spec = _fuzz_base(name)
    outcomes = []

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        text = data.draw(mutated_specs(spec))
        outcomes.append(_fuzz_one(name, text, tmp_path))

    run()
    assert 'rejected' in outcomes  # the fuzz reached the checks
