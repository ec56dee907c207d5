"""The compact config deploy writes: nothing a config would download while building remains,
and the config's own custom imports stay."""
from mmengine.config import Config, ConfigDict

from mmgfp.apis.deploying.deploy import compact_config, strip_pretrained


def test_strip_pretrained_forms():
    cfg = ConfigDict(
        type='EncoderDecoder', pretrained='open-mmlab://resnet50_v1c',
        backbone=dict(type='ResNetV1c', init_cfg=dict(type='Pretrained', checkpoint='x.pth')),
        decode_head=dict(init_cfg=[dict(type='Normal', std=0.01),
                                   dict(type='Pretrained', checkpoint='y.pth')]),
        neck=dict(type='TIMMBackbone', pretrained=True),
        auxiliary_head=[dict(pretrained=False, init_cfg=dict(type='Kaiming'))])
    out = strip_pretrained(cfg)
    assert out.pretrained is None
    assert out.backbone.init_cfg is None
    assert out.decode_head.init_cfg == [dict(type='Normal', std=0.01)]
    assert out.neck.pretrained is False
    assert out.auxiliary_head[0] == dict(pretrained=False, init_cfg=dict(type='Kaiming'))
    assert isinstance(out, ConfigDict)
    # the input is left as it was
    assert cfg.pretrained == 'open-mmlab://resnet50_v1c'
    assert cfg.backbone.init_cfg['type'] == 'Pretrained'


def test_custom_imports_given_as_one_name_are_kept():
    """mmseg's ConvNeXt configs write ``imports='mmpretrain.models'`` (a string, which mmcv
    takes): the compact config imports it and mmgfp, not its letters."""
    cfg = Config(dict(default_scope='mmseg', model=dict(type='EncoderDecoder'),
                      custom_imports=dict(imports='mmpretrain.models',
                                          allow_failed_imports=False)))
    new = compact_config(cfg, 'channels.json', None)
    assert new.custom_imports == dict(imports=['mmpretrain.models', 'mmgfp'],
                                      allow_failed_imports=False)
    assert new.model.gfp_architecture == 'mmseg.EncoderDecoder'


def test_seeded_forwards_draw_the_same_random_numbers():
    """SegNeXt's head draws random NMF bases in every test forward: the check seeds them."""
    import torch
    from mmgfp.apis.checking.check import seeded
    run = seeded(lambda model: torch.rand(3))
    assert torch.equal(run(None), run(None))
