"""tools/report.py: a pruning run's logs and spec read back, plotted and summarised.

The Runner tests share one real pruning run of an mmpretrain ResNet-18 on generated digits,
killed after iteration 8 and resumed from its iteration-6 checkpoint, so the work dir holds two
timestamped run folders that overlap (iterations 7-8 are logged twice). The parser tests write
logs in the hook's own line format and need no Runner.
"""
import os
import os.path as osp
import sys

import pytest

from mmgfp.apis.report.data import (PruningLog, ReportError, Step, channel_rows, load_log, merge,
                                    parse_run)

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'hooks'))
from runner_utils import CLS_GEN, cls_config  # noqa: E402

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _report(argv):
    import tools.report as report_tool
    return report_tool.main(argv)


# -- parser on hand-written logs (no Runner) --------------------------------------------------
def _write_run(work_dir, name, lines, scalars=()):
    import json
    run = osp.join(str(work_dir), name)
    os.makedirs(osp.join(run, 'vis_data'), exist_ok=True)
    with open(osp.join(run, f'{name}.log'), 'w') as f:
        f.writelines(f'2026/01/01 00:00:00 - mmengine - INFO - {x}\n' for x in lines)
    with open(osp.join(run, 'vis_data', 'scalars.json'), 'w') as f:
        f.writelines(json.dumps(s) + '\n' for s in scalars)
    return run


SETUP = 'FisherPruningHook: 9 channel groups, 7 prunable; delta=acts, target flops 0.50, ' \
        'every 5 iterations'


def _state(flops):
    return f'FisherPruningHook: remaining flops {flops:.4f}, acts 0.9000, params 0.8000'


def _pruned(key, left):
    return f'FisherPruningHook: pruned 2 unit(s) of {key} (score 1.000e-03), {left} channels left'


def test_resumed_run_replaces_what_followed_its_checkpoint(tmp_path):
    # run 1 prunes at 5, 10, 15 and is killed; run 2 resumes from the iteration-10 checkpoint
    _write_run(tmp_path, '20260101_000000', [
        SETUP, _state(1.0), _pruned('a', 6), _state(0.9), _pruned('b', 14), _state(0.8),
        _pruned('c', 30), _state(0.7)],
        [dict(lr=0.1, gfp_flops=0.9, step=5), dict(lr=0.1, gfp_flops=0.7, step=15),
         {'accuracy/top1': 50.0, 'step': 10}, {'accuracy/top1': 60.0, 'step': 15}])
    _write_run(tmp_path, '20260101_010000', [
        'resumed epoch: 0, iter: 10', SETUP, 'FisherPruningHook: masks restored from the '
        'checkpoint (resume)', _state(0.8), _pruned('d', 6), _state(0.6), _pruned('a', 4),
        _state(0.45), 'FisherPruningHook: pruning finished (target reached); training goes on '
        'with the masks fixed', 'Iter(train) [30/30]  lr: 1.0000e-01'],
        [dict(lr=0.1, gfp_flops=0.6, step=15), dict(lr=0.1, gfp_flops=0.45123, step=20),
         {'accuracy/top1': 70.0, 'step': 20}])
    log = load_log(str(tmp_path))
    assert log.starts == {'20260101_000000': 0, '20260101_010000': 10}
    assert [s.iter for s in log.steps] == [5, 10, 15, 20]
    assert [s.remaining['flops'] for s in log.steps] == [0.9, 0.8, 0.6, 0.45]
    assert log.steps[2].pruned == [('d', 2, 6)]
    assert log.finished == 'target reached' and log.last_iter == 30 and log.max_iters == 30
    assert log.scalars['gfp_flops'] == [(5, 0.9), (15, 0.6), (20, 0.45123)]
    assert log.metrics['accuracy/top1'] == [(10, 50.0), (20, 70.0)]
    assert log.final()['flops'] == 0.45123  # full-precision scalar logged at the last step
    assert log.remaining_at(12)['flops'] == 0.8 and log.units_pruned() == 8
    # one run folder on its own: steps placed from the iteration it resumed at
    alone = parse_run(osp.join(str(tmp_path), '20260101_010000'))
    assert [s.iter for s in alone.steps] == [15, 20] and alone.initial['flops'] == 0.8


def test_validation_placed_at_its_iteration(tmp_path):
    """LoggerHook logs val metrics at step=epoch: 0 for iter-based runs (the training entry
    before tells the iteration), the epoch for epoch-based ones (times the epoch length)."""
    _write_run(tmp_path / 'it', '20260101_000000', [SETUP, _state(1.0)], [
        dict(lr=0.1, step=5), dict(lr=0.1, step=10), {'accuracy/top1': 1.0, 'step': 0},
        dict(lr=0.1, step=15), dict(lr=0.1, step=20), {'accuracy/top1': 2.0, 'step': 0}])
    assert load_log(str(tmp_path / 'it')).metrics == {'accuracy/top1': [(10, 1.0), (20, 2.0)]}
    _write_run(tmp_path / 'ep', '20260101_000000', [
        SETUP, _state(1.0), 'Epoch(train)  [1][10/44]  lr: 1.0000e-01'], [
        dict(lr=0.1, epoch=1, iter=40, step=40), {'coco/bbox_mAP': 0.5, 'step': 1},
        dict(lr=0.1, epoch=2, iter=80, step=80), {'coco/bbox_mAP': 0.6, 'step': 2}])
    log = load_log(str(tmp_path / 'ep'))
    assert log.metrics == {'coco/bbox_mAP': [(44, 0.5), (88, 0.6)]}
    assert log.last_iter == 88  # the end of epoch 2, known from its validation


def test_merge_restarts_on_a_run_from_iteration_zero():
    old = PruningLog(starts={'a': 0}, initial={'flops': 1.0}, steps=[Step(5, {'flops': 0.9})],
                     metrics={'m/x': [(5, 1.0)]})
    new = PruningLog(starts={'b': 0}, initial={'flops': 0.9}, steps=[Step(5, {'flops': 0.8})])
    merged = merge([old, new])
    assert merged.initial == {'flops': 0.9} and merged.steps == new.steps
    assert merged.metrics == {}


def test_work_dir_without_pruning_logs(tmp_path):
    with pytest.raises(SystemExit, match='does not exist'):
        _report([str(tmp_path / 'missing')])
    with pytest.raises(SystemExit, match=r'no mmgfp pruning logs.*found no run folder'):
        _report([str(tmp_path)])
    _write_run(tmp_path, '20260101_000000', ['Iter(train) [10/10]  lr: 1.0000e-01'])
    with pytest.raises(SystemExit, match=r'FisherPruningHook: \.\.\. channel groups.*found 1 '
                                         r'run folder\(s\) \(20260101_000000\)'):
        _report([str(tmp_path)])


def test_bad_spec_and_metric_are_named(tmp_path):
    _write_run(tmp_path, '20260101_000000', [SETUP, _state(1.0), _pruned('a', 6), _state(0.9)])
    with pytest.raises(SystemExit, match='channel spec .*nope.json does not exist'):
        _report([str(tmp_path), '--spec', str(tmp_path / 'nope.json')])
    (tmp_path / 'broken.json').write_text('{"format": "other"}')
    with pytest.raises(SystemExit, match='broken.json: not an mmgfp channel spec'):
        _report([str(tmp_path), '--spec', str(tmp_path / 'broken.json')])
    with pytest.raises(SystemExit, match=r"metric 'coco/bbox_mAP' is not in the logs; logged "
                                         r"metrics: none"):
        _report([str(tmp_path), '--metric', 'coco/bbox_mAP'])
    out = _report([str(tmp_path)])  # no spec, no metric: progress plot and summary only
    assert set(out['images']) == {'progress'}
    assert 'none found' in open(out['report']).read()


# -- a real pruning run, killed and resumed ---------------------------------------------------
@pytest.fixture(scope='module')
def pruned_run(tmp_path_factory):
    from mmengine.config import Config
    from mmengine.runner import Runner

    import mmgfp  # noqa: F401
    from mmgfp.datasets.digits import prepare_digits_cls
    tmp = tmp_path_factory.mktemp('report')
    data = str(tmp / 'data')
    prepare_digits_cls(data, **CLS_GEN)
    config = cls_config(tmp, data, optimizer='AdamW', lr=0.001, interval=2, target=0.5,
                        per_step=8, save=0.99, ckpt_interval=6)
    work = str(tmp / 'work')

    def train(**overrides):
        cfg = Config.fromfile(config)
        cfg.work_dir = work
        cfg.merge_from_dict({'train_cfg.val_interval': 4, **overrides})
        runner = Runner.from_cfg(cfg)
        runner.train()
        return runner

    train(**{'train_cfg.max_iters': 8})  # "killed" after 8, last regular checkpoint at 6
    resumed = train(resume=True, load_from=osp.join(work, 'iter_6.pth'))
    hook = next(h for h in resumed.hooks if type(h).__name__ == 'FisherPruningHook')
    return dict(work=work, hook=hook, runner=resumed)


@pytest.mark.slow
def test_series_match_what_the_hook_logged(pruned_run):
    hook = pruned_run['hook']
    log = load_log(pruned_run['work'])
    assert len(log.starts) == 2 and list(log.starts.values()) == [0, 6]
    assert not hook.finished, 'the run must still be pruning at the end to cover both runs'
    # a step every 2 iterations, each counted once although 7-8 ran twice
    assert [s.iter for s in log.steps] == [2, 4, 6, 8, 10, 12]
    assert len(log.steps) == hook.steps
    assert log.units_pruned() == sum(len(r.units) for r in hook.pruner.history)
    assert [k for s in log.steps for k, _, _ in s.pruned] == [r.key for r in
                                                              hook.pruner.history]
    assert log.final() == pytest.approx(hook.pruner.remaining(), abs=1e-12)
    assert log.steps[-1].remaining == pytest.approx(hook.pruner.remaining(), abs=5e-5)
    assert log.initial == {'flops': 1.0, 'acts': 1.0, 'params': 1.0}
    # the step placement agrees with the scalars LoggerHook wrote at the same iterations
    scal = dict(log.scalars['gfp_flops'])
    assert sorted(scal) == [2, 4, 6, 8, 10, 12]
    for s in log.steps:
        assert scal[s.iter] == pytest.approx(s.remaining['flops'], abs=5e-5)
    pruned = dict(log.scalars['gfp_channels_pruned'])
    assert pruned[12] == log.units_pruned()
    # validation at 4 and 8 (first run; its 8 is replaced) and 8, 12 (resumed run)
    assert [it for it, _ in log.metrics['accuracy/top1']] == [4, 8, 12]
    assert log.metrics['accuracy/top1'][-1][1] == pytest.approx(
        pruned_run['runner'].message_hub.get_scalar('val/accuracy/top1').current())
    assert log.last_iter == 12 and log.max_iters == 12


@pytest.mark.slow
def test_report_files_and_channels(pruned_run, tmp_path):
    from PIL import Image
    work = pruned_run['work']
    out = _report([work, '--out', str(tmp_path / 'rep')])
    assert out['spec'] == osp.join(work, 'channels_final.json')
    assert set(out['images']) == {'progress', 'metric_vs_flops', 'channels'}
    for path in out['images'].values():
        with open(path, 'rb') as f:
            assert f.read(8) == PNG_MAGIC
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.size[0] > 300 and img.size[1] > 200
            assert len(set(img.convert('L').getdata())) > 2  # something is drawn
    # the channels table is the hook's masks, group by group
    masker = pruned_run['hook'].pruner.masker
    assert {g['key']: (g['channels'], g['kept']) for g in out['groups']} == {
        k: (masker.groups.groups[k].channels, masker.num_kept(k)) for k in masker.keep}
    groups, layers = channel_rows(out['spec'])
    assert groups == out['groups'] and layers and all(r['out'] or r['in'] for r in layers)
    text = open(out['report']).read()
    final = pruned_run['hook'].pruner.remaining()
    assert f"| FLOPs remaining | {100 * final['flops']:.2f}% |" in text
    assert '| pruning steps | 6 (' in text and '`accuracy/top1`' in text
    for name in ('progress.png', 'metric_vs_flops.png', 'channels.png'):
        assert f']({name})' in text
    pruned_keys = {r.key for r in pruned_run['hook'].pruner.history}
    for g in out['groups']:
        if g['key'] in pruned_keys:
            assert f"| `{g['key']}` | {g['channels']} | {g['kept']} |" in text
    # --spec picks another spec: the threshold one saved while pruning
    other = _report([work, '--out', str(tmp_path / 'rep2'), '--spec',
                     osp.join(work, 'pruned_flops_0.99.json')])
    assert sum(g['kept'] for g in other['groups']) >= sum(g['kept'] for g in out['groups'])
