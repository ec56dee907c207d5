"""FisherPruningHook: Group Fisher Pruning while a normal MMEngine runner trains."""
import os.path as osp
from typing import Dict, Optional, Sequence, Union

import torch
from mmengine.dist import all_gather_object, all_reduce, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from mmgfp.apis.inputs import model_groups, tensor_forward
from mmgfp.core import FisherPruner, build_groups, load_spec, make_spec, masks_from_spec
from mmgfp.core.latency_calib import load_warning
from mmgfp.core.spec import atomic_write, save_spec
from .latency_source import check_source, profile_at_start

VALID_DELTAS = ('acts', 'flops', 'latency')
VALID_METRICS = ('flops', 'acts', 'params', 'latency')
# divisor='auto' without a latency table: widths stay multiples of 8, which GPU kernels (fp16
# tensor cores above all) and vectorised CPU kernels need to turn fewer channels into less time.
DEFAULT_DIVISOR = 8


@HOOKS.register_module()
class FisherPruningHook(Hook):
    """Prune coupled channel groups by Group Fisher importance while training.

    The first training iteration traces the model on its own batch and finds the channel
    groups. From then on, every iteration accumulates the per-sample Fisher information of each
    group's mask, and every ``interval`` iterations the unit with the lowest importance per cost
    is masked out, until ``target`` of ``target_metric`` remains. Training then goes on with the
    masks fixed. Masks, statistics and progress are saved in checkpoints (key ``'mmgfp'``) and
    restored on ``resume``/``load_from``; ``tools/deploy_pruned.py`` turns a checkpoint into a
    physically smaller model.

    Under distributed training (DDP) each iteration's Fisher terms are summed over all ranks
    (one small all-reduce per iteration), so every rank holds the statistics of the whole
    batch, removes the same channels, and the checkpoint written by rank 0 holds the complete
    statistics. Gradients are divided by the world size, as DDP averages them: the statistics
    are those of a single process that sees all ranks' samples in one batch (with losses that
    each rank normalises by its own counts, as mmdet's detection losses: one process that
    accumulates the ranks' batches). RoI rows are folded onto their images.

    Args:
        interval (int): Iterations between two pruning steps. Defaults to 10.
        delta (str): Cost that normalises importance: ``'acts'`` (activation memory, the
            paper's default), ``'flops'`` or ``'latency'`` (time saved on the device of
            ``latency_table``). Defaults to 'acts'.
        target (float): Fraction of ``target_metric`` to keep; pruning stops once at or below
            it. Defaults to 0.5.
        target_metric (str): ``'flops'``, ``'acts'``, ``'params'`` or ``'latency'`` (the
            latency ``latency_table`` predicts). Defaults to 'flops'.
        channels_per_step (int): Selections removed per pruning step. Defaults to 1.
        min_channels (int): No group goes below this many channels. Defaults to 1.
        divisor (int | str): Keep group widths a multiple of this. ``'auto'``: with a
            ``latency_table``, each group follows the alignment measured on its device (1
            where time is smooth); without one, 8. Widths that are not a multiple go down to
            one in their first removal; a group narrower than its multiple is not pruned.
            Defaults to 'auto'.
        latency_table (str | dict, optional): A table made by ``tools/profile_latency.py`` on
            the deploy device, or a dict of profile settings (``device``, ``dtype``,
            ``channels_last``, ``batch``, ``input_size``, ``threads``, ``out``, ...; see
            :mod:`mmgfp.hooks.latency_source`) to profile the model when training starts, on
            the main process, and share the table with every rank. Needed for
            ``delta='latency'`` and ``target_metric='latency'``. Defaults to None.
        skip (Sequence[str]): ``fnmatch`` patterns of layer names whose groups are never pruned,
            e.g. ``['backbone.conv1', 'bbox_head.*']``. Defaults to ().
        save_thresholds (Sequence[float]): Save a checkpoint and the channel spec each time
            ``target_metric`` remaining crosses one of these. Defaults to (0.75, 0.5, 0.25).
        init_spec (str, optional): A channel spec JSON to start from (continue pruning or
            fine-tune an already-pruned model). Defaults to None.
        prune (bool): False fine-tunes with the loaded/initial masks fixed. Defaults to True.
    """
    priority = 'NORMAL'  # before LoggerHook (scalars) and CheckpointHook (saved masks)

    def __init__(self,
                 interval: int = 10,
                 delta: str = 'acts',
                 target: float = 0.5,
                 target_metric: str = 'flops',
                 channels_per_step: int = 1,
                 min_channels: int = 1,
                 divisor: Union[int, str] = 'auto',
                 skip: Sequence[str] = (),
                 save_thresholds: Sequence[float] = (0.75, 0.5, 0.25),
                 init_spec: Optional[str] = None,
                 prune: bool = True,
                 latency_table: Union[str, Dict, None] = None):
        _check_args(interval, delta, target, target_metric, channels_per_step, min_channels,
                    divisor, save_thresholds)
        self.table, self._profile = check_source(latency_table, delta, target_metric)
        if isinstance(skip, str):
            skip = [skip]
        self.interval = interval
        self.delta = delta
        self.target = float(target)
        self.target_metric = target_metric
        self.channels_per_step = channels_per_step
        self.min_channels = min_channels
        self.divisor = divisor
        self.latency_table = latency_table if self._profile is None else None
        self.skip = list(skip)
        self.save_thresholds = sorted(set(save_thresholds), reverse=True)
        self.init_spec = init_spec
        self.prune_enabled = prune
        self.pruner: Optional[FisherPruner] = None
        self.finished = not prune
        self.saved: list = []
        self.steps = 0
        self.loss_scale = 1.0  # AMP's loss scale of the current iteration's backward
        self._loaded: Optional[Dict] = None
        self._loaded_resume = False

    # -- setup -----------------------------------------------------------------------------
    @staticmethod
    def _model(runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def _build(self, runner, data_batch) -> None:
        model = self._model(runner)
        groups = model_groups(model, data_batch, skip=self.skip)
        if not groups.prunable:
            reasons = sorted({r for g in groups.groups.values() for r in g.reasons})[:8]
            raise RuntimeError(
                'FisherPruningHook found nothing prunable in this model '
                f'({groups.summary()}); reasons seen: {reasons}. Remove the hook, or lift '
                '`skip` patterns / frozen stages that block every group.')
        if self._profile is not None and self.table is None:
            self.table, self.latency_table = profile_at_start(runner, model, groups,
                                                              self._profile)
        self.pruner = self._pruner(model, groups)
        if get_world_size() > 1:
            self._check_ranks_agree()
        runner.logger.info(f'FisherPruningHook: {groups.summary()}; delta={self.delta}, '
                           f'target {self.target_metric} {self.target:.2f}, every '
                           f'{self.interval} iterations, widths in multiples of '
                           f'{self._divisor_text()}')
        if self.table is not None:
            runner.logger.info(
                f'FisherPruningHook: latency table {self.latency_table} measured on '
                f"{self.table.key.get('device')} ({_key_text(self.table.key)}); it describes "
                'the deploy device, which need not be the one training runs on; predicted '
                f'full-model latency {self.table.total_us / 1e3:.2f} ms')
            busy = load_warning(self.table.key, self.table.profiled)
            if busy:
                runner.logger.warning(f'FisherPruningHook: {busy}')
        if self._loaded is not None:
            self._restore(runner)
        elif self.init_spec is not None:
            masks_from_spec(self.pruner.masker, load_spec(self.init_spec))
            runner.logger.info(f'FisherPruningHook: masks set from {self.init_spec}')
        self.pruner.masker.attach()
        if self._reached():
            self.finished = True
        if not self.finished:
            self.pruner.recorder.start()
        self._log_state(runner)

    def _restore(self, runner) -> None:
        state = self._loaded
        try:
            if self._loaded_resume:
                self.pruner.load_state_dict(state['pruner'])
                self.finished = state['finished']
                self.saved = list(state['saved'])
                self.steps = state['steps']
            else:
                self.pruner.masker.load_state_dict(state['pruner']['masks'])
        except (KeyError, ValueError) as e:
            raise RuntimeError(f'the checkpoint\'s pruning state does not fit this model: {e}. '
                               'Was it saved with another config?') from None
        runner.logger.info('FisherPruningHook: masks restored from the checkpoint '
                           f'({"resume" if self._loaded_resume else "load_from"})')
        self._loaded = None

    def _pruner(self, model, groups) -> FisherPruner:
        divisor = self.divisor
        if divisor == 'auto' and self.table is None:
            divisor = DEFAULT_DIVISOR
        # evaluating a checkpoint before any training: masks only, no table profiled yet
        delta = 'acts' if self.delta == 'latency' and self.table is None else self.delta
        try:
            return FisherPruner(model, groups, delta, self.min_channels, divisor,
                                latency_table=self.table)
        except ValueError as e:  # a table of another model: say which file
            raise ValueError(f'FisherPruningHook: latency_table {self.latency_table!r}: '
                             f'{e}') from None

    def _divisor_text(self) -> str:
        if self.divisor != 'auto':
            return str(self.divisor)
        if self.table is None:
            return f'{DEFAULT_DIVISOR} (divisor=auto without a latency table)'
        found = sorted(set(self.pruner.divisors.values()))
        return f'{found} (divisor=auto, from the latency table)'

    # -- evaluation without training (tools/test.py on a pruning checkpoint) ----------------
    def _masks_for_eval(self, runner, data_batch) -> None:
        """Apply the checkpoint's masks when a val/test loop runs before any training.

        Training builds the masks on its first iteration; a test run never gets there, so the
        groups are traced on the first evaluation batch (tensor path, no loss needed).
        """
        if self.pruner is not None or data_batch is None:
            return
        state = self._loaded
        spec = (state or {}).get('spec')
        if spec is None and self.init_spec is None:
            return
        model = self._model(runner)
        was_training = model.training
        groups = build_groups(model, tensor_forward(data_batch), skip=self.skip)
        model.train(was_training)
        self.pruner = self._pruner(model, groups)
        if spec is not None:
            self._loaded_resume = False
            try:
                masks_from_spec(self.pruner.masker, _evaluated_part(spec, groups, runner.logger))
            except ValueError as e:
                raise RuntimeError(f'the checkpoint\'s channel spec does not fit this model: '
                                   f'{e}. Was it saved with another config?') from None
            self._loaded = None
        else:
            masks_from_spec(self.pruner.masker, _evaluated_part(load_spec(self.init_spec),
                                                                groups, runner.logger))
        self.pruner.masker.attach()
        self.finished = True
        runner.logger.info('FisherPruningHook: evaluating the masked model '
                           f'({self.pruner.remaining()})')

    def before_test_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._masks_for_eval(runner, data_batch)

    def before_val_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        from mmengine.runner import BaseLoop
        if isinstance(getattr(runner, '_train_loop', None), BaseLoop):
            return  # training builds the masks from its own first batch
        self._masks_for_eval(runner, data_batch)

    # -- training --------------------------------------------------------------------------
    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.pruner is None:
            if data_batch is None:
                raise RuntimeError('FisherPruningHook needs the training batch to trace the '
                                   'model, but the loop passed none')
            self._build(runner, data_batch)
        if not self.finished:
            self.pruner.recorder.begin_iter(_batch_size(data_batch))
            # the scale this iteration's backward uses: AMP's scaler updates it after the step
            # (doubles it after `growth_interval` finite steps), before after_train_iter
            self.loss_scale = _grad_scale(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.finished or self.pruner is None:
            return
        world = get_world_size()
        ok = self.pruner.recorder.end_iter(self.loss_scale * world,
                                           reduce=_sum_over_ranks if world > 1 else None)
        if not ok:
            runner.logger.warning(
                f'FisherPruningHook: iteration {runner.iter + 1} gave non-finite gradients '
                '(an fp16 overflow that AMP skips, or a diverging loss); its Fisher terms are '
                f'left out ({self.pruner.recorder.skipped} iterations so far)')
        if (runner.iter + 1) % self.interval:
            return
        without = self.pruner.groups_without_gradient()
        if without and self.steps == 0:
            runner.logger.warning(f'FisherPruningHook: {len(without)} groups got no gradient '
                                  f'(frozen layers?) and are not pruned: {without[:5]}')
        records = self.pruner.step(self.channels_per_step, until=self._reached)
        self.steps += 1
        for rec in records:
            runner.logger.info(f'FisherPruningHook: pruned {len(rec.units)} unit(s) of '
                               f'{rec.key} (score {rec.score:.3e}), {rec.channels_left} '
                               'channels left')
        self._log_state(runner)
        self._save_crossed(runner)
        if self._reached() or not records:
            self.finished = True
            self.pruner.recorder.stop()
            why = 'target reached' if records else 'nothing left to prune'
            if not records and self.delta == 'latency':
                why += ' that the latency table says saves time'
            runner.logger.info(f'FisherPruningHook: pruning finished ({why}); training goes '
                               'on with the masks fixed')

    def _check_ranks_agree(self) -> None:
        """Every rank must have traced the same groups, or the statistics cannot be summed."""
        layout = [(k, v.numel()) for k, v in sorted(self.pruner.recorder.fisher.items())]
        layouts = all_gather_object(layout)
        for rank, other in enumerate(layouts):
            if other != layouts[0]:
                raise RuntimeError(
                    f'FisherPruningHook: rank {rank} traced other channel groups than rank 0 '
                    f'({len(other)} vs {len(layouts[0])} groups), so their Fisher statistics '
                    'cannot be summed. The traced structure must not depend on the batch: '
                    'build the model identically on every rank.')

    def _reached(self) -> bool:
        return self.pruner.remaining()[self.target_metric] <= self.target

    def _log_state(self, runner) -> None:
        rem = self.pruner.remaining()
        for k, v in rem.items():
            runner.message_hub.update_scalar(f'train/gfp_{k}', v)
        runner.message_hub.update_scalar('train/gfp_channels_pruned',
                                         sum(len(r.units) for r in self.pruner.history))
        runner.logger.info('FisherPruningHook: remaining ' +
                           ', '.join(f'{k} {v:.4f}' for k, v in rem.items()))

    def _save_crossed(self, runner) -> None:
        value = self.pruner.remaining()[self.target_metric]
        for thr in self.save_thresholds:
            if value <= thr and thr not in self.saved:
                self.saved.append(thr)
                name = f'pruned_{self.target_metric}_{thr:.2f}'
                _save_checkpoint_atomic(runner, f'{name}.pth')
                if is_main_process():
                    save_spec(make_spec(self.pruner.masker),
                              osp.join(runner.work_dir, f'{name}.json'))
                runner.logger.info(f'FisherPruningHook: {self.target_metric} crossed {thr}, '
                                   f'saved {name}.pth and {name}.json')

    def after_train(self, runner) -> None:
        if self.pruner is not None and is_main_process():
            save_spec(make_spec(self.pruner.masker), osp.join(runner.work_dir,
                                                              'channels_final.json'))

    # -- checkpoints -----------------------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.pruner is None:
            if self._loaded is not None:  # saved before the first iteration: keep what we had
                checkpoint['mmgfp'] = self._loaded
            return
        checkpoint['mmgfp'] = {
            'pruner': self.pruner.state_dict(), 'spec': make_spec(self.pruner.masker),
            'finished': self.finished, 'saved': list(self.saved), 'steps': self.steps,
            'delta': self.delta, 'target_metric': self.target_metric,
            'remaining': self.pruner.remaining(),
            'latency_key': self.table.key if self.table is not None else None}

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('mmgfp')
        if state is None:
            return
        self._loaded = state
        self._loaded_resume = bool(getattr(runner, '_resume', False))
        if self.pruner is not None:
            self._restore(runner)


def _evaluated_part(spec: Dict, groups, logger) -> Dict:
    """The groups of ``spec`` the evaluation forward runs.

    A spec is made from the training forward: layers that run only in the loss (MMSegmentation's
    auxiliary heads) have groups there but are not traced on the evaluation forward, and their
    masks change no output. Such groups (whose layer the evaluation forward never called) are
    left out; every prunable group the evaluation forward has must be in the spec.
    """
    traced = set(groups.layer_types)
    idle = [k for k in spec['groups'] if k not in groups.groups and
            not k.startswith('input:') and k.rstrip("'") not in traced]
    missing = [g.key for g in groups.prunable if g.key not in spec['groups']]
    if missing:
        raise ValueError(f'groups {missing[:5]} of the evaluated model are not in the spec')
    if idle:
        logger.info(f'FisherPruningHook: {len(idle)} group(s) of layers that run only in '
                    f'training are not evaluated: {idle[:5]}')
    return dict(spec, groups={k: v for k, v in spec['groups'].items() if k not in idle})


def _check_args(interval, delta, target, target_metric, channels_per_step, min_channels,
                divisor, save_thresholds) -> None:
    """Raise ValueError naming the first hook argument that cannot work."""
    if not isinstance(interval, int) or interval <= 0:
        raise ValueError(f'`interval` must be a positive integer, but got {interval!r}')
    if delta not in VALID_DELTAS:
        raise ValueError(f'`delta` must be one of {VALID_DELTAS}, but got {delta!r}')
    if target_metric not in VALID_METRICS:
        raise ValueError(f'`target_metric` must be one of {VALID_METRICS}, but got '
                         f'{target_metric!r}')
    if not isinstance(target, (int, float)) or not 0 < target < 1:
        raise ValueError(f'`target` is the fraction of {target_metric} to keep and must lie '
                         f'in (0, 1), but got {target!r}')
    for t in save_thresholds:
        if not 0 < t < 1:
            raise ValueError(f'`save_thresholds` must lie in (0, 1), but got {t!r}')
    for name, v in (('channels_per_step', channels_per_step),
                    ('min_channels', min_channels)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f'`{name}` must be a positive integer, but got {v!r}')
    if divisor != 'auto' and (not isinstance(divisor, int) or divisor < 1):
        raise ValueError(f"`divisor` must be a positive integer or 'auto', but got "
                         f'{divisor!r}')


def _key_text(key: Dict) -> str:
    return ', '.join(f'{k} {key[k]}' for k in ('dtype', 'batch', 'threads', 'input_size',
                                                'channels_last', 'torch', 'backend',
                                                'backend_version', 'provider') if k in key)


def _save_checkpoint_atomic(runner, filename: str) -> None:
    """``runner.save_checkpoint`` into ``work_dir/filename`` through a temporary file.

    A run killed while writing never leaves a truncated ``filename`` (nor replaces an earlier,
    complete one with a broken file). Only the main process writes, as in
    ``Runner.save_checkpoint``.
    """
    if not is_main_process():
        return
    atomic_write(osp.join(runner.work_dir, filename),
                 lambda tmp: runner.save_checkpoint(runner.work_dir, osp.basename(tmp),
                                                    save_optimizer=False,
                                                    save_param_scheduler=False))


def _batch_size(data_batch: Union[dict, list, tuple]) -> int:
    inputs = data_batch['inputs'] if isinstance(data_batch, dict) else data_batch[0]
    return len(inputs)


def _sum_over_ranks(flat: torch.Tensor) -> None:
    all_reduce(flat, op='sum')


def _grad_scale(runner) -> float:
    scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
    if scaler is not None and hasattr(scaler, 'get_scale') and getattr(
            scaler, 'is_enabled', lambda: True)():
        return float(scaler.get_scale())
    return 1.0
