"""Loading a compact state dict keeps torch's per-module versions.

MMPose's DEKR head converts checkpoints of its old version in a load pre-hook (it moves the root
heatmap channel from first to last). A state dict rebuilt as a plain ``dict`` has no
``_metadata``, so the head took mmgfp's own weights for old ones and rotated them: the zoo saw
DEKR's heatmaps differ by 1.4 between the masked and the compact model.
"""
import torch
import torch.nn as nn

from mmgfp.apis.deploying.deploy import load_strict


class Versioned(nn.Module):
    """A module that flips its weight when it loads a state dict of version < 2."""
    _version = 2

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.arange(4.))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        key = prefix + 'weight'
        if (local_metadata.get('version') or 0) < 2 and key in state_dict:
            state_dict[key] = state_dict[key].flip(0)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def test_a_plain_dict_loads_as_this_code_s_version():
    src, dst = Versioned(), Versioned()
    dst.weight.data.zero_()
    load_strict(dst, dict(src.state_dict()), 'the test state dict')  # no _metadata
    assert torch.equal(dst.weight, src.weight)


def test_given_versions_are_kept():
    src, dst = Versioned(), Versioned()
    old = src.state_dict()
    old._metadata[''] = {'version': 1}  # a real old checkpoint is still converted
    load_strict(dst, old, 'the test state dict')
    assert torch.equal(dst.weight, src.weight.flip(0))


def test_dekr_head_keeps_its_heatmap_channels():
    import pytest
    pytest.importorskip('mmpose')
    from mmengine.registry import DefaultScope
    from mmpose.models.heads import DEKRHead
    with DefaultScope.overwrite_default_scope('mmpose'):  # its losses build in mmpose's scope
        src, dst = (DEKRHead(in_channels=8, num_keypoints=3, num_heatmap_filters=4,
                             num_displacement_filters_per_keypoint=2) for _ in range(2))
    load_strict(dst, dict(src.state_dict()), 'the DEKR head')
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
