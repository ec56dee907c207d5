"""benchmarks/zoo.py: families and their configs, what is skipped and why, and the table."""
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import zoo  # noqa: E402


@pytest.mark.parametrize('argv, message', [
    (['--index', '3-5'], '--index must be a slice a:b'),
    (['--ratio', '1.0'], '--ratio must lie in [0, 1)'),
    (['--stored-only', '--force'], 'contradict each other'),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        zoo.parse_args(argv)
    assert message in capsys.readouterr().err


def test_families_and_configs():
    fams = dict(zoo.families())
    assert len(fams) > 150
    assert fams['mmdet::mask_rcnn'] == 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
    assert fams['mmpretrain::vgg'] == 'mmpretrain::vgg/vgg11bn_8xb32_in1k.py'
    # classification fine-tuning, not the self-supervised pretraining the metafiles list first
    assert fams['mmpretrain::beit'].endswith('/benchmarks/beit-base-p16_8xb128-coslr-100e_in1k.py')
    assert fams['mmpretrain::eva'].endswith('/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py')
    assert not any(f.split('::')[1] in zoo.NOT_FAMILIES for f in fams)
    assert all(not osp.basename(c).startswith('_') for c in fams.values())
    with pytest.raises(SystemExit, match='unknown --family'):
        zoo.select(zoo.parse_args(['--family', 'mmdet::nope']))
    assert [f for f, _ in zoo.select(zoo.parse_args(['--index', '1:3']))] == list(fams)[1:3]


@pytest.mark.parametrize('config, task, why', [
    ('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'instance segmentation', None),
    ('mmdet::tood/tood_r50_fpn_1x_coco.py', 'detection', None),
    ('mmdet::panoptic_fpn/panoptic-fpn_r50_fpn_1x_coco.py', None, 'panoptic'),
    ('mmdet::fast_rcnn/fast-rcnn_r50_fpn_1x_coco.py', None, 'precomputed proposals'),
    ('mmpretrain::mae/mae_vit-base-p16_8xb512-amp-coslr-300e_in1k.py', None,
     'not an image classifier'),
    ('mmpretrain::resnet/resnet18_8xb32_in1k.py', 'classification', None),
    ('mmpretrain::beit/benchmarks/beit-base-p16_8xb128-coslr-100e_in1k.py', 'classification',
     None),
])
def test_classify(config, task, why):
    got_task, got_why = zoo.classify(zoo._load(config))
    assert got_task == task
    assert (got_why is None) if why is None else (why in got_why)


def test_table_lists_every_family_with_its_reason(tmp_path):
    groups = [{'key': 'head.fc', 'channels': 10, 'reasons': ["channels reach 'cross_entropy'"]}]
    results = [
        {'family': 'mmpretrain::a', 'config': 'mmpretrain::a/a.py', 'status': 'pass',
         'task': 'classification', 'input_size': [32, 32], 'num_groups': 3,
         'num_prunable_groups': 2, 'flops_before': 2e9, 'flops_after': 1e9,
         'params_before': 4e6, 'params_after': 1e6, 'max_rel_diff': 3e-7,
         'unprunable': groups},
        {'family': 'mmdet::b', 'config': 'mmdet::b/b.py', 'status': 'error',
         'error': 'RuntimeError: bad | thing\nnext line', 'where': ['mmgfp/x.py:1 f']},
        {'family': 'mmdet::c', 'config': 'mmdet::c/c.py', 'status': 'skipped',
         'reason': 'multi-object tracking'},
        {'family': 'mmdet::d', 'config': 'mmdet::d/d.py', 'status': 'pass',
         'task': 'detection', 'input_size': [64, 64], 'num_groups': 3,
         'num_prunable_groups': 3, 'flops_before': 2e9, 'flops_after': 1e9,
         'params_before': 4e6, 'params_after': 1e6, 'max_rel_diff': 1.7e-3,
         'max_rel_diff_float64': 6.5e-16, 'float64_note': 'mmcv ops run in float32: NMSop',
         'amplified_by': 'deformable sampling', 'unprunable': []},
    ]
    text = zoo.write_doc(results, str(tmp_path / 'zoo.md'),
                         zoo.parse_args(['--det-size', '64']))
    rows = [line for line in text.splitlines() if line.startswith('| mm')]
    assert len(rows) == 4 and all(r.count('|') == 11 for r in rows)
    assert "| **pass** | 1x channels reach 'cross_entropy' |" in rows[3]  # sorted by family
    assert '1.00G / 2.00G' in rows[3] and '3.0e-07' in rows[3]
    # passed by the float64 rerun: both numbers and why float32 differs
    assert ('| 1.7e-03 (float64 6.5e-16) | **pass** | float32 rounding amplified by deformable '
            'sampling; mmcv ops run in float32: NMSop; - |') in rows[2]
    assert 'RuntimeError: bad / thing next line' in rows[0]
    assert 'multi-object tracking' in rows[1]
    assert "`head.fc` (10)" in text
    counts = text.split('Counts: ')[1].splitlines()[0]
    assert sorted(counts.split(', ')) == ['1 error', '1 skipped', '2 pass']


def test_environment_failures_are_named():
    e = ImportError('TIMMBackbone requires timm, please install it by `pip install "timm"`.')
    assert zoo._environment(e).startswith('needs an optional package: ImportError: TIMM')
    assert zoo._environment(RuntimeError('a bug')) is None


def test_an_assertion_inside_an_mmcv_op_is_located():
    import torch
    from mmcv.ops import MaskedConv2d
    conv = MaskedConv2d(2, 2, 3, padding=1)
    with pytest.raises(AssertionError) as info:  # mmcv 2.1's masked conv takes one image
        conv(torch.randn(2, 2, 5, 5), torch.ones(2, 5, 5))
    assert zoo._in_mmcv_ops(info.value).startswith('mmcv/ops/masked_conv.py:')
    assert zoo._in_mmcv_ops(ValueError('elsewhere')) is None


def test_the_docs_page_is_what_the_stored_results_render(tmp_path):
    # the model zoo page of the docs is written by this script from benchmarks/results/zoo/
    assert zoo.parse_args([]).doc == osp.join(zoo.ROOT, 'docs', 'en', 'model_zoo.md')
    zoo.main(['--stored-only', '--doc', str(tmp_path / 'zoo.md')])
    with open(zoo.DOC) as f:
        committed = f.read()
    assert (tmp_path / 'zoo.md').read_text() == committed, (
        'docs/en/model_zoo.md differs from the stored results: run '
        '`python benchmarks/zoo.py --stored-only`')


def test_packages_choose_families_and_page():
    args = zoo.parse_args(['--packages', 'mmseg'])
    assert args.doc.endswith(osp.join('docs', 'en', 'model_zoo', 'mmseg.md'))
    assert zoo.parse_args([]).doc == zoo.DOC  # mmdet and mmpretrain: the original page
    assert zoo.parse_args(['--family', 'mmseg::fcn']).packages == ['mmseg']
    assert zoo.parse_args(['--family', 'mmdet::yolox']).packages == list(zoo.PACKAGES)
    with pytest.raises(SystemExit):
        zoo.parse_args(['--packages', 'mmnothing'])
    pytest.importorskip('mmseg')
    fams = dict(zoo.families(['mmseg']))
    assert all(f.startswith('mmseg::') for f in fams)
    # the first model of mmseg's metafile.yaml
    assert fams['mmseg::segformer'] == ('mmseg::segformer/'
                                        'segformer_mit-b0_8xb2-160k_ade20k-512x512.py')


def test_segmentors_are_checked_at_the_zoo_size():
    pytest.importorskip('mmseg')
    cfg = zoo._load('mmseg::beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py')
    assert zoo.classify(cfg) == ('semantic segmentation', None)
    res = {}
    zoo._seg_at_size(cfg, (128, 128), res)
    assert cfg.model.data_preprocessor.size == (128, 128)
    assert cfg.model.backbone.img_size == (128, 128) and '640' in res['adapted']
