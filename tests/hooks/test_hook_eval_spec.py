"""Evaluating a pruning checkpoint: groups of layers that run only in training are left out of
the masks; a group the evaluation runs must be in the spec."""
import logging
from types import SimpleNamespace

import pytest

from mmgfp.hooks.fisher_pruning_hook import _evaluated_part


def _groups(keys):
    gs = {k: SimpleNamespace(key=k) for k in keys}
    return SimpleNamespace(groups=gs, prunable=list(gs.values()),
                           layer_types={k: 'Conv2d' for k in keys})


def test_training_only_groups_are_left_out():
    spec = {'format': 'x', 'groups': {'backbone.conv': {}, 'aux.conv': {}}, 'layers': {}}
    out = _evaluated_part(spec, _groups(['backbone.conv']), logging.getLogger('t'))
    assert set(out['groups']) == {'backbone.conv'} and out['layers'] == {}
    assert set(spec['groups']) == {'backbone.conv', 'aux.conv'}  # not changed in place


def test_an_evaluated_group_missing_from_the_spec_is_an_error():
    spec = {'groups': {'backbone.conv': {}}, 'layers': {}}
    with pytest.raises(ValueError, match=r"\['head.conv'\] of the evaluated model"):
        _evaluated_part(spec, _groups(['backbone.conv', 'head.conv']), logging.getLogger('t'))


def test_a_group_of_an_evaluated_layer_stays_and_fails_later():
    """A spec group whose layer the evaluation does run but groups differently is kept, so
    masks_from_spec names it (never silently dropped)."""
    spec = {'groups': {'backbone.conv': {}, 'head.conv': {}}, 'layers': {}}
    groups = _groups(['backbone.conv'])
    groups.layer_types['head.conv'] = 'Conv2d'  # traced, but not a group key here
    assert set(_evaluated_part(spec, groups, logging.getLogger('t'))['groups']) == {
        'backbone.conv', 'head.conv'}
