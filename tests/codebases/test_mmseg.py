"""The MMSegmentation codebase: input sizes from configs, demo batches, configs that download
weights while they are built, and check_model on a segmentor with an auxiliary head."""
import os.path as osp

import pytest

pytest.importorskip('mmseg')
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

import mmgfp  # noqa: E402,F401
from mmgfp.apis.checking.check import build_model, check_model, load_config  # noqa: E402
from mmgfp.apis.inputs import default_input_size, demo_batch, loss_forward  # noqa: E402
from mmgfp.codebases import codebase_of  # noqa: E402
from mmgfp.codebases.mmseg import label_edges, random_label_maps  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DIGITS = osp.join(ROOT, 'configs', 'digits', 'fcn_r18-d8_digits.py')


def test_input_size_is_the_crop_size_as_h_w():
    cfg = Config(dict(default_scope='mmseg', model=dict(
        type='EncoderDecoder', data_preprocessor=dict(size=(512, 1024)))))
    assert codebase_of(cfg).title == 'MMSegmentation'
    assert default_input_size(cfg) == (512, 1024)
    assert default_input_size(Config(dict(default_scope='mmseg', crop_size=(96, 64),
                                          model=dict(type='EncoderDecoder')))) == (96, 64)
    assert default_input_size(Config(dict(default_scope='mmseg',
                                          model=dict(type='EncoderDecoder')))) == (512, 512)


def test_label_maps_are_regions_of_known_classes():
    maps = random_label_maps(2, (40, 24), num_classes=5, seed=0)
    assert maps.shape == (2, 1, 40, 24) and maps.dtype == torch.int64
    values = set(maps.unique().tolist())
    assert values <= set(range(5)) and len(values) >= 4
    assert torch.equal(maps[..., :8, :8], maps[..., :1, :1].expand(2, 1, 8, 8))  # regions
    assert torch.equal(maps, random_label_maps(2, (40, 24), num_classes=5, seed=0))
    edges = label_edges(torch.tensor([[[0, 0, 1], [0, 0, 1], [2, 2, 1]]]))
    assert edges.tolist() == [[[0, 1, 0], [1, 1, 0], [0, 1, 0]]]


def test_config_that_downloads_its_backbone_builds_offline():
    """PSPNet's base config sets pretrained='open-mmlab://resnet50_v1c' (a download while the
    model is built); mmgfp's builds drop it."""
    cfg = load_config('mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py')
    assert cfg.model.pretrained == 'open-mmlab://resnet50_v1c'
    model = build_model(cfg)
    assert type(model).__name__ == 'EncoderDecoder'
    assert codebase_of(model).num_classes(model) == 19


def test_demo_batch_trains_the_segmentor():
    model = build_model(load_config(DIGITS))
    data = demo_batch(model, 2, (64, 64), seed=0)
    sample = data['data_samples'][0]
    assert sample.gt_sem_seg.data.shape == (1, 64, 64)
    assert int(sample.gt_sem_seg.data.max()) < 11
    model.train()
    losses = loss_forward(data)(model)
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)


def test_check_model_on_a_segmentor_with_an_auxiliary_head():
    rep = check_model(load_config(DIGITS), ratio=0.5, seed=0, input_size=(64, 64))
    assert rep['equivalent'] and rep['max_rel_diff'] < 1e-4
    prunable = {g['key'].split('.')[0] for g in rep['groups'] if g['prunable']}
    assert {'backbone', 'decode_head', 'auxiliary_head'} <= prunable
    assert rep['flops_after'] < 0.8 * rep['flops_before']
