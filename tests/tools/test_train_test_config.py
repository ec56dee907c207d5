"""tools/train.py and tools/test.py take configs by path or by ``mmdet::``/``mmpretrain::`` name."""
import pytest

import tools.train as train_tool


def test_train_takes_a_packaged_config_name(tmp_path):
    cfg = train_tool.build_cfg(train_tool.parse_args(
        ['mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', '--cfg-options',
         'train_cfg.max_epochs=3']))
    assert cfg.model.type == 'RetinaNet' and cfg.model.backbone.depth == 18
    assert cfg.train_cfg.max_epochs == 3
    assert cfg.work_dir.endswith('work_dirs/retinanet_r18_fpn_1x_coco')


@pytest.mark.parametrize('name, words', [
    ('mmdet::retinanet/no_such_config.py', 'mmdet ships no config'),
    ('configs/digits/no_such_config.py', 'does not exist'),
])
def test_missing_config_is_named(name, words):
    with pytest.raises(FileNotFoundError, match=words):
        train_tool.build_cfg(train_tool.parse_args([name]))
