"""Group Fisher importance, accumulated from activations and gradients while training.

For a unit ``i`` (a channel, or a block of channels) of a group, with one shared mask ``m_i`` at
every place the group is consumed::

    g_{n,i} = dL_n/dm_i = sum_{consumers l} sum_{positions} a^l_{n,i} * dL/d(m_i a^l_{n,i})
    F_i     = sum_n g_{n,i}^2       (accumulated over iterations until the next pruning step)

The inner sum runs over every consumer and every call of it (all FPN levels of a shared head)
*before* squaring, per sample. Calls whose batch is not the sample count (the RoIs of an mmdet
RoI head) are folded back onto their images: row by row with the sample index a registered
:class:`RowSource` module gave for them (an RoI extractor's ``rois[:, 0]``), else, for a batch
that is a multiple of the sample count, as equal blocks ordered image by image. Images contribute
uneven numbers of RoIs, so only the first is exact; it is what keeps the statistics of ranks
that see different RoI counts equal to one process's under DDP.
"""
import warnings
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .masks import ChannelMasker


class RowSource:
    """Register module types whose calls tell which sample each row of a later batch is from.

    ``fn(module, inputs)`` returns a 1-d integer tensor: for each row of the batch that the
    layers after ``module`` see, the index of its sample in the iteration's batch (e.g. mmdet's
    RoI extractors: ``rois[:, 0]``). Subclasses of a registered type count as registered.
    """
    registry: Dict[type, Callable] = {}

    @classmethod
    def register(cls, module_type: type, fn: Callable) -> None:
        cls.registry[module_type] = fn

    @classmethod
    def lookup(cls, module: nn.Module) -> Optional[Callable]:
        for t, fn in cls.registry.items():
            if isinstance(module, t):
                return fn
        return None


class FisherRecorder:
    """Accumulate group Fisher information through a :class:`ChannelMasker`'s hooks.

    Usage per training iteration: ``begin_iter(num_samples)``, forward and backward,
    ``end_iter()``. ``scores()`` reads the accumulated Fisher; ``reset()`` clears it.

    Args:
        masker (ChannelMasker): Masks of the model; the recorder taps its consumer hooks.
    """

    def __init__(self, masker: ChannelMasker):
        self.masker = masker
        self.groups = masker.groups
        self.fisher: Dict[str, torch.Tensor] = {
            k: torch.zeros(v.numel(), dtype=torch.float64) for k, v in masker.keep.items()}
        self.hits: Dict[str, int] = {k: 0 for k in masker.keep}
        self.iters = 0
        self.skipped = 0  # iterations left out for non-finite gradients
        self._buf: Dict[str, torch.Tensor] = {}
        self._buf_hits: Dict[str, int] = {}
        self._n = 0
        self._warned = False
        self._plans: Dict[str, tuple] = {}
        self._rows: List[torch.Tensor] = []  # sample index per row, noted in this iteration
        self._row_handles: List = []
        self._sealed = False  # the terms of this iteration came from record_from
        self._paused = False  # a side pass runs (paused)

    def start(self) -> None:
        self.masker.attach()
        self.masker.tap = self._on_forward
        if not self._row_handles:
            for m in self.masker.model.modules():
                fn = RowSource.lookup(m)
                if fn is not None:
                    self._row_handles.append(m.register_forward_pre_hook(
                        lambda mod, args, _fn=fn: self._note_rows(_fn(mod, args))))

    def stop(self) -> None:
        self.masker.tap = None
        self._buf, self._buf_hits = {}, {}
        self._rows, self._sealed = [], False
        for h in self._row_handles:
            h.remove()
        self._row_handles = []

    def begin_iter(self, num_samples: int) -> None:
        if num_samples < 1:
            raise ValueError(f'num_samples must be positive, got {num_samples}')
        self._n = num_samples
        self._buf, self._buf_hits = {}, {}
        self._rows, self._sealed = [], False

    @contextmanager
    def paused(self):
        """Forwards inside the block run with the masks but add nothing to the statistics:
        a side pass of the iteration whose samples are not the ones ``begin_iter`` counted
        (``GFPDistillHook``'s unlabelled batch), whose per-sample terms would otherwise be
        summed with theirs."""
        tap, self.masker.tap = self.masker.tap, None
        self._paused = True  # nor are its rows noted (an RoI extractor's, say)
        try:
            yield
        finally:
            self.masker.tap, self._paused = tap, False

    @property
    def recording(self) -> bool:
        """Whether gradients of the current iteration still add to its terms."""
        return self._n > 0 and not self._sealed

    def _note_rows(self, rows: Optional[torch.Tensor]) -> None:
        if self._n and rows is not None and not self._paused:
            self._rows.append(rows.detach().long().flatten())

    def _on_forward(self, layer: str, y: torch.Tensor) -> None:
        if self._n == 0:
            return  # forward outside a recorded iteration (e.g. validation with grad)
        # The rows noted last before this call with its batch size: a cascade's later stages
        # note their own RoIs before their heads run.
        rows = None
        if y.shape[0] != self._n:
            rows = next((r for r in reversed(self._rows) if r.numel() == y.shape[0]), None)
        y.register_hook(lambda grad, _y=y.detach(): self._on_grad(layer, _y, grad, rows))

    def record_from(self, loss: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
        """Take this iteration's terms from the gradient of ``loss`` alone.

        For an objective whose other terms should not rank channels (a distillation term,
        see ``GFPDistillHook(fisher='task')``): call it after the forward with the part of the
        loss that should, scaled as the backward will scale the whole loss (AMP's loss scale,
        gradient accumulation). It runs ``torch.autograd.grad(loss, params)`` with the graph
        kept: the recorder's hooks see the gradients of the tapped feature maps as that pass
        reaches them, exactly as in a backward (and free them as it goes), while no parameter
        gradient is accumulated (the returned ones are dropped), so the optimizer's backward of
        the whole loss that follows is unchanged; it adds nothing to this iteration's terms.

        Args:
            loss (Tensor): The part of the loss that ranks the channels.
            params (Sequence[Tensor]): The model's trainable parameters (every feature map
                with a gradient lies on a path from ``loss`` to one of them).

        Raises:
            RuntimeError: Outside a recorded iteration, or called twice in one; a model whose
                backward cannot run through ``torch.autograd.grad`` (reentrant activation
                checkpointing) is named.
        """
        if not self.recording:
            raise RuntimeError('record_from: no iteration is being recorded (call begin_iter '
                               'first), or its terms were already taken')
        params = [p for p in params if p.requires_grad]
        try:
            if params and loss.requires_grad:
                torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        except RuntimeError as e:
            if 'checkpoint' in str(e).lower():
                raise RuntimeError(
                    'record_from: the model uses reentrant activation checkpointing (with_cp='
                    'True), which torch.autograd.grad cannot run through; turn with_cp off or '
                    f"rank the channels by the whole loss (fisher='all'). torch said: {e}"
                ) from None
            raise
        finally:
            self._sealed = True

    def _plan(self, layer: str):
        """Per consumer layer: which slices of its input channels feed which recorded group."""
        plan = self._plans.get(layer)
        if plan is None:
            lc = self.masker._layers[layer]
            segs, off = [], 0
            for key, n in lc.segs:
                if key in self.fisher:
                    segs.append((key, off, n, self.groups.groups[key].block))
                off += n
            plan = self._plans[layer] = (lc, segs)
        return plan

    def _on_grad(self, layer: str, y: torch.Tensor, grad: torch.Tensor,
                 rows: Optional[torch.Tensor] = None) -> None:
        if self._sealed:  # record_from took this iteration's terms
            return
        lc, segs = self._plan(layer)
        # Sum a*g over positions in the activations' own precision (float32 keeps a relative
        # error near 1e-6 there) and only the per-channel sums in float64: converting whole
        # feature maps to float64 first doubles the memory traffic of the hook.
        prod = y * grad
        dims = [d for d in range(prod.dim()) if d not in (0, lc.ch_dim)]
        per_ch = (prod.sum(dims) if dims else prod).to(torch.float64)  # (B, C*inner)
        batch = per_ch.shape[0]
        if lc.inner > 1:
            per_ch = per_ch.view(batch, -1, lc.inner).sum(-1)
        per_ch = self._fold(per_ch, rows)
        for key, off, n, block in segs:
            part = per_ch[:, off:off + n]
            if block > 1:
                part = part.reshape(per_ch.shape[0], n // block, block).sum(-1)
            buf = self._buf.get(key)
            self._buf[key] = part if buf is None else buf + part
            self._buf_hits[key] = self._buf_hits.get(key, 0) + 1

    def _fold(self, per_ch: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, n = per_ch.shape[0], self._n
        if batch == n:
            return per_ch
        if rows is not None and batch and 0 <= int(rows.min()) and int(rows.max()) < n:
            return per_ch.new_zeros(n, per_ch.shape[1]).index_add_(
                0, rows.to(per_ch.device), per_ch)
        if batch % n == 0:  # RoIs of no registered source, assumed equal blocks per image
            return per_ch.view(n, batch // n, -1).sum(1)
        if not self._warned:
            warnings.warn(f'a layer saw a batch of {batch} for {n} samples; its Fisher terms '
                          'are summed over the batch as one sample')
            self._warned = True
        return torch.cat([per_ch.sum(0, keepdim=True),
                          per_ch.new_zeros(n - 1, per_ch.shape[1])])

    def end_iter(self, grad_scale: float = 1.0,
                 reduce: Optional[Callable[[torch.Tensor], None]] = None) -> bool:
        """Square the per-sample sums of this iteration and add them up.

        An iteration whose terms are not finite (an fp16 overflow that AMP's loss scaler will
        skip, or a diverging loss) is left out whole: one inf or NaN would otherwise make every
        later score of its groups inf or NaN until the next pruning step, and the comparison
        that picks the channel to prune meaningless. ``skipped`` counts such iterations.

        Args:
            grad_scale (float): Divided out of the gradients before squaring: AMP's loss
                scale, times the number of processes under DDP (which averages gradients, so
                the loss it optimises is the mean of the per-process losses). Defaults to 1.0.
            reduce (callable, optional): Sums a flat float64 tensor over processes in place.
                With it every process adds the same terms (all samples of the iteration), so
                the statistics, and what a checkpoint of any one process saves, are identical
                everywhere. Defaults to None.

        Returns:
            bool: False if the iteration was left out for non-finite terms.
        """
        terms = {k: (buf / grad_scale).pow(2).sum(0).cpu() for k, buf in self._buf.items()}
        hits = dict(self._buf_hits)
        if reduce is not None:  # after the reduction all processes agree on finiteness
            terms, hits = self._reduce(terms, hits, reduce)
        self._buf, self._buf_hits = {}, {}
        self._rows, self._sealed = [], False
        self._n = 0
        if not all(bool(torch.isfinite(t).all()) for t in terms.values()):
            self.skipped += 1
            return False
        for k, t in terms.items():
            self.fisher[k] += t
        for k, h in hits.items():
            self.hits[k] += h
        self.iters += 1
        return True

    def _reduce(self, terms: Dict[str, torch.Tensor], hits: Dict[str, int],
                reduce: Callable[[torch.Tensor], None]):
        # One collective per iteration. Every process passes every group in the same order,
        # zeros where its own batch gave no gradient, so the shapes always agree.
        keys = sorted(self.fisher)
        flat = torch.cat([terms[k] if k in terms else torch.zeros_like(self.fisher[k])
                          for k in keys] +
                         [torch.tensor([hits.get(k, 0) for k in keys], dtype=torch.float64)])
        reduce(flat)
        *parts, counts = flat.split([self.fisher[k].numel() for k in keys] + [len(keys)])
        return dict(zip(keys, parts)), {k: round(c) for k, c in zip(keys, counts.tolist())}

    def reset(self) -> None:
        for v in self.fisher.values():
            v.zero_()
        for k in self.hits:
            self.hits[k] = 0
        self.iters = 0

    def state_dict(self) -> Dict:
        return {'fisher': {k: v.clone() for k, v in self.fisher.items()},
                'hits': dict(self.hits), 'iters': self.iters, 'skipped': self.skipped}

    def load_state_dict(self, state: Dict) -> None:
        if set(state['fisher']) != set(self.fisher):
            raise ValueError('saved Fisher statistics do not match the model\'s groups')
        for k, v in state['fisher'].items():
            self.fisher[k].copy_(v)
        self.hits.update(state['hits'])
        self.iters = int(state['iters'])
        self.skipped = int(state.get('skipped', 0))  # older checkpoints have no count
