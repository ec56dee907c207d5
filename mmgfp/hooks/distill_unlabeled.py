"""Images without labels for :class:`GFPDistillHook`: the data loader's config, and an endless
stream of its batches that a resumed run continues where the interrupted one stopped."""
import copy
import logging
from typing import Iterable, Optional

from mmengine.logging import print_log

#: Keys of the training data loader that an ``unlabeled_dataloader`` without them inherits.
#: Not its ``collate_fn`` or ``batch_sampler``: those may read the labels (mmyolo's
#: ``yolov5_collate``) or data infos images without labels lack (mmdet's
#: ``AspectRatioBatchSampler`` reads width and height); MMEngine's defaults need neither.
INHERITED = ('batch_size', 'num_workers', 'persistent_workers', 'pin_memory')


def train_loader_settings(runner) -> Optional[dict]:
    """What an ``unlabeled_dataloader`` may inherit from the Runner's training data loader:
    its config where the Runner has one (``runner.cfg.train_dataloader``), else the keys of
    :data:`INHERITED` read from the built loader, as for a Runner made in Python
    (``Runner(model=..., train_dataloader=...)``, whose ``cfg`` is empty). None without either."""
    cfg = runner.cfg.get('train_dataloader')
    if isinstance(cfg, dict):
        return cfg
    try:
        loader = runner.train_dataloader  # built by now (before_train)
    except AttributeError:  # no train loop (None): nothing to inherit
        return None
    out = {k: getattr(loader, k) for k in INHERITED if getattr(loader, k, None) is not None}
    if 'batch_size' not in out:  # a loader with a batch sampler
        size = getattr(getattr(loader, 'batch_sampler', None), 'batch_size', None)
        if size is not None:
            out['batch_size'] = size
    return out or None


def unlabeled_loader_cfg(given, train_cfg: Optional[dict]) -> dict:
    """The ``unlabeled_dataloader`` config to build: ``given`` (a data loader config with at
    least ``dataset``) with the keys of :data:`INHERITED` it lacks taken from the Runner's
    ``train_dataloader`` (``persistent_workers`` only where there are workers), and an
    ``InfiniteSampler`` (shuffled) unless it names a sampler."""
    if not isinstance(given, dict) or not isinstance(given.get('dataset'), dict):
        raise ValueError('GFPDistillHook: `unlabeled_dataloader` is a data loader config like '
                         '`train_dataloader`, with at least `dataset=dict(type=...)`, but got '
                         f'{given!r}')
    cfg = copy.deepcopy(dict(given))
    for key in INHERITED:
        if key not in cfg and train_cfg is not None and key in train_cfg:
            cfg[key] = copy.deepcopy(train_cfg[key])
    if 'batch_size' not in cfg:
        raise ValueError('GFPDistillHook: `unlabeled_dataloader` needs `batch_size`: the '
                         "Runner's training data loader gives none to take, so set it in "
                         '`unlabeled_dataloader`')
    cfg.setdefault('num_workers', 0)
    if not cfg['num_workers'] and 'persistent_workers' not in given:
        cfg.pop('persistent_workers', None)  # torch refuses it without workers
    cfg.setdefault('sampler', dict(type='InfiniteSampler', shuffle=True))
    return cfg


class UnlabeledBatches:
    """Batches of a data loader without end: a loader that runs out starts again (the
    sampler's next epoch). ``skip`` batches are drawn and dropped before the first one is
    given, as MMEngine's ``IterBasedTrainLoop`` advances its loader on resume.

    Args:
        loader (Iterable): The data loader.
        skip (int): Batches the interrupted run already used. Defaults to 0.
    """

    def __init__(self, loader: Iterable, skip: int = 0):
        self.loader = loader
        self.drawn = int(skip)  # batches used by this run and the ones it resumes
        self._epoch = 0
        self._iter = None
        self._skip = int(skip)  # still to draw and drop before the first batch

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip:
            print_log(f'GFPDistillHook: advancing the unlabelled data loader {self._skip} '
                      'batches, the ones the resumed run already used', logger='current',
                      level=logging.INFO)
            skip, self._skip = self._skip, 0
            for _ in range(skip):
                self._draw()
        self.drawn += 1
        return self._draw()

    def _draw(self):
        if self._iter is None:
            self._iter = iter(self.loader)
        try:
            batch = next(self._iter)
        except StopIteration:
            self._epoch += 1
            for sampler in (getattr(self.loader, 'sampler', None),
                            getattr(getattr(self.loader, 'batch_sampler', None), 'sampler',
                                    None)):
                if hasattr(sampler, 'set_epoch'):
                    sampler.set_epoch(self._epoch)
                    break
            self._iter = iter(self.loader)
            try:
                batch = next(self._iter)
            except StopIteration:
                raise RuntimeError('GFPDistillHook: the unlabelled data loader gives no batch '
                                   '(an empty data set, or drop_last with fewer images than '
                                   'batch_size)') from None
        return batch
