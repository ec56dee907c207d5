"""The pruning decision: which unit goes next, from Fisher importance over cost."""
import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch.nn as nn

from .cost import count, count_params, unit_costs
from .fisher import FisherRecorder
from .grouping import GroupSet
from .masks import ChannelMasker


@dataclass
class PruneRecord:
    """One removal: ``units`` of group ``key`` with normalised importance ``score``."""
    key: str
    units: List[int]
    score: float
    channels_left: int


class FisherPruner:
    """Masks, Fisher statistics and the choice of what to prune, for one model.

    Args:
        model (nn.Module): The model to prune.
        groups (GroupSet): Its groups.
        delta (str): Cost that normalises importance, ``'acts'`` (activation memory saved,
            the paper's default) or ``'flops'``. Defaults to 'acts'.
        min_channels (int): No group goes below this many channels. Defaults to 1.
        divisor (int): Kept channels of a group stay a multiple of this where its blocks allow
            (e.g. 8 for hardware-friendly widths). Defaults to 1.
        mask_on (str): Where masks are applied, see :class:`ChannelMasker` (same results,
            different cost). Defaults to 'auto'.
    """

    def __init__(self, model: nn.Module, groups: GroupSet, delta: str = 'acts',
                 min_channels: int = 1, divisor: int = 1, mask_on: str = 'auto'):
        if delta not in ('acts', 'flops'):
            raise ValueError(f"`delta` must be 'acts' or 'flops', but got {delta!r}")
        if min_channels < 1 or divisor < 1:
            raise ValueError(f'`min_channels` and `divisor` must be >= 1, got {min_channels} '
                             f'and {divisor}')
        self.model = model
        self.groups = groups
        self.delta = delta
        self.min_channels = min_channels
        self.divisor = divisor
        self.masker = ChannelMasker(model, groups, mask_on)
        self.recorder = FisherRecorder(self.masker)
        self.full = count(groups, lambda k: groups.groups[k].channels)
        self.full['params'] = sum(p.numel() for p in model.parameters())
        self.history: List[PruneRecord] = []

    def kept(self, key: str) -> int:
        return self.masker.num_kept(key)

    def remaining(self) -> Dict[str, float]:
        """FLOPs, activations and parameters remaining, as fractions of the unpruned model."""
        now = count(self.groups, self.kept)
        now['params'] = count_params(self.model, self.groups, self.kept)
        return {k: now[k] / self.full[k] if self.full[k] else 1.0 for k in now}

    def _step_units(self, block: int) -> int:
        return math.lcm(self.divisor, block) // block

    def _candidate(self, key: str, cost: float):
        g = self.groups.groups[key]
        keep = self.masker.keep[key]
        alive = keep.nonzero().flatten()
        step = self._step_units(g.block)
        floor = math.ceil(max(self.min_channels, 1) / g.block)
        floor = math.ceil(floor / step) * step
        k = len(alive) % step or step
        if len(alive) - k < max(floor, 1) or cost <= 0:
            return None
        fisher = self.recorder.fisher[key][alive]
        order = fisher.argsort()[:k]
        score = float(fisher[order].sum()) / (cost * k)
        return score, alive[order].tolist()

    def select(self) -> Optional[PruneRecord]:
        """The removal with the lowest Fisher importance per unit of cost, or None."""
        costs = unit_costs(self.groups, self.kept, self.delta)
        best = None
        for key, cost in costs.items():
            if self.recorder.hits[key] == 0:
                continue  # no gradient reached it (frozen layers): never rank zeros
            cand = self._candidate(key, cost)
            if cand is not None and (best is None or cand[0] < best[1]):
                best = (key, cand[0], cand[1])
        if best is None:
            return None
        key, score, units = best
        return PruneRecord(key, units, score, self.kept(key) - len(units) *
                           self.groups.groups[key].block)

    def step(self, num: int = 1,
             until: Optional[Callable[[], bool]] = None) -> List[PruneRecord]:
        """Remove up to ``num`` selections, then reset the Fisher statistics.

        Args:
            num (int): Selections to remove at most. Defaults to 1.
            until (callable, optional): Checked after every selection; the step ends early
                once it returns True (e.g. the target is reached), so a large ``num`` does
                not overshoot the target. Defaults to None.
        """
        done = []
        for _ in range(num):
            if done and until is not None and until():
                break
            rec = self.select()
            if rec is None:
                break
            for u in rec.units:
                self.masker.prune(rec.key, u)
            done.append(rec)
        self.history.extend(done)
        self.recorder.reset()
        return done

    def groups_without_gradient(self) -> List[str]:
        return [k for k, n in self.recorder.hits.items() if n == 0]

    def state_dict(self) -> Dict:
        return {'masks': self.masker.state_dict(), 'recorder': self.recorder.state_dict(),
                'history': [asdict(r) for r in self.history]}

    def load_state_dict(self, state: Dict) -> None:
        self.masker.load_state_dict(state['masks'])
        self.recorder.load_state_dict(state['recorder'])
        self.history = [PruneRecord(**r) for r in state.get('history', [])]
