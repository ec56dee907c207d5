"""GFPDistillHook: distillation from the unpruned model while pruning and fine-tuning."""
import math
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from mmgfp.core.distill import LOSSES, NEEDS_BOXES, PAIRED, POOLED, box_masks, producer_group
from .distill_losses import check_loss, default_losses, loss_key, picked_pair, picked_tensors
from .distill_teacher import checkpoint_config, config_of, make_teacher, state_of
from .distill_unlabeled import UnlabeledBatches, train_loader_settings, unlabeled_loader_cfg

TEACHER_KEY = 'mmgfp_teacher'
STATE_KEY = 'mmgfp_distill'  # the hook's own progress (unlabelled batches drawn)
DURING = ('all', 'pruning', 'finetuning')
FISHER = ('all', 'task')


class _TeacherDone(Exception):
    """Raised by the last tapped module: the layers after it are not needed."""


@HOOKS.register_module()
class GFPDistillHook(Hook):
    """Add distillation from the unpruned model to the loss while pruning and fine-tuning.

    A companion of :class:`FisherPruningHook` rather than an argument of it: pruning decides
    *which* channels go, distillation changes *what is optimised*; either works without the
    other (e.g. distilling while fine-tuning a deployed-then-masked model) and each stays small.
    It finds the pruning hook among the runner's hooks for the channel masks.

    The teacher is a frozen copy of the model as loaded when training starts, before any mask
    (eval mode, no grad, outside DDP and the optimizer, never part of ``runner.model``). Every
    training iteration it runs on the student's preprocessed batch, and each entry of
    ``losses`` adds ``weight * loss(student_output, teacher_output)`` of one module to the loss
    dict as ``loss_distill_<type>_<module>`` (summed into the loss and logged by MMEngine like
    any other). The seam is the model's ``loss`` method, replaced on the unwrapped model for the
    duration of training: DDP's forward, AMP's autocast and loss scaling, and the Runner's loss
    parsing and logging all see one loss dict, and any OpenMMLab model whose ``forward(mode=
    'loss')`` calls ``self.loss`` (mmdet, mmpretrain, mmpose, mmseg, mmyolo) works unchanged.
    The teacher runs ``forward(mode='tensor')`` and stops after its last tapped module.

    By default the distillation term enters the Fisher information: the recorder squares the
    gradient of the loss being optimised, now task + distillation, so a channel is scored by
    how much the student needs it to fit the labels *and* to follow the teacher. This costs
    nothing (one backward) and ranks channels by the objective they are trained for. With
    ``fisher='task'`` the channels are ranked by the task loss alone, as without the teacher,
    while the student still trains on both: one more backward pass of the task loss per
    pruning iteration (``FisherRecorder.record_from``; no parameter gradient is kept).

    Checkpoints store the teacher's weights (key ``'mmgfp_teacher'``): a resumed run, and a
    fine-tuning run that ``load_from`` a pruning checkpoint, distil from the same teacher. The
    key is never read by ``tools/deploy_pruned.py``, so the teacher does not reach the compact
    model.

    Args:
        losses (Sequence[dict], optional): Each ``dict(module=NAME, type=TYPE, weight=1.0,
            tau=1.0, output=None)``: ``'kl'`` compares class distributions (classifier logits),
            ``'sigmoid_kl'`` dense sigmoid class scores (a detector head's), ``'mse'`` dense
            regression maps, ``'box_mse'`` a dense head's boxes weighted by the teacher's
            class score at each anchor (the module returns (scores, boxes); no ``output``),
            ``'cwd'`` feature maps channel by channel, ``'fg_mse'`` feature
            maps inside the ground-truth boxes only (detectors; the squared error relative to
            the teacher's norm there); pruned channels of the student are left out of
            ``'cwd'`` and ``'fg_mse'``. ``output=i`` distils element ``i`` of the
            module's output tuple only (``dict(module='bbox_head', type='sigmoid_kl',
            output=0)``: the class scores of every level). None: ``kl`` on ``head`` (tau 4)
            for mmpretrain classifiers, else ``cwd`` on ``neck`` (weight 1, tau 1). Defaults
            to None.
        teacher (str, optional): Checkpoint of the unpruned model to distil from instead of the
            loaded weights; needed when those are already pruned (fine-tuning) and carry no
            teacher. When its shapes fit the student, the teacher is a copy of the student
            with these weights; when they do not (a sliced student), the teacher is built from
            the unpruned model's config (``teacher_cfg``, else the checkpoint's
            ``meta['cfg']``, else the Runner's ``cfg.model``) and the weights are loaded into
            it strictly. Defaults to None.
        save_teacher (bool): Store the teacher's weights in checkpoints. Defaults to True.
        teacher_cfg (str | dict, optional): The unpruned model's config, for a sliced
            student: a config path, a config (dict) with ``model``, or a model dict with
            ``type`` (built in the current default scope). Defaults to None.
        during (str): When the teacher teaches: ``'all'`` every iteration, ``'pruning'``
            while FisherPruningHook still removes channels, ``'finetuning'`` after it has
            finished (or always without a pruning hook, or with ``prune=False``). In the other
            phase the teacher does not run and no ``loss_distill_*`` term is added, so the
            Fisher information of the pruning phase sees the task loss alone with
            ``'finetuning'``. The phase follows the pruning hook's state, also after a
            resume. Defaults to 'all'.
        fisher (str): Which loss ranks the channels while the teacher teaches during pruning:
            ``'all'`` the loss being optimised (task + distillation), ``'task'`` the task
            loss alone (the distillation term then only trains). Defaults to 'all'.
        task_weight (float): Weight of the model's own (task) losses while the teacher
            teaches; ``0`` trains on the teacher alone, as Minitron fine-tunes after pruning.
            Each weighted task term is also logged unweighted, ``loss_cls`` as ``task_cls``
            (not summed into the loss). With ``fisher='task'`` the channels are ranked by the
            unweighted task loss; with ``fisher='all'`` by what is optimised. In the phase
            where the teacher is silent (``during``) the task losses keep weight 1.
            Defaults to 1.0.
        unlabeled_dataloader (dict, optional): A data loader config (as ``train_dataloader``)
            of images whose labels are not used: on every iteration the teacher teaches, one
            batch of it runs through the student and the teacher (``forward(mode='tensor')``,
            after the model's data preprocessor) and each entry of ``losses`` that needs no
            labels (all but ``fg_mse``) adds ``loss_distill_<type>_<module>_unlabeled``. The
            preprocessor runs with ``training=False`` (no batch augments); the student runs in
            train mode, so its BatchNorm layers up to the last distilled module also update
            their running statistics on these images. Keys it lacks are taken from
            ``train_dataloader`` (``batch_size``, ``num_workers``, ``persistent_workers``,
            ``pin_memory``; not its ``collate_fn`` or ``batch_sampler``), or from the built
            training loader of a Runner made in Python; the sampler defaults
            to a shuffled ``InfiniteSampler``, seeded with the Runner's seed + 1. These images
            train the student but do not rank channels (their forward is not recorded for the
            Fisher information: its per-sample terms are the labelled batch's). A resumed run
            continues the loader where the checkpoint left it. Costs a student forward and
            backward and a teacher forward per iteration, up to the last distilled module.
            Defaults to None.
        unlabeled_weight (float): Factor on every ``*_unlabeled`` term (after the entry's own
            ``weight``). Defaults to 1.0.
        pseudo_labels (dict, optional): ``dict(score_thr=0.5, weight=1.0)``: the teacher's
            detections also become labels of the images without labels (needs
            ``unlabeled_dataloader``; detectors of MMDetection). On every iteration the teacher
            teaches, it predicts on the unlabelled batch (its ``test_cfg``: NMS, top
            detections), the boxes scoring at least ``score_thr`` become the images'
            ``gt_instances`` (in the batch's input pixels), and the student's own loss on them
            is added as ``<key>_pseudo`` (``loss_cls_pseudo``, ...) times ``weight``; the boxes
            per image are logged as ``pseudo_boxes``. An image where the teacher scores nothing
            that high trains as background. Like the ``*_unlabeled`` terms they train the
            student but do not rank channels; ``task_weight`` does not scale them (they are
            the teacher's answer, taught with the task's loss), so with ``task_weight=0`` the
            student still trains on them. Costs the teacher's full forward with
            post-processing and a student loss forward and backward per iteration. Defaults
            to None.
    """
    priority = 'BELOW_NORMAL'  # after FisherPruningHook traced the model on iteration 1

    def __init__(self, losses: Optional[Sequence[dict]] = None, teacher: Optional[str] = None,
                 save_teacher: bool = True, teacher_cfg=None, during: str = 'all',
                 fisher: str = 'all', task_weight: float = 1.0,
                 unlabeled_dataloader: Optional[dict] = None, unlabeled_weight: float = 1.0,
                 pseudo_labels: Optional[dict] = None):
        self.losses = None if losses is None else [check_loss(dict(l)) for l in losses]
        keys = [loss_key(spec) for spec in self.losses or []]
        if len(set(keys)) < len(keys):
            raise ValueError(f'two `losses` entries would both log as {keys}: give each '
                             'module and type once')
        if teacher is not None and not isinstance(teacher, str):
            raise ValueError(f'`teacher` is a checkpoint path, but got {teacher!r}')
        self.teacher_ckpt = teacher
        config_of(teacher_cfg)  # a wrong kind of config fails here, not when training starts
        self.teacher_cfg = teacher_cfg
        if during not in DURING:
            raise ValueError(f'`during` must be one of {DURING}, got {during!r}')
        self.during = during
        if fisher not in FISHER:
            raise ValueError(f'`fisher` must be one of {FISHER}, got {fisher!r}')
        self.fisher = fisher
        if isinstance(task_weight, bool) or not isinstance(task_weight, (int, float)) or \
                not math.isfinite(task_weight) or task_weight < 0:
            raise ValueError(f'`task_weight` must be a finite number >= 0, got {task_weight!r}')
        self.task_weight = float(task_weight)
        if unlabeled_dataloader is not None:
            unlabeled_loader_cfg(unlabeled_dataloader, dict(batch_size=1))  # its shape only
            if self.losses is not None and pseudo_labels is None and \
                    all(s['type'] in NEEDS_BOXES for s in self.losses):
                raise ValueError(_NO_UNLABELED_LOSS)
        if isinstance(unlabeled_weight, bool) or not isinstance(unlabeled_weight, (int, float)) \
                or not math.isfinite(unlabeled_weight) or unlabeled_weight < 0:
            raise ValueError('`unlabeled_weight` must be a finite number >= 0, got '
                             f'{unlabeled_weight!r}')
        self.unlabeled_cfg = unlabeled_dataloader
        self.unlabeled_weight = float(unlabeled_weight)
        self.pseudo = _check_pseudo(pseudo_labels, unlabeled_dataloader)
        self._pseudo_codebase = None  # makes the labels from the teacher's predictions
        self._task_loss = None  # the student's own loss, for the pseudo-labelled batch
        self._unlabeled: Optional[UnlabeledBatches] = None
        self._unlabeled_specs: List[dict] = []
        self._unlabeled_loaded = 0  # batches drawn by the run a checkpoint was saved from
        self._side = False  # a side pass (unlabelled batch) runs: the student's notes pause
        self._optim_wrapper = None  # the Runner's, for its loss scaling (fisher='task')
        self._teaching: Optional[bool] = None  # the phase of the last iteration
        self.save_teacher = save_teacher
        self.teacher: Optional[nn.Module] = None
        self._loaded_teacher: Optional[Dict] = None
        self.active = False
        self._student: Dict[str, List] = {}
        self._handles: List = []
        self._groups: Dict = {}
        self._prune_hook = None
        self._own_loss = None
        self._codebase = None  # for the batch's boxes (fg_mse)
        self._boxes = None  # (boxes per image, input (H, W)) of the current batch

    # -- setup -----------------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded_teacher = checkpoint.get(TEACHER_KEY)
        state = checkpoint.get(STATE_KEY)
        self._unlabeled_loaded = int((state or {}).get('unlabeled_batches', 0))

    def before_train(self, runner) -> None:
        from .fisher_pruning_hook import FisherPruningHook
        prune_hook = next((h for h in runner.hooks if isinstance(h, FisherPruningHook)), None)
        cfg = runner.cfg if isinstance(runner.cfg.get('model'), dict) else None
        unlabeled = None
        if self.unlabeled_cfg is not None:
            loader_cfg = unlabeled_loader_cfg(self.unlabeled_cfg, train_loader_settings(runner))
            # another seed than train_dataloader's sampler: images in both data sets would
            # otherwise come in the same order, the unlabelled batch the labelled one
            loader = runner.build_dataloader(
                loader_cfg, seed=(runner.seed + 1) % 2 ** 31,
                diff_rank_seed=getattr(runner, '_randomness_cfg', {}).get('diff_rank_seed',
                                                                           False))
            # a resumed run goes on with the batches after the checkpoint's; a run that only
            # loads weights (load_from, iteration 0) starts the loader afresh
            unlabeled = UnlabeledBatches(loader, self._unlabeled_loaded if runner.iter else 0)
        self.attach(_unwrap(runner.model), prune_hook, model_cfg=cfg, unlabeled=unlabeled)
        runner.logger.info('GFPDistillHook: distilling ' + ', '.join(
            f"{s['type']} on {s['module']} (weight {s['weight']}, tau {s['tau']})"
            for s in self.losses) + f' from {self._source}, during {self.during}; task losses '
            f'weighted {self.task_weight:g} while it teaches; channels '
            'ranked by ' + ('the task loss alone' if self.fisher == 'task' else
                            'the task and distillation losses'))
        if unlabeled is not None:
            runner.logger.info(
                f'GFPDistillHook: and on {len(unlabeled.loader.dataset)} images without '
                f'labels, one batch per iteration, weight {self.unlabeled_weight:g}: '
                + ', '.join([f"{s['type']} on {s['module']}" for s in self._unlabeled_specs]
                            + (["the teacher's detections scoring >= "
                                f"{self.pseudo['score_thr']:g} as labels (weight "
                                f"{self.pseudo['weight']:g})"] if self.pseudo else [])))
        prunes = prune_hook is not None and prune_hook.prune_enabled
        if self.during == 'pruning' and not prunes:
            runner.logger.warning("GFPDistillHook: during='pruning' but no FisherPruningHook "
                                  'prunes in this run: the teacher never teaches')
        if self.task_weight == 0 and self.fisher == 'all' and prunes and \
                self.during != 'finetuning':
            runner.logger.warning(
                'GFPDistillHook: task_weight=0 while the teacher teaches during pruning, and '
                "fisher='all': the channels are ranked by the distillation terms alone; "
                "fisher='task' ranks them by the task loss")
        if self.fisher == 'task' and (not prunes or self.during == 'finetuning'):
            runner.logger.warning(
                "GFPDistillHook: fisher='task' changes nothing here: "
                + ('no FisherPruningHook prunes in this run' if not prunes else
                   "with during='finetuning' the teacher is silent while channels are ranked"))

    def teaching(self) -> bool:
        """Whether the teacher teaches in the current phase (``during``)."""
        if self.during == 'all':
            return True
        return self._finished() == (self.during == 'finetuning')

    def attach(self, model: nn.Module, prune_hook=None, teacher_model: Optional[nn.Module] = None,
               model_cfg=None, unlabeled=None) -> None:
        """Make the teacher and wrap ``model.loss``.

        What ``before_train`` does, without a Runner (the overhead benchmark calls it). The
        distillation terms are added while ``active`` is set (each training iteration).

        Args:
            model (nn.Module): The student (unwrapped), masked or sliced.
            prune_hook (FisherPruningHook, optional): For the masks. Defaults to None.
            teacher_model (nn.Module, optional): A ready teacher (e.g. the unpruned model
                built and loaded by the caller); it is set to eval mode and frozen, and
                ``teacher`` / ``teacher_cfg`` are not used. Defaults to None.
            model_cfg (optional): Config of the unpruned model, used after ``teacher_cfg``
                and the checkpoint's ``meta['cfg']`` when the student is sliced (the Runner's
                ``cfg``). Defaults to None.
            unlabeled (Iterator, optional): Batches of images without labels (as a data
                loader gives them, before the data preprocessor), one drawn per iteration the
                teacher teaches. Defaults to None.
        """
        self._prune_hook = prune_hook
        if self.losses is None:
            self.losses = default_losses(model)
        modules = dict(model.named_modules())
        for spec in self.losses:
            if spec['module'] not in modules:
                raise ValueError(f"GFPDistillHook: the model has no module {spec['module']!r} "
                                 f'to distil; give `losses` naming one of its modules, e.g. '
                                 f'{[n for n, _ in model.named_children()]}')
            if spec['type'] in ('mse', 'box_mse') and \
                    getattr(modules[spec['module']], 'norm_on_bbox', False):
                raise ValueError(
                    f"GFPDistillHook: type={spec['type']!r} on {spec['module']!r}, whose boxes "
                    'are scaled by the stride in eval mode only (norm_on_bbox=True, as FCOS): '
                    'the teacher (eval) and the student (train) would be compared at other '
                    "scales. Distil its class scores (type='sigmoid_kl', output=0) or its "
                    "input features (type='cwd' on 'neck')")
        if self.fisher == 'task' and not callable(getattr(model, 'parse_losses', None)):
            raise ValueError(f"GFPDistillHook(fisher='task') sums the task losses with the "
                             f"model's parse_losses, which {type(model).__name__} lacks (not "
                             "an MMEngine BaseModel): use fisher='all'")
        if any(spec['type'] in NEEDS_BOXES for spec in self.losses):
            self._codebase = _box_codebase(model)
        self._unlabeled = unlabeled
        self._unlabeled_specs = [s for s in self.losses if s['type'] not in NEEDS_BOXES]
        if unlabeled is not None and not self._unlabeled_specs and self.pseudo is None:
            raise ValueError(_NO_UNLABELED_LOSS)
        if self.pseudo is not None:
            if unlabeled is None:
                raise ValueError('GFPDistillHook(pseudo_labels=...) labels the images of '
                                 '`unlabeled_dataloader`, and none were given')
            self._pseudo_codebase = _pseudo_codebase(model)
        self.teacher = self._build_teacher(model, teacher_model, model_cfg)
        for name in dict.fromkeys(spec['module'] for spec in self.losses):  # once per module
            self._handles.append(modules[name].register_forward_hook(
                lambda m, a, out, _n=name: self._note(_n, out)))
        self._own_loss = model.__dict__.get('loss')  # another tool's replacement, if any
        model.loss = self._loss_of(model)

    def detach(self, model: nn.Module) -> None:
        """Restore ``model.loss`` and remove the student hooks (the teacher stays)."""
        model.__dict__.pop('loss', None)
        if self._own_loss is not None:
            model.loss = self._own_loss
        for h in self._handles:
            h.remove()
        self._handles = []
        self.active = False

    def _build_teacher(self, model: nn.Module, teacher_model: Optional[nn.Module],
                       model_cfg) -> nn.Module:
        if self._prune_hook is not None and self._prune_hook.pruner is not None:
            raise RuntimeError('GFPDistillHook: the masks are already on the model, so a copy '
                               'would be a pruned teacher; the teacher is copied when training '
                               'starts, before FisherPruningHook masks the model')
        if teacher_model is not None:
            self._source = f'the given {type(teacher_model).__name__}'
            return teacher_model.eval().requires_grad_(False)
        state, cfg = self._loaded_teacher, None
        self._source = 'the checkpoint\'s teacher'
        if state is None and self.teacher_ckpt is not None:
            from mmgfp.apis.deploying.deploy import read_checkpoint
            ckpt = read_checkpoint(self.teacher_ckpt)
            state, cfg = state_of(ckpt), checkpoint_config(ckpt)
            self._source = self.teacher_ckpt
        elif state is None:
            self._check_unpruned()
            self._source = 'the model as loaded'
        self._loaded_teacher = None
        cfg = config_of(self.teacher_cfg) or cfg or config_of(model_cfg)
        return make_teacher(model, state, cfg, self._source)

    def _check_unpruned(self) -> None:
        hook = self._prune_hook
        if hook is None:
            return
        loaded = (hook._loaded or {}).get('pruner', {}).get('masks', {})
        pruned = any(not bool(v.all()) for v in loaded.values())
        if pruned or hook.init_spec is not None:
            raise RuntimeError(
                'GFPDistillHook: the loaded model is already pruned '
                f'({"its checkpoint has masks" if pruned else "init_spec is set"}) and carries '
                'no teacher, so the unpruned model is not at hand. Give '
                "`teacher='<checkpoint of the unpruned model>'`, or load a checkpoint saved "
                'by a pruning run with GFPDistillHook (it stores the teacher)')

    def after_train(self, runner) -> None:
        self.detach(_unwrap(runner.model))

    # -- every iteration -------------------------------------------------------------------
    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # after the pruning hook's tracing forward of iteration 1 and its restored state
        self.active = self.teaching()
        if self.active and self.fisher == 'task':
            self._optim_wrapper = runner.optim_wrapper
        if self.active != self._teaching and self.during != 'all':
            runner.logger.info(
                f'GFPDistillHook: from iteration {runner.iter + 1} the teacher '
                f"{'teaches' if self.active else 'does not teach'} (during={self.during!r}, "
                f"pruning {'finished' if self._finished() else 'goes on'})")
        self._teaching = self.active

    def _recorder(self):
        """The pruning hook's Fisher recorder while it records (None otherwise)."""
        if self._finished() or self._prune_hook.pruner is None:
            return None
        return self._prune_hook.pruner.recorder

    def _task_fisher(self, model: nn.Module, losses: Dict) -> None:
        """``fisher='task'``: the recorder takes this iteration's terms from the task losses
        (summed as the Runner sums them, scaled as its optimizer wrapper will scale the
        whole loss) before the distillation terms join them."""
        recorder = self._recorder()
        if recorder is None or not recorder.recording:
            return
        task, _ = model.parse_losses(losses)
        scale_loss = getattr(self._optim_wrapper, 'scale_loss', None)
        if callable(scale_loss):  # gradient accumulation divides the loss
            task = scale_loss(task)
        # scaled as the backward will be: the recorder divides the pruning hook's scale out
        recorder.record_from(task * self._prune_hook.loss_scale,
                             [p for p in model.parameters() if p.requires_grad])

    def _finished(self) -> bool:
        return self._prune_hook is None or self._prune_hook.finished

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.active = False

    def _note(self, name: str, out) -> None:
        if self.active and not self._side:
            self._student.setdefault(name, []).append(out)

    def _loss_of(self, model: nn.Module):
        orig = model.loss
        self._task_loss = orig

        def loss(inputs, data_samples=None, *args, **kwargs):
            if not self.active:
                return orig(inputs, data_samples, *args, **kwargs)
            self._student = {}
            if self._codebase is not None:
                self._boxes = (self._codebase.gt_boxes(data_samples), tuple(inputs.shape[-2:]))
            losses = orig(inputs, data_samples, *args, **kwargs)
            if self.fisher == 'task':
                self._task_fisher(model, losses)
            if self.task_weight != 1.0:
                losses = weigh_task(losses, self.task_weight)
            want = self._wanted()
            teacher = self._tap(self.teacher, inputs, data_samples, want)
            for spec in self.losses:
                key = loss_key(spec)
                losses[key] = spec['weight'] * self._term(
                    spec, self._student.get(spec['module'], []), teacher[spec['module']])
            self._student, self._boxes = {}, None
            if self._unlabeled is not None:
                losses.update(self._unlabeled_terms(model, want))
            return losses

        return loss

    def _wanted(self) -> Dict[str, int]:
        """Calls of each distilled module in the student's loss forward of this iteration."""
        return {s['module']: len(self._student.get(s['module'], [])) for s in self.losses}

    def _unlabeled_terms(self, model: nn.Module, want: Dict[str, int]) -> Dict:
        """The ``*_unlabeled`` terms of one batch of images without labels: the student's
        and the teacher's tensor forwards to the distilled modules, the student's with grad
        and masks but outside the Fisher statistics; and with ``pseudo_labels`` the
        ``*_pseudo`` terms of the same batch."""
        # training=False: no batch augments (mixup, YOLOX's random resize), which read or
        # change labels and, for the random resize, draw the next labelled batch's size
        data = model.data_preprocessor(next(self._unlabeled), False)
        inputs, samples = data['inputs'], data.get('data_samples')
        terms = {}
        want = {s['module']: want[s['module']] for s in self._unlabeled_specs}
        if want:
            student = self._side_pass(lambda: self._tap(model, inputs, samples, want,
                                                        grad=True))
            teacher = self._tap(self.teacher, inputs, samples, want)
            terms = {loss_key(spec) + '_unlabeled': spec['weight'] * self.unlabeled_weight *
                     self._term(spec, student[spec['module']], teacher[spec['module']])
                     for spec in self._unlabeled_specs}
        if self.pseudo is not None:
            terms.update(self._pseudo_terms(inputs, samples))
        return terms

    def _side_pass(self, run):
        """``run()``, a student forward on a batch other than the labelled one: with grad
        and masks, but outside the Fisher statistics and the student's notes."""
        recorder = self._recorder()
        self._side = True
        try:
            with recorder.paused() if recorder is not None else nullcontext():
                return run()
        finally:
            self._side = False

    def _pseudo_terms(self, inputs, samples) -> Dict:
        """The student's own losses on the unlabelled batch labelled with the teacher's
        detections (``pseudo_labels``), as ``<key>_pseudo``, and ``pseudo_boxes``."""
        with torch.no_grad():
            labelled = self._pseudo_codebase.pseudo_labels(self.teacher, inputs, samples,
                                                           self.pseudo['score_thr'])
        losses = self._side_pass(lambda: self._task_loss(inputs, labelled))
        weight = self.pseudo['weight']
        out = {}
        for key, value in losses.items():  # accuracies: logged, not summed nor weighted
            out[key + '_pseudo'] = _each(value, lambda v: v * weight) if 'loss' in key else value
        boxes = self._pseudo_codebase.gt_boxes(labelled)
        out['pseudo_boxes'] = inputs.new_tensor(sum(len(b) for b in boxes) / max(len(boxes), 1))
        return out

    def _tap(self, net: nn.Module, inputs, data_samples, want: Dict[str, int],
             grad: bool = False) -> Dict[str, list]:
        """``net``'s outputs of the distilled modules in its tensor forward, the first
        ``want[name]`` calls of each (as many as the student's loss forward made); the
        forward stops after the last one.

        The modules' ``forward`` is wrapped on the instance rather than hooked: MMDetection's
        tensor path calls ``self.bbox_head.forward(x)``, which runs no forward hooks.
        """
        got: Dict[str, list] = {n: [] for n in want}
        modules = dict(net.named_modules())

        def tapped(name, forward):
            def run(*args, **kwargs):
                got[name].append(forward(*args, **kwargs))
                if all(len(got[n]) >= k for n, k in want.items()):
                    raise _TeacherDone
                return got[name][-1]
            return run

        own = {n: modules[n].__dict__.get('forward') for n in want}
        for n in want:
            modules[n].forward = tapped(n, modules[n].forward)
        try:
            with torch.set_grad_enabled(grad):
                net(inputs, data_samples, mode='tensor')
        except _TeacherDone:
            pass
        finally:
            for n, forward in own.items():
                modules[n].__dict__.pop('forward')
                if forward is not None:
                    modules[n].forward = forward
        return got

    def _term(self, spec: dict, student_outs: list, teacher_outs: list) -> torch.Tensor:
        name = spec['module']
        s_list = picked_tensors(spec, student_outs)
        t_list = picked_tensors(spec, teacher_outs)
        if not s_list or len(s_list) != len(t_list):
            raise RuntimeError(f'GFPDistillHook: module {name!r} gave {len(s_list)} tensors in '
                               f'the student\'s loss forward and {len(t_list)} in the '
                               "teacher's tensor forward; distil a module both paths run")
        fn = LOSSES[spec['type']]
        if spec['type'] in PAIRED:
            student, teacher = picked_pair(spec, student_outs), picked_pair(spec, teacher_outs)
            if len(student[0]) != len(teacher[0]) or len(student[1]) != len(teacher[1]):
                raise RuntimeError(f'GFPDistillHook: module {name!r} gave other outputs in the '
                                   "student's loss forward than in the teacher's tensor forward")
            return fn(student, teacher, spec['tau'])
        if spec['type'] == 'fg_mse':
            boxes, input_hw = self._boxes
            masks = box_masks(boxes, input_hw, [s.shape[-2:] for s in s_list])
            keep = [self._keep(name, i, s) for i, s in enumerate(s_list)]
            return fn(s_list, t_list, masks, keep)
        if spec['type'] in POOLED:
            return fn(s_list, t_list, spec['tau'])
        terms = []
        for i, (s, t) in enumerate(zip(s_list, t_list)):
            if spec['type'] == 'cwd':
                terms.append(fn(s, t, spec['tau'], self._keep(name, i, s)))
            else:
                terms.append(fn(s, t, spec['tau']))
        return torch.stack(terms).mean()

    def _keep(self, name: str, index: int, feature: torch.Tensor) -> Optional[torch.Tensor]:
        """Bool mask of the unpruned channels of a student feature map (None: all)."""
        hook = self._prune_hook
        if hook is None or hook.pruner is None:
            return None
        masker = hook.pruner.masker
        if (name, index) not in self._groups:
            self._groups[(name, index)] = _group_of(feature, hook.pruner.groups, masker.model)
        key = self._groups[(name, index)]
        if key is None or key not in masker.keep:
            return None
        return masker.keep[key].repeat_interleave(masker.groups.groups[key].block)

    # -- checkpoints -----------------------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.save_teacher and self.teacher is not None:
            checkpoint[TEACHER_KEY] = self.teacher.state_dict()
        elif self.save_teacher and self._loaded_teacher is not None:
            checkpoint[TEACHER_KEY] = self._loaded_teacher
        if self._unlabeled is not None:
            checkpoint[STATE_KEY] = dict(unlabeled_batches=self._unlabeled.drawn)


_NO_UNLABELED_LOSS = (
    'GFPDistillHook: `unlabeled_dataloader` is given, but every entry of `losses` is fg_mse, '
    "which needs the ground-truth boxes that images without labels lack: add an entry such as "
    "dict(module='neck', type='cwd') for them")


def weigh_task(losses: Dict, weight: float) -> Dict:
    """The loss dict with every term MMEngine sums (a key containing ``'loss'``) times
    ``weight``, and its unweighted value, detached, logged under the key with ``'loss'``
    replaced by ``'task'`` (not summed). Other entries (accuracies) are kept as they are."""
    out = {}
    for key, value in losses.items():
        if 'loss' not in key:
            out[key] = value
            continue
        shown = key.replace('loss', 'task')
        if shown in losses:
            raise ValueError(f'GFPDistillHook(task_weight): the model already logs {shown!r}, '
                             f'the name the unweighted {key!r} would take')
        out[key], out[shown] = _each(value, lambda v: v * weight), _each(value, torch.detach)
    return out


def _each(value, fn):
    """``fn`` applied to a loss entry: a tensor, or each of a list of tensors (one per level,
    as MMEngine's parse_losses accepts)."""
    return fn(value) if isinstance(value, torch.Tensor) else [fn(v) for v in value]


def _group_of(feature: torch.Tensor, groups, model: nn.Module) -> Optional[str]:
    """The channel group whose channels ``feature`` carries (None: unknown, all kept)."""
    modules = dict(model.named_modules())
    producers = {}
    for layer, key in groups.producers.items():
        if groups.groups[key].channels != feature.shape[1] or layer not in modules:
            continue
        for p in modules[layer].parameters(recurse=False):
            producers[id(p)] = key
    return producer_group(feature, producers)


def _check_pseudo(given: Optional[dict], unlabeled: Optional[dict]) -> Optional[dict]:
    """``pseudo_labels`` with its defaults, checked (None: off)."""
    if given is None:
        return None
    if not isinstance(given, dict) or set(given) - {'score_thr', 'weight'}:
        raise ValueError(f'`pseudo_labels` is dict(score_thr=0.5, weight=1.0), got {given!r}')
    out = dict(dict(score_thr=0.5, weight=1.0), **given)
    for key, low in (('score_thr', 0.0), ('weight', 0.0)):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                v < low or (key == 'score_thr' and not 0 < v <= 1):
            raise ValueError(f'`pseudo_labels` needs 0 < score_thr <= 1 and weight >= 0, got '
                             f'{key}={v!r}')
        out[key] = float(v)
    if unlabeled is None:
        raise ValueError('`pseudo_labels` labels the images of `unlabeled_dataloader` with the '
                         "teacher's detections: give `unlabeled_dataloader` too")
    return out


def _pseudo_codebase(model: nn.Module):
    """The codebase that turns the teacher's predictions into labels (``pseudo_labels``)."""
    cb = _codebase_serving(
        model, 'pseudo_labels',
        "GFPDistillHook(pseudo_labels=...) labels images with the teacher's detections, which "
        'mmgfp does for MMDetection detectors, not {title} models: leave `pseudo_labels` out '
        "and let `losses` teach on the images without labels (e.g. type='kl' on a "
        "classifier's head)")
    cb.check_pseudo_labels(model)
    return cb


def _box_codebase(model: nn.Module):
    """The codebase that gives ``model``'s training batches' boxes, for ``fg_mse``."""
    return _codebase_serving(
        model, 'gt_boxes',
        "GFPDistillHook: type='fg_mse' needs the batch's ground-truth boxes, which mmgfp "
        "reads for MMDetection detectors, not {title} models: use type='kl' on a classifier's "
        "head, or 'cwd' on a module that outputs feature maps")


def _codebase_serving(model: nn.Module, method: str, refusal: str):
    """The codebase of ``model`` whose class implements the :class:`Codebase` method
    ``method``; else ValueError ``refusal`` with ``{title}`` the codebase's (or the model's)
    name. A model of no codebase mmgfp serves is refused likewise."""
    from mmgfp.codebases import Codebase, codebase_of
    cb = codebase_of(model, default='none')  # None: a model of no codebase mmgfp serves
    if cb is None or getattr(type(cb), method) is getattr(Codebase, method):
        title = getattr(cb, 'title', None) or type(model).__name__
        raise ValueError(refusal.format(title=title))
    return cb


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model

