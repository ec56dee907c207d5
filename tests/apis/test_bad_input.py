"""Bad input gets a clear error naming the problem, and never a lost or half-written file."""
import os.path as osp

import pytest
import torch

import mmgfp  # noqa: F401
from mmgfp.core.spec import SpecError
from mmgfp.hooks import FisherPruningHook


@pytest.mark.parametrize('kwargs,words', [
    (dict(interval=0), '`interval` must be a positive integer'),
    (dict(interval=2.5), '`interval` must be a positive integer'),
    (dict(delta='l1'), '`delta` must be one of'),
    (dict(target=1.5), '`target`'),
    (dict(target=0), '`target`'),
    (dict(target_metric='size'), '`target_metric` must be one of'),
    (dict(target_metric='latency'), "`target_metric='latency'` needs `latency_table`"),
    (dict(delta='latency'), "`delta='latency'` needs `latency_table`"),
    (dict(latency_table='no/such/table.json'), '`latency_table` \'no/such/table.json\' '
                                               'does not exist'),
    (dict(divisor='8'), "`divisor` must be a positive integer or 'auto'"),
    (dict(save_thresholds=(0.5, 2)), '`save_thresholds` must lie in (0, 1)'),
    (dict(channels_per_step=0), '`channels_per_step` must be a positive integer'),
    (dict(divisor=-8), '`divisor` must be a positive integer'),
])
def test_hook_arguments_checked(kwargs, words):
    with pytest.raises(ValueError) as e:
        FisherPruningHook(**kwargs)
    assert words in str(e.value)


def test_hook_registered():
    from mmengine.registry import HOOKS
    hook = HOOKS.build(dict(type='FisherPruningHook', interval=5, delta='flops', target=0.3))
    assert isinstance(hook, FisherPruningHook) and hook.interval == 5


CLS_CFG = '''
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
custom_imports = dict(imports=['mmgfp'], allow_failed_imports=False)
model = dict(backbone=dict(depth={depth}), head=dict(num_classes=10, in_channels={width}))
'''


def _cfg(tmp_path, name, depth=18, width=512):
    path = osp.join(str(tmp_path), name)
    with open(path, 'w') as f:
        f.write(CLS_CFG.format(depth=depth, width=width))
    return path


def _plain_checkpoint(config, path):
    from mmengine.config import Config
    from mmgfp.apis.checking.check import build_model
    model = build_model(Config.fromfile(config))
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return model


def test_deploy_never_pruned_gives_exact_copy(tmp_path):
    import tools.deploy_pruned as tool
    config = _cfg(tmp_path, 'r18.py')
    ckpt = str(tmp_path / 'plain.pth')
    _plain_checkpoint(config, ckpt)
    out = tool.main([config, ckpt, '--out-dir', str(tmp_path / 'out')])
    assert out['pruned'] == 'no'
    assert open(out['checkpoint'], 'rb').read() == open(ckpt, 'rb').read()


def test_deploy_wrong_config_is_clear(tmp_path, capsys):
    import tools.deploy_pruned as tool
    ckpt = str(tmp_path / 'r18.pth')
    _plain_checkpoint(_cfg(tmp_path, 'r18.py'), ckpt)
    other = _cfg(tmp_path, 'r34.py', depth=34)
    out_dir = tmp_path / 'out'
    with pytest.raises(SystemExit) as e:
        tool.main([other, ckpt, '--out-dir', str(out_dir)])
    assert 'does not match the config' in str(e.value)
    assert 'Use the config the checkpoint was trained with' in str(e.value)
    assert not (out_dir / 'compact.pth').exists()


def test_deploy_truncated_checkpoint_is_clear(tmp_path):
    import tools.deploy_pruned as tool
    config = _cfg(tmp_path, 'r18.py')
    ckpt = str(tmp_path / 'r18.pth')
    _plain_checkpoint(config, ckpt)
    data = open(ckpt, 'rb').read()
    with open(ckpt, 'wb') as f:
        f.write(data[:len(data) // 3])
    with pytest.raises(SystemExit) as e:
        tool.main([config, ckpt, '--out-dir', str(tmp_path / 'out')])
    assert 'cannot read checkpoint' in str(e.value) and 'truncated' in str(e.value)


def test_deploy_missing_files(tmp_path):
    import tools.deploy_pruned as tool
    with pytest.raises(SystemExit) as e:
        tool.main([str(tmp_path / 'nope.py'), 'x.pth', '--out-dir', str(tmp_path)])
    assert 'does not exist' in str(e.value)


def test_compact_model_rejects_other_checkpoint(tmp_path):
    """A compact config loading a checkpoint of other shapes fails loudly, not with a warning."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from mmgfp.apis.checking.check import build_model, random_masks
    from mmgfp.apis.deploying.deploy import compact_config
    from mmgfp.apis.inputs import demo_batch, loss_forward
    from mmgfp.core import FisherPruner, build_groups, make_spec, save_spec
    config = _cfg(tmp_path, 'r18.py')
    cfg = Config.fromfile(config)
    model = build_model(cfg)
    model.train()
    pruner = FisherPruner(model, build_groups(model, loss_forward(demo_batch(model, 2, (32,
                                                                                     32)))))
    random_masks(pruner, 0.5, 0)
    save_spec(make_spec(pruner.masker), str(tmp_path / 'channels.json'))
    new = compact_config(cfg, str(tmp_path / 'channels.json'), None)
    init_default_scope('mmpretrain')
    compact = MODELS.build(new.model)
    with pytest.raises(SpecError) as e:
        compact.load_state_dict(model.state_dict(), strict=False)
    assert 'does not match the pruned config' in str(e.value)


def test_check_model_tool_reports_and_writes_json(tmp_path, capsys):
    import json

    import tools.check_model as tool
    config = _cfg(tmp_path, 'r18.py')
    rc = tool.main([config, '--ratio', '0.5', '--input-size', '32', '32', '--json',
                    str(tmp_path / 'rep.json')])
    assert rc == 0
    printed = capsys.readouterr().out
    assert 'EQUIVALENT' in printed and 'groups:' in printed
    rep = json.load(open(tmp_path / 'rep.json'))
    for key in ('num_groups', 'num_prunable_groups', 'flops_before', 'flops_after',
                'params_before', 'params_after', 'acts_before', 'acts_after', 'max_rel_diff',
                'equivalent'):
        assert key in rep
    assert rep['equivalent'] is True and rep['flops_after'] < rep['flops_before']
    assert tool.main([config, '--ratio', '1.5']) == 1


def test_analyze_groups_tool(tmp_path, capsys):
    import json

    import tools.analyze_groups as tool
    config = _cfg(tmp_path, 'r18.py')
    assert tool.main([config, '--input-size', '32', '32', '--json',
                      str(tmp_path / 'groups.json')]) == 0
    printed = capsys.readouterr().out
    assert 'producers:' in printed and 'backbone.layer1.0.conv1' in printed
    groups = json.load(open(tmp_path / 'groups.json'))['groups']
    head = [g for g in groups if 'head.fc' in g['producers']]
    assert head and not head[0]['prunable'] and head[0]['reasons']
