"""Group Fisher importance, accumulated from activations and gradients while training.

For a unit ``i`` (a channel, or a block of channels) of a group, with one shared mask ``m_i`` at
every place the group is consumed::

    g_{n,i} = dL_n/dm_i = sum_{consumers l} sum_{positions} a^l_{n,i} * dL/d(m_i a^l_{n,i})
    F_i     = sum_n g_{n,i}^2       (accumulated over iterations until the next pruning step)

The inner sum runs over every consumer and every call of it (all FPN levels of a shared head)
*before* squaring, per sample. Calls whose batch is a multiple of the sample count (RoIs of an
mmdet RoI head, ordered image by image) are folded back onto their images.
"""
import warnings
from typing import Dict

import torch

from .masks import ChannelMasker


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
        self._buf: Dict[str, torch.Tensor] = {}
        self._n = 0
        self._warned = False

    def start(self) -> None:
        self.masker.attach()
        self.masker.tap = self._on_forward

    def stop(self) -> None:
        self.masker.tap = None
        self._buf = {}

    def begin_iter(self, num_samples: int) -> None:
        if num_samples < 1:
            raise ValueError(f'num_samples must be positive, got {num_samples}')
        self._n = num_samples
        self._buf = {}

    def _on_forward(self, layer: str, y: torch.Tensor) -> None:
        if self._n == 0:
            return  # forward outside a recorded iteration (e.g. validation with grad)
        y.register_hook(lambda grad, _y=y.detach(): self._on_grad(layer, _y, grad))

    def _on_grad(self, layer: str, y: torch.Tensor, grad: torch.Tensor) -> None:
        lc = self.masker._layers[layer]
        prod = (y * grad).to(torch.float64)
        dims = [d for d in range(prod.dim()) if d not in (0, lc.ch_dim)]
        per_ch = prod.sum(dims) if dims else prod  # (B, C*inner)
        batch = per_ch.shape[0]
        if lc.inner > 1:
            per_ch = per_ch.view(batch, -1, lc.inner).sum(-1)
        per_ch = self._fold(per_ch)
        off = 0
        for key, n in lc.segs:
            if key in self.fisher:
                block = self.groups.groups[key].block
                part = per_ch[:, off:off + n].reshape(per_ch.shape[0], n // block, block).sum(-1)
                buf = self._buf.get(key)
                self._buf[key] = part if buf is None else buf + part
                self.hits[key] += 1
            off += n

    def _fold(self, per_ch: torch.Tensor) -> torch.Tensor:
        batch, n = per_ch.shape[0], self._n
        if batch == n:
            return per_ch
        if batch % n == 0:  # e.g. RoIs, concatenated image by image
            return per_ch.view(n, batch // n, -1).sum(1)
        if not self._warned:
            warnings.warn(f'a layer saw a batch of {batch} for {n} samples; its Fisher terms '
                          'are summed over the batch as one sample')
            self._warned = True
        return torch.cat([per_ch.sum(0, keepdim=True),
                          per_ch.new_zeros(n - 1, per_ch.shape[1])])

    def end_iter(self, grad_scale: float = 1.0) -> None:
        """Square the per-sample sums of this iteration and add them up.

        Args:
            grad_scale (float): Loss scale of AMP, divided out. Defaults to 1.0.
        """
        for key, buf in self._buf.items():
            self.fisher[key] += (buf / grad_scale).pow(2).sum(0).cpu()
        self._buf = {}
        self._n = 0
        self.iters += 1

    def reset(self) -> None:
        for v in self.fisher.values():
            v.zero_()
        for k in self.hits:
            self.hits[k] = 0
        self.iters = 0

    def state_dict(self) -> Dict:
        return {'fisher': {k: v.clone() for k, v in self.fisher.items()},
                'hits': dict(self.hits), 'iters': self.iters}

    def load_state_dict(self, state: Dict) -> None:
        if set(state['fisher']) != set(self.fisher):
            raise ValueError('saved Fisher statistics do not match the model\'s groups')
        for k, v in state['fisher'].items():
            self.fisher[k].copy_(v)
        self.hits.update(state['hits'])
        self.iters = int(state['iters'])
