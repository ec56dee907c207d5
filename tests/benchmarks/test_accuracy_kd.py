"""benchmarks/accuracy.py: the distillation options (--kd-losses, --kd-during, --kd-weight).

Each enters a stored run's signature only when given and only for the ``*_kd`` methods, so runs
stored before the options existed, and runs of the other methods, are still reused.
"""
import json
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import _accuracy_kd as K  # noqa: E402
import accuracy  # noqa: E402  (imports no torch at module level)

SIGMOID = '[{"module": "bbox_head", "type": "sigmoid_kl", "output": 0}]'


def _sig(tmp_path, *argv):
    ckpt = tmp_path / 'iter_2.pth'
    if not ckpt.exists():  # written once: the signature holds its mtime in whole seconds
        ckpt.write_bytes(b'0')
    return accuracy.settings(accuracy.parse_args(list(argv)), str(ckpt))


def test_signature_changes_only_with_the_options_given(tmp_path):
    plain = _sig(tmp_path)
    assert not set(K.KD_KEYS) & set(plain)  # runs stored before the options still match
    losses = _sig(tmp_path, '--kd-losses', SIGMOID)
    assert losses['kd_losses'] == json.loads(SIGMOID) and 'kd_during' not in losses
    during = _sig(tmp_path, '--kd-losses', SIGMOID, '--kd-during', 'finetuning')
    assert during['kd_during'] == 'finetuning'
    assert len({json.dumps(s, sort_keys=True) for s in (plain, losses, during)}) == 3
    assert _sig(tmp_path, '--kd-weight', '1')['kd_weight'] == 1.0
    # a method that does not distil is compared without them
    assert K.run_signature(during, 'gfp_acts') == K.run_signature(plain, 'gfp_acts') == plain
    assert K.run_signature(during, 'gfp_acts_kd') == during


def test_each_recipe_gets_its_own_run_folder():
    def name(method, *argv):
        args = accuracy.parse_args(list(argv))
        return K.run_name(method, 0.3, 1, args)

    # without options the names stored runs already have
    assert name('gfp_acts_kd') == 'gfp_acts_kd_t30_s1'
    assert name('gfp_acts', '--kd-losses', SIGMOID) == 'gfp_acts_t30_s1'
    # two recipes in one work dir do not overwrite each other
    recipes = {name('gfp_acts_kd', *a) for a in (
        ('--kd-losses', SIGMOID), ('--kd-losses', SIGMOID, '--kd-during', 'pruning'),
        ('--kd-weight', '1'), ('--kd-weight', '3'))}
    assert len(recipes) == 4 and all(r.startswith('gfp_acts_kd-') for r in recipes)
    assert name('tp_l1_kd', '--kd-losses', SIGMOID).endswith('_t30_s1')
    # a later option leaves the names of recipes stored before it (session 12's runs)
    assert name('gfp_acts_kd', '--kd-during', 'finetuning') == 'gfp_acts_kd-52fa2ec3_t30_s1'
    fisher = name('gfp_acts_kd', '--kd-fisher', 'task')
    assert fisher.startswith('gfp_acts_kd-') and fisher != name('gfp_acts_kd', '--kd-fisher',
                                                                 'all')
    alone = name('gfp_acts_kd', '--kd-during', 'finetuning', '--kd-task-weight', '0')
    assert alone.startswith('gfp_acts_kd-') and alone != 'gfp_acts_kd-52fa2ec3_t30_s1'


def test_stored_runs_match_by_method(tmp_path):
    plain = _sig(tmp_path)
    kd = _sig(tmp_path, '--kd-losses', SIGMOID)
    path = str(tmp_path / 'run.json')
    accuracy.save(path, {'settings': K.run_signature(plain, 'gfp_acts'), 'mAP': 0.5})
    assert accuracy.stored(path, kd, 'gfp_acts')['mAP'] == 0.5
    accuracy.save(path, {'settings': K.run_signature(plain, 'gfp_acts_kd'), 'mAP': 0.5})
    assert accuracy.stored(path, kd, 'gfp_acts_kd') is None  # another recipe: rerun
    assert accuracy.stored(path, plain, 'gfp_acts_kd')['mAP'] == 0.5


def test_hook_arguments_and_table_recipe():
    args = accuracy.parse_args(['--kd-losses', SIGMOID, '--kd-during', 'pruning'])
    assert K.hook_args('gfp_acts', args) is None
    assert K.hook_args('gfp_acts_kd', args) == {'losses': json.loads(SIGMOID),
                                                'during': 'pruning'}
    assert K.hook_args('gfp_acts_kd', accuracy.parse_args([])) == {}
    weight = K.hook_args('gfp_acts_kd', accuracy.parse_args(['--kd-weight', '0.5']))
    assert weight['losses'][0]['weight'] == 0.5 and weight['losses'][0]['module'] == 'neck'
    assert K.recipe(json.loads(SIGMOID), 'pruning') == \
        'sigmoid_kl bbox_head w1 tau1 output0; pruning'
    fisher = K.hook_args('gfp_acts_kd', accuracy.parse_args(['--kd-fisher', 'task']))
    assert fisher == {'fisher': 'task'}
    assert K.recipe([dict(module='neck', type='cwd')], 'all', 'task') == \
        'cwd neck w1 tau1; all; Fisher: task loss'
    alone = K.hook_args('gfp_acts_kd', accuracy.parse_args(['--kd-task-weight', '0']))
    assert alone == {'task_weight': 0.0}
    assert K.recipe([dict(module='neck', type='cwd')], 'finetuning', 'all', 0.0) == \
        'cwd neck w1 tau1; finetuning; task x0'


def test_the_unpruned_model_distils_with_the_same_options_but_ranks_nothing(tmp_path):
    args = accuracy.parse_args(['--kd-fisher', 'task', '--kd-during', 'finetuning',
                                '--kd-losses', SIGMOID])
    # fisher would only warn: nothing is ranked; during and losses are the pruned row's
    assert K.hook_args('unpruned_kd', args) == {'losses': json.loads(SIGMOID),
                                                'during': 'finetuning'}
    assert K.hook_args('gfp_acts_kd', args)['fisher'] == 'task'
    assert K.hook_args('unpruned', args) is None
    # its own run folder, named with the recipe's hash like the pruned row it pairs with
    name = K.run_name('unpruned_kd', 1.0, 0, args)
    assert name.startswith('unpruned_kd-') and name.endswith('_t100_s0')
    assert name.split('-')[1][:8] == K.run_name('gfp_acts_kd', 0.3, 0, args).split('-')[1][:8]
    ckpt = tmp_path / 'base.pth'
    ckpt.write_bytes(b'0')
    sig = accuracy.settings(args, str(ckpt))
    assert 'kd_fisher' in K.run_signature(sig, 'unpruned_kd')
    assert 'kd_fisher' not in K.run_signature(sig, 'unpruned')
    default = accuracy.parse_args([]).methods
    assert 'unpruned_kd' not in default and 'gfp_flops_kd' not in default  # opt-in
    assert 'gfp_acts_kd' in default


def test_pseudo_labels_option_names_its_runs_and_reaches_the_hook(tmp_path):
    """--kd-pseudo THR: the hook's pseudo_labels, a run folder of its own (the names of runs
    stored before it unchanged), and the table's recipe says so."""
    base = ['--train-images', '5', '--kd-unlabeled', 'rest']
    args = accuracy.parse_args(base + ['--kd-pseudo', '0.5'])
    args.unlabeled_dataloader = {'dataset': {}}  # accuracy.py fills it from the config
    assert K.hook_args('gfp_acts_kd', args)['pseudo_labels'] == {'score_thr': 0.5}
    assert K.run_name('gfp_acts_kd', 0.3, 0, args) != \
        K.run_name('gfp_acts_kd', 0.3, 0, accuracy.parse_args(base))
    assert K.recipe([dict(module='neck', type='cwd')], 'all', 'task', 1.0, 900,
                    {'score_thr': 0.5, 'weight': 1.0}) == \
        'cwd neck w1 tau1; all; Fisher: task loss; +900 unlabelled; pseudo labels >= 0.5'
    assert 'kd_pseudo' in _sig(tmp_path, *base, '--kd-pseudo', '0.5')
    assert 'kd_pseudo' not in _sig(tmp_path, *base)


def test_pseudo_labels_on_a_classifier_stop_before_training():
    from types import SimpleNamespace
    args = accuracy.parse_args(['--train-images', '5', '--kd-unlabeled', 'rest',
                                '--kd-pseudo', '0.5', '--methods', 'gfp_acts_kd'])
    with pytest.raises(SystemExit, match='not mmpretrain models'):
        K.check_hook(args, SimpleNamespace(scope='mmpretrain'), None)


@pytest.mark.parametrize('argv, message', [
    (['--kd-pseudo', '0.5'], 'give --kd-unlabeled too'),
    (['--train-images', '5', '--kd-unlabeled', 'rest', '--kd-pseudo', '1.5'],
     'a score threshold in (0, 1]'),
    (['--methods', 'unpruned', 'unpruned_kd', '--kd-during', 'pruning'],
     'unpruned_kd prunes nothing'),
    (['--kd-losses', '[{"module": '], 'not valid JSON'),
    (['--kd-losses', '{"module": "neck"}'], 'non-empty JSON list'),
    (['--kd-losses', '[{"type": "cwd"}]'], '"module" name'),
    (['--kd-losses', SIGMOID, '--kd-weight', '2'], 'give each entry its "weight"'),
    (['--kd-during', 'sometimes'], 'invalid choice'),
])
def test_bad_kd_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        accuracy.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_quick_on_a_classifier_with_and_without_the_teacher(tmp_path):
    """ResNet-18 digits (epoch-based config, trained by iterations here): GFP and
    Torch-Pruning L1 with and without distillation (KL on the head's logits), top-1 read from
    mmpretrain's Accuracy, the class count kept."""
    methods = ['gfp_acts', 'gfp_acts_kd']
    try:
        import torch_pruning  # noqa: F401
        methods += ['tp_l1', 'tp_l1_kd']
    except ImportError:
        pass
    out = accuracy.main(['--config', osp.join(ROOT, 'configs', 'digits', 'resnet18_digits.py'),
                         '--quick', '--threads', '1', '--work-dir', str(tmp_path),
                         '--methods', *methods, '--targets', '0.3'])
    assert out['task'] == 'mmpretrain' and out['metric'] == {'top1': 'top-1', 'top5': 'top-5'}
    runs = {r['method']: r for r in out['runs']}
    assert sorted(runs) == sorted(methods)
    for method, r in runs.items():
        assert 'error' not in r, f'{method}: {r.get("error")}'
        assert 0.0 <= r['top1'] <= 1.0
        assert abs(r['flops'] - 0.3) <= accuracy.QUICK['tol'], method
    assert 'kd' not in runs['gfp_acts']['info']
    assert runs['gfp_acts_kd']['info']['kd']['losses'] == [
        dict(module='head', type='kl', weight=1.0, tau=4.0)]
    if 'tp_l1_kd' in runs:  # the sliced student's teacher: the baseline, built from --config
        assert runs['tp_l1_kd']['info']['kd']['losses'][0]['type'] == 'kl'
        assert runs['tp_l1_kd']['params'] == runs['tp_l1']['params']
    kd_row = next(r for r in out['rows'] if r['method'] == 'gfp_acts_kd')
    assert kd_row['kd']['losses'][0]['type'] == 'kl'


CWD = r"cwd on 'neck' needs the teacher's channels"


@pytest.mark.parametrize('argv, scope, message', [
    (['--kd-losses', '[{"module": "neck", "type": "cwd"}]'], 'mmdet', CWD),
    (['--kd-losses', '[{"module": "neck"}]'], 'mmdet', CWD),  # cwd by default
    (['--kd-weight', '1'], 'mmdet', 'a sliced student'),
    ([], 'mmpose', 'tp_.*_kd on mmpose needs --kd-losses'),
])
def test_a_sliced_student_refuses_feature_distillation(argv, scope, message):
    from _accuracy_tasks import TASKS
    with pytest.raises(SystemExit, match=message):
        K.sliced_losses(accuracy.parse_args(argv), TASKS[scope]())


def test_a_sliced_student_distils_outputs_by_default():
    from _accuracy_tasks import TASKS
    args = accuracy.parse_args([])
    assert K.sliced_losses(args, TASKS['mmdet']()) == json.loads(SIGMOID)
    assert K.sliced_losses(args, TASKS['mmpretrain']())[0]['type'] == 'kl'
    given = accuracy.parse_args(['--kd-losses', '[{"module": "head", "type": "mse"}]'])
    assert K.sliced_losses(given, TASKS['mmpose']()) == [{'module': 'head', 'type': 'mse'}]


def test_a_sliced_student_gets_the_task_weight_and_phase():
    from mmengine.config import Config
    from _accuracy_tasks import TASKS
    base = Config(dict(model=dict(type='ImageClassifier'), default_scope='mmpretrain'))
    args = accuracy.parse_args(['--kd-task-weight', '0', '--kd-during', 'finetuning'])
    hook = K.sliced_hook(args, TASKS['mmpretrain'](), 'baseline.pth', base)
    assert hook['task_weight'] == 0.0 and hook['during'] == 'finetuning'
    assert 'task_weight' not in K.sliced_hook(accuracy.parse_args([]), TASKS['mmpretrain'](),
                                              'baseline.pth', base)


def test_a_metric_missing_in_every_run_is_nan_not_an_error():
    """A classifier evaluated with topk=(1,) has no top-5: the table says n/a."""
    mean, std = accuracy._mean_std([float('nan')] * 3)
    assert mean != mean and std != std
    assert accuracy._mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1414), abs=1e-4)


def test_curve_end_is_the_matching_unpruned_row():
    """A distilled method's curve ends at the unpruned model given the same teacher where it
    was measured, every other method's at the unpruned model; the baseline where neither was."""
    import _accuracy_table as T
    base = {'method': 'baseline', 'n': 1, 'mAP': 0.80}
    unpruned = {'method': 'unpruned', 'n': 3, 'mAP': 0.81}
    unpruned_kd = {'method': 'unpruned_kd', 'n': 3, 'mAP': 0.82}
    rows = [base, unpruned, unpruned_kd]
    assert T.curve_end(rows, 'gfp_acts_kd') is unpruned_kd
    assert T.curve_end(rows, 'tp_l1_kd') is unpruned_kd
    assert T.curve_end(rows, 'gfp_acts') is unpruned
    assert T.curve_end([base, unpruned], 'gfp_acts_kd') is unpruned
    assert T.curve_end([base, dict(unpruned, n=0)], 'gfp_acts') is base


def test_plot_draws_rows_with_both_unpruned_references(tmp_path, monkeypatch):
    pytest.importorskip('matplotlib')
    import _accuracy_table as T

    def row(method, target, flops, value, n=3):
        return {'method': method, 'target': target, 'flops': flops, 'n': n,
                'top1': value, 'top1_std': 0.004}
    rows = [row('baseline', 1.0, 1.0, 0.935, 1), row('unpruned', 1.0, 1.0, 0.925),
            row('unpruned_kd', 1.0, 1.0, 0.928)]
    rows += [row(m, t, t, v) for m, v in (('gfp_acts', 0.90), ('gfp_acts_kd', 0.92))
             for t in (0.3, 0.15)]
    runs = [{'method': r['method'], 'target': r['target'], 'top1': r['top1']} for r in rows]
    path = tmp_path / 'plot.png'
    import matplotlib.pyplot as plt
    kept, close = [], plt.close
    monkeypatch.setattr(plt, 'close', kept.append)  # keep the figure to read its curves
    T.plot(rows, runs, str(path), 'digits', key='top1', label='top-1')
    assert path.stat().st_size > 1000
    curves = {line.get_color(): (list(line.get_xdata()), list(line.get_ydata()))
              for line in kept[0].axes[0].lines if line.get_linestyle() == '-'}
    # through the targets (15%, 30%) to the matching unpruned row at 100%
    assert curves[T.COLOURS['gfp_acts']] == ([15.0, 30.0, 100.0], [0.90, 0.90, 0.925])
    assert curves[T.COLOURS['gfp_acts_kd']] == ([15.0, 30.0, 100.0], [0.92, 0.92, 0.928])
    # no two methods share a colour or a marker; the methods before gfp_flops_kd keep theirs
    assert len(set(T.COLOURS.values())) == len(set(T.MARKERS.values())) == len(T.METHODS)
    assert T.COLOURS['tp_l1'] == 'C3' and T.MARKERS['tp_l1'] == 'D'
    close(kept[0])
