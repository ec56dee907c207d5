"""benchmarks/accuracy.py: every method end to end in --quick mode, at matching FLOPs."""
import json
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import accuracy  # noqa: E402  (imports no torch at module level)


def test_search_hits_the_target_inside_the_bracket():
    from _accuracy_methods import search
    calls = []

    def remaining(x):  # a step-wise, not quite quadratic cost curve
        calls.append(x)
        return round((1 - x) ** 2.3, 3), x

    (x, f, res), trials = search(remaining, 0.5, 0.005, 0.29, max_trials=8)
    assert abs(f - 0.5) <= 0.005
    assert res == x and len(trials) == len(calls) < 8
    assert all(0 <= c < 0.95 for c in calls)


def test_baseline_iterations_come_from_the_given_checkpoint(tmp_path, capsys):
    """A ``--baseline`` trained 2000 iterations is labelled 2000 (and the thin network gets
    2000 + iters from scratch), not the config's 500."""
    from types import SimpleNamespace

    import torch
    from _accuracy_runs import baseline_iters
    base = SimpleNamespace(train_cfg=SimpleNamespace(max_iters=500))
    ckpt, bare = tmp_path / 'iter_2000.pth', tmp_path / 'bare.pth'
    torch.save({'meta': {'iter': 2000, 'epoch': 0}, 'state_dict': {}}, ckpt)
    torch.save({'state_dict': {}}, bare)

    def args(**kw):
        return SimpleNamespace(**dict(dict(baseline_iters=None, baseline=None), **kw))
    assert baseline_iters(args(), base, 'unused') == 500  # trained here: the config's
    assert baseline_iters(args(baseline=str(ckpt)), base, str(ckpt)) == 2000
    assert baseline_iters(args(baseline=str(ckpt), baseline_iters=1500), base, str(ckpt)) == 1500
    assert baseline_iters(args(baseline=str(bare)), base, str(bare)) == 500
    assert 'give --baseline-iters' in capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [
    (['--targets', '1.5'], 'fractions of the FLOPs to keep'),
    (['--iters', '0'], '--iters must be a positive integer'),
    (['--baseline', '/nonexistent/iter_500.pth'], 'does not exist'),
    (['--stored-only', '--force'], 'contradict each other'),
    (['--train-images', '0'], '--train-images must be a positive integer'),
    (['--train-images', '10', '--quick'], 'leave out --train-images'),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        accuracy.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_quick_runs_every_method_at_the_same_flops(tmp_path):
    pytest.importorskip('torch_pruning', reason='Torch-Pruning is a benchmark-only dependency: '
                        'PIP_CONSTRAINT=.venv/mmgfp-constraints.txt .venv/bin/pip install '
                        'torch-pruning==1.6.1')
    out_json = tmp_path / 'accuracy.json'
    common = ['--quick', '--threads', '1', '--work-dir', str(tmp_path / 'wd')]
    argv = common + ['--json', str(out_json), '--methods'] + accuracy.METHODS
    try:
        import matplotlib  # noqa: F401
        argv += ['--plot', str(tmp_path / 'accuracy.png')]
    except ImportError:
        pass
    out = accuracy.main(argv)
    runs = {r['method']: r for r in out['runs']}
    assert sorted(runs) == sorted(accuracy.METHODS)
    tol = accuracy.QUICK['tol']
    for method, r in runs.items():
        assert 'error' not in r, f'{method}: {r.get("error")}'
        assert 0.0 <= r['mAP'] <= 1.0
        if method in accuracy.UNPRUNED:  # the same budget with nothing pruned
            assert r['flops'] == r['params'] == r['acts'] == 1.0 and r['target'] == 1.0
            continue
        assert abs(r['flops'] - 0.5) <= tol, f'{method} ended at {r["flops"]:.3f} of the FLOPs'
        assert r['params'] < 1.0
    assert runs['thin']['train_iters'] == accuracy.QUICK['baseline_iters'] + \
        accuracy.QUICK['iters']
    assert {r['train_iters'] for m, r in runs.items() if m != 'thin'} == {accuracy.QUICK['iters']}
    for method in ('gfp_acts', 'gfp_acts_kd', 'gfp_flops', 'gfp_flops_kd'):
        info = runs[method]['info']
        assert info['target_reached'] and info['pruning_iters'] <= accuracy.QUICK['iters']
        # the hook's own accounting (loss path, masks) = the measured compact module
        assert runs[method]['flops'] == pytest.approx(info['hook_remaining']['flops'],
                                                      abs=1e-9)
    for method in ('tp_l1', 'tp_taylor', 'random'):
        assert 'mAP' in runs[method]['info']['pruned_eval']
    # the sliced student distils the head's class scores from the unpruned baseline
    assert runs['tp_l1_kd']['info']['kd']['losses'][0]['type'] == 'sigmoid_kl'
    # GFP with either cost distils with the hook's defaults (CWD on the neck)
    assert runs['gfp_flops_kd']['info']['kd'] == runs['gfp_acts_kd']['info']['kd']
    assert runs['gfp_flops_kd']['info']['kd']['losses'][0]['type'] == 'cwd'
    # the unpruned model distils with the hook's defaults (CWD on the neck)
    assert runs['unpruned_kd']['info']['kd']['losses'][0]['type'] == 'cwd'
    saved = json.loads(out_json.read_text())
    assert [r['method'] for r in saved['rows']] == ['baseline', 'unpruned', 'unpruned_kd'] + [
        m for m in accuracy.METHODS if m not in accuracy.UNPRUNED]
    if '--plot' in argv:
        assert (tmp_path / 'accuracy.png').stat().st_size > 1000

    # A second call with the same settings reuses every stored run.
    again = accuracy.main(common + ['--methods', 'random'])
    assert again['runs'][0]['seconds'] == runs['random']['seconds']
    # --stored-only trains nothing: a seed never run is named as missing, not run.
    stored = accuracy.main(common + ['--stored-only', '--seeds', '0', '1', '--methods',
                                     'random'])
    assert [r['seconds'] for r in stored['runs']] == [runs['random']['seconds']]
    assert stored['missing'] == [{'method': 'random', 'target': 0.5, 'seed': 1}]
    assert not (tmp_path / 'wd' / 'runs' / 'random_t50_s1').exists()


def test_train_images_subsets_the_training_set_and_the_signature(tmp_path):
    from mmengine.config import Config
    from _accuracy_setup import few_images
    ckpt = tmp_path / 'iter_2.pth'
    ckpt.write_bytes(b'0')
    plain = accuracy.settings(accuracy.parse_args([]), str(ckpt))
    few = accuracy.settings(accuracy.parse_args(['--train-images', '100']), str(ckpt))
    assert 'train_images' not in plain, 'runs stored before the option still match'
    assert few == dict(plain, train_images=100)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'digits', 'retinanet_r18_fpn_digits.py'))
    few_images(cfg, 100)
    assert cfg.train_dataloader.dataset.indices == 100
    assert 'indices' not in cfg.val_dataloader.dataset, 'the test data stays whole'
    cfg.train_dataloader.dataset = dict(type='RepeatDataset', times=2,
                                        dataset=cfg.val_dataloader.dataset)
    with pytest.raises(SystemExit, match='wraps others'):
        few_images(cfg, 100)


def test_kd_unlabeled_rest_takes_the_images_after_the_labelled_ones(tmp_path):
    from mmengine.config import Config
    import _accuracy_kd as K
    with pytest.raises(SystemExit):  # argparse's error: it needs --train-images
        accuracy.parse_args(['--kd-unlabeled', 'rest'])
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'digits', 'retinanet_r18_fpn_digits.py'))
    ds = cfg.train_dataloader.dataset
    ds.data_root = str(tmp_path / 'digits') + '/'
    ds.generate_cfg = dict(num_train=12, num_val=2, seed=0)
    loader = K.unlabeled_rest(cfg, 5)
    assert loader['dataset']['indices'] == list(range(5, 12))
    assert [t['type'] for t in loader['dataset']['pipeline']] == [
        'LoadImageFromFile', 'Resize', 'PackDetInputs'], 'the labels are not loaded'
    assert 'indices' not in ds and any('LoadAnnotations' in t['type'] for t in ds.pipeline)
    with pytest.raises(SystemExit, match='none after the first 12'):
        K.unlabeled_rest(cfg, 12)
    ds.indices = 10
    with pytest.raises(SystemExit, match='without `indices`'):
        K.unlabeled_rest(cfg, 5)
    args = accuracy.parse_args(['--train-images', '5', '--kd-unlabeled', 'rest'])
    args.unlabeled_dataloader = loader
    assert K.hook_args('gfp_acts_kd', args)['unlabeled_dataloader'] == loader
    assert K.hook_args('gfp_acts', args) is None
    plain = accuracy.parse_args(['--train-images', '5'])
    assert K.run_name('gfp_acts_kd', 0.3, 0, args) != K.run_name('gfp_acts_kd', 0.3, 0, plain)
    assert K.run_name('gfp_acts', 0.3, 0, args) == K.run_name('gfp_acts', 0.3, 0, plain)


def test_kd_unlabeled_pool_generates_more_canvases_with_another_seed(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import DATASETS, DefaultScope
    import _accuracy_kd as K
    for bad in ('pool:0', 'pool', 'all'):
        with pytest.raises(SystemExit):
            accuracy.parse_args(['--kd-unlabeled', bad])
    assert accuracy.parse_args(['--kd-unlabeled', 'pool:7']).kd_unlabeled == 'pool:7'
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'digits', 'retinanet_r18_fpn_digits.py'))
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'digits') + '/'
    ds = K.unlabeled_loader(cfg, 'pool:7', None)['dataset']
    assert ds['data_root'] == str(tmp_path / 'digits') + '_pool7_s1/'
    assert ds['generate_cfg'] == dict(num_train=7, num_val=1, seed=K.POOL_SEED)
    assert not any('LoadAnnotations' in t['type'] for t in ds['pipeline'])
    with DefaultScope.overwrite_default_scope('mmdet'):
        pool = DATASETS.build(ds)
    assert len(pool) == 7 and len(pool[0]['data_samples'].gt_instances) == 0
    cfg.train_dataloader.dataset.type = 'CocoDataset'
    with pytest.raises(SystemExit, match='use rest with --train-images'):
        K.unlabeled_loader(cfg, 'pool:7', None)


def test_replaced_names_what_differs(tmp_path):
    """A finished run of other settings would be lost; a failed, missing or matching one not."""
    from _accuracy_runs import replaced
    sig = {'iters': 300, 'lr': 0.001, 'kd_losses': 'x'}
    path = str(tmp_path / 'result.json')
    assert replaced(path, sig, 'gfp_acts') is None  # nothing stored
    accuracy.save(path, {'settings': {'iters': 300, 'lr': 0.0002}, 'error': 'boom'})
    assert replaced(path, sig, 'gfp_acts') is None  # a failed run: rerun, nothing lost
    accuracy.save(path, {'settings': {'iters': 300, 'lr': 0.0002}, 'mAP': 0.5})
    assert replaced(path, sig, 'gfp_acts') == 'lr 0.0002 -> 0.001'
    accuracy.save(path, {'settings': {'iters': 300, 'lr': 0.001}, 'mAP': 0.5})
    assert replaced(path, sig, 'gfp_acts') is None  # the distillation options are not its
    assert replaced(path, sig, 'gfp_acts_kd') == "kd_losses None -> 'x'"
    # settings a method does not use lose nothing when they change; a checkpoint is not printed
    accuracy.save(path, {'settings': {'iters': 300, 'lr': 0.001, 'gfp_channels_per_step': 32,
                                      'baseline': ['/a/iter_500.pth', 1, 2]}, 'mAP': 0.5})
    sig = {'iters': 300, 'lr': 0.001, 'gfp_channels_per_step': 64,
           'baseline': ['/a/iter_500.pth', 1, 3]}
    assert replaced(path, sig, 'unpruned') == replaced(path, sig, 'random') == \
        'baseline: another checkpoint, or the same file trained again'
    assert replaced(path, sig, 'gfp_acts').startswith('baseline: another checkpoint, ')
    assert replaced(path, sig, 'gfp_acts').endswith('gfp_channels_per_step 32 -> 64')
    sig['baseline'] = ['/a/iter_500.pth', 1, 2]
    assert replaced(path, sig, 'unpruned') is None


def test_other_settings_stop_before_replacing_stored_runs(tmp_path):
    """A stored run is not trained again and overwritten by a call with another --lr: the call
    stops before training, names the run and what differs; the run stays as it was."""
    wd = tmp_path / 'wd'
    common = ['--quick', '--threads', '1', '--work-dir', str(wd), '--methods', 'random',
              '--seeds', '0']
    first = accuracy.main(common)['runs'][0]
    assert 'error' not in first
    result = wd / 'runs' / 'random_t50_s0' / 'result.json'
    before = result.read_text()
    with pytest.raises(SystemExit) as e:
        accuracy.main(common + ['--lr', '0.123'])
    message = str(e.value)
    assert 'random_t50_s0 (lr ' in message and '-> 0.123' in message
    assert '--work-dir of their own' in message and '--force' in message
    assert result.read_text() == before
    # a call that would train another baseline stops before it, since every stored run was
    # made from the one there
    with pytest.raises(SystemExit) as e:
        accuracy.main(common + ['--baseline-iters', '3'])
    assert 'random_t50_s0 (made from another baseline' in str(e.value)
    assert not (wd / 'baseline' / 'iter_3.pth').exists() and result.read_text() == before
    # the same settings still reuse it
    assert accuracy.main(common)['runs'][0]['seconds'] == first['seconds']
