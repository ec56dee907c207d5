"""benchmarks/accuracy.py on another detector (FCOS) and a data layout of the user's own.

The layout is built from the digits generator and then moved about: images under
``pics/training`` and ``pics/validation`` (the annotation files name the sub-folder), COCO files
``labels/instances_{training,validation}.json``, read by mmdet's plain ``CocoDataset``. Configs
the benchmark cannot use must fail before anything trains, with the key and the fix named.
"""
import json
import os
import os.path as osp
import shutil
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import accuracy  # noqa: E402  (imports no torch at module level)

CONFIG = '''
_base_ = '{root}/configs/digits/fcos_r18_fpn_digits.py'
data_root = '{data}/'
metainfo = dict(classes=tuple('0123456789'))
train_dataloader = dict(dataset=dict(
    type='CocoDataset', metainfo=metainfo, data_root=data_root,
    ann_file='labels/instances_training.json', data_prefix=dict(img='{train_prefix}')))
val_dataloader = dict(dataset=dict(
    type='CocoDataset', metainfo=metainfo, data_root=data_root,
    ann_file='labels/{val_ann}', data_prefix=dict(img='pics/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'labels/{eval_ann}')
test_evaluator = val_evaluator
{extra}
'''


@pytest.fixture(scope='module')
def own_layout(tmp_path_factory):
    from mmgfp.datasets.digits import prepare_digits_det
    tmp = tmp_path_factory.mktemp('own_layout')
    gen = str(tmp / 'generated')
    prepare_digits_det(gen, num_train=6, num_val=3, seed=0)
    data = tmp / 'mydata'
    os.makedirs(data / 'labels')
    os.makedirs(data / 'pics')
    for split, name in (('train', 'training'), ('val', 'validation')):
        shutil.move(osp.join(gen, split), str(data / 'pics' / name))
        coco = json.load(open(osp.join(gen, 'annotations', f'{split}.json')))
        for img in coco['images']:
            img['file_name'] = f'{name}/{img["file_name"]}'
        json.dump(coco, open(data / 'labels' / f'instances_{name}.json', 'w'))
    shutil.rmtree(gen)
    return tmp, str(data)


def _config(tmp, data, name='fcos_own.py', train_prefix='pics/',
            val_ann='instances_validation.json', eval_ann='instances_validation.json',
            extra=''):
    path = tmp / name
    path.write_text(CONFIG.format(root=ROOT, data=data, train_prefix=train_prefix,
                                  val_ann=val_ann, eval_ann=eval_ann, extra=extra))
    return str(path)


@pytest.mark.parametrize('change, message', [
    (dict(val_ann='val.json'), r'val_dataloader\.dataset cannot be loaded .*val\.json'),
    (dict(eval_ann='missing.json'), r'test_evaluator cannot be built .*missing\.json'),
    (dict(train_prefix='images/'), r'train_dataloader\.dataset: image .*images/training/'
                                   r'00000\.png does not exist'),
    (dict(extra="train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop')"),
     'gives neither max_iters nor max_epochs'),
    (dict(extra="test_evaluator = dict(_delete_=True, type='CocoMetric', ann_file=data_root + "
                "'labels/instances_validation.json', metric='proposal')"),
     'gives no bbox mAP'),
])
def test_unusable_configs_fail_before_training(own_layout, change, message, tmp_path):
    tmp, data = own_layout
    config = _config(tmp_path, data, **change)
    with pytest.raises(SystemExit, match=message):
        accuracy.main(['--config', config, '--work-dir', str(tmp_path / 'wd'),
                       '--methods', 'gfp_acts', '--threads', '1'])
    assert not (tmp_path / 'wd' / 'baseline').exists(), 'nothing may train before the check'


def test_two_stage_detectors_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="'FasterRCNN' is not a single-stage detector"):
        accuracy.main(['--config', 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                       '--work-dir', str(tmp_path), '--methods', 'gfp_acts'])


@pytest.mark.slow
def test_quick_on_fcos_with_its_own_layout(own_layout, tmp_path, capsys):
    """Baseline, GFP and its evaluation with the config's own data and CocoMetric."""
    tmp, data = own_layout
    wd = tmp_path / 'wd'
    out = accuracy.main(['--config', _config(tmp, data), '--quick', '--threads', '1',
                         '--work-dir', str(wd), '--methods', 'gfp_acts', '--progress', '0'])
    printed = capsys.readouterr().out
    assert 'FCOS, data and evaluator checked' in printed
    # progress of the baseline, the method's training and its evaluation (--progress 0)
    base_iters = accuracy.QUICK['baseline_iters']
    assert f'baseline: iter {base_iters}/{base_iters}' in printed
    assert f'gfp_acts_t50_s0: iter {accuracy.QUICK["iters"]}/' in printed
    assert 'gfp_acts_t50_s0_test: test batch 3/3' in printed and 'ETA' in printed
    assert not (wd / 'data_quick').exists(), 'the config\'s own data must be used'
    [run] = out['runs']
    assert 'error' not in run, run.get('error')
    assert 0.0 <= run['mAP'] <= 1.0 and 0.0 <= out['baseline']['mAP'] <= 1.0
    assert run['info']['target_reached']
    assert abs(run['flops'] - 0.5) <= accuracy.QUICK['tol']
    assert run['flops'] == pytest.approx(run['info']['hook_remaining']['flops'], abs=1e-9)
