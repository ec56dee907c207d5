"""The demo input size: a classifier's own (from its test pipeline), or a clear error naming
``--input-size``, never a shape error from inside torch."""
import pytest
from mmengine.config import Config

import mmgfp  # noqa: F401
from mmgfp.apis.checking.check import check_model, load_config
from mmgfp.apis.inputs import default_input_size, pipeline_input_size

LENET = 'mmpretrain::lenet/lenet5_mnist.py'  # fixed 32x32 input (Linear after the convs)


def _cls(pipeline, where='test_dataloader'):
    return Config({'default_scope': 'mmpretrain', 'model': {'type': 'ImageClassifier'},
                   where: {'dataset': {'pipeline': pipeline}}})


@pytest.mark.parametrize('pipeline,size', [
    ([dict(type='ResizeEdge', scale=256, edge='short'), dict(type='CenterCrop', crop_size=224)],
     (224, 224)),
    ([dict(type='Resize', scale=(320, 240))], (240, 320)),  # mmcv scales are (w, h)
    ([dict(type='RandomResizedCrop', scale=192), dict(type='PackInputs')], (192, 192)),
    ([dict(type='LoadImageFromFile'), dict(type='PackInputs')], None),
])
def test_size_from_pipeline(pipeline, size):
    assert pipeline_input_size(_cls(pipeline)) == size


def test_size_from_wrapped_dataset_and_defaults():
    cfg = Config({'default_scope': 'mmpretrain', 'test_dataloader': {'dataset': {
        'type': 'ClassBalancedDataset', 'dataset': {'pipeline': [
            dict(type='CenterCrop', crop_size=(96, 64))]}}}})
    assert pipeline_input_size(cfg) == (64, 96)
    assert default_input_size(_cls([])) == (224, 224)  # a classifier naming no size
    assert default_input_size(Config({'default_scope': 'mmdet'})) == (128, 128)


def test_shipped_configs_sizes():
    assert default_input_size(load_config('mmpretrain::vgg/vgg11bn_8xb32_in1k.py')) == (224, 224)
    assert default_input_size(load_config(
        'mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k-384px.py')) == (384, 384)
    assert default_input_size(load_config(LENET)) == (32, 32)


def test_fixed_size_classifier_checked_at_its_own_size():
    rep = check_model(load_config(LENET), ratio=0.5)
    assert rep['input_size'] == [32, 32]
    assert rep['equivalent'] and rep['num_prunable_groups'] > 0


def test_wrong_size_names_the_option(capsys):
    with pytest.raises(ValueError, match=r'does not run on 64x64 .*--input-size H W'):
        check_model(load_config(LENET), input_size=(64, 64))
    import tools.analyze_groups as analyze_tool
    import tools.check_model as check_tool
    assert check_tool.main([LENET, '--input-size', '64', '64']) == 1
    assert analyze_tool.main([LENET, '--input-size', '64', '64']) == 1
    err = capsys.readouterr().err
    assert err.count('--input-size H W') == 2 and 'Traceback' not in err
