"""The pruning decision: which unit goes next, from Fisher importance over cost."""
import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from .cost import DELTAS, count, count_params, unit_costs
from .fisher import FisherRecorder
from .grouping import GroupSet
from .latency import LatencyTable, load_table
from .masks import ChannelMasker


# A removal that saves no time on the table's staircase may grow by up to this many steps.
LOOKAHEAD = 8


def plan_removal(units: int, block: int, divisor: int = 1,
                 min_channels: int = 1) -> Optional[Tuple[int, int, int]]:
    """How many units the next removal of a group takes, as :class:`FisherPruner` plans it.

    A step is the fewest units that keep the group's channels a multiple of ``divisor``; the
    removal brings the group down to a multiple of its step, or by one step where it is on
    one. The floor is ``min_channels`` in units, rounded up to whole steps (at least one).

    Args:
        units (int): Units of the group still alive.
        block (int): Channels per unit.
        divisor (int): Kept channels stay a multiple of this. Defaults to 1.
        min_channels (int): The group never goes below this many channels. Defaults to 1.

    Returns:
        tuple | None: ``(units the removal takes, step, floor)``, or None where the removal
        would go below the floor (the group is no longer considered).
    """
    step = math.lcm(divisor, block) // block
    floor = math.ceil(max(min_channels, 1) / block)
    floor = max(math.ceil(floor / step) * step, 1)
    k = units % step or step
    return None if units - k < floor else (k, step, floor)


def look_ahead(table: LatencyTable, groups: GroupSet, kept: Callable[[str], int], key: str,
               plan: Tuple[int, int, int], cost: float) -> Tuple[int, float]:
    """On a flat stretch of the table's staircase, the shortest removal of group ``key`` (up
    to ``LOOKAHEAD`` more steps, never below the floor) that saves time.

    Args:
        table (LatencyTable): The latency table (only its ``saved`` is asked).
        groups (GroupSet): The model's groups.
        kept (callable): Group key -> channels kept now.
        key (str): The group.
        plan (tuple): ``(units, step, floor)`` of its next removal (:func:`plan_removal`).
        cost (float): Time that removal saves per unit; a positive one is kept as it is.

    Returns:
        tuple: ``(units, time saved per unit)``; the time is still <= 0 where no removal in
        reach saves any.
    """
    k, step, floor = plan
    block = groups.groups[key].block
    units = kept(key) // block
    for _ in range(LOOKAHEAD):
        if cost > 0 or units - (k + step) < floor:
            break
        k += step
        cost = table.saved(groups, kept, key, k * block) / k
    return k, cost


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
            the paper's default), ``'flops'`` or ``'latency'`` (time saved on the device of
            ``latency_table``). Defaults to 'acts'.
        min_channels (int): No group goes below this many channels. Defaults to 1.
        divisor (int | str): Kept channels of a group stay a multiple of this where its
            blocks allow (e.g. 8 for hardware-friendly widths); ``'auto'`` takes each group's
            multiple from ``latency_table`` (the lcm of the ``align`` of the layers making its
            channels, 1 where time is smooth). Defaults to 1.
        mask_on (str): Where masks are applied, see :class:`ChannelMasker` (same results,
            different cost). Defaults to 'auto'.
        latency_table (LatencyTable | str, optional): Measured layer times of the deploy
            device (or a path to one); needed for ``delta='latency'`` and ``divisor='auto'``,
            and adds ``'latency'`` to :meth:`remaining`. Defaults to None.
    """

    def __init__(self, model: nn.Module, groups: GroupSet, delta: str = 'acts',
                 min_channels: int = 1, divisor: Union[int, str] = 1, mask_on: str = 'auto',
                 latency_table: Union[LatencyTable, str, None] = None):
        if delta not in DELTAS:
            raise ValueError(f'`delta` must be one of {DELTAS}, but got {delta!r}')
        if divisor != 'auto' and (not isinstance(divisor, int) or divisor < 1):
            raise ValueError(f"`divisor` must be a positive integer or 'auto', but got "
                             f'{divisor!r}')
        if not isinstance(min_channels, int) or min_channels < 1:
            raise ValueError(f'`min_channels` must be >= 1, but got {min_channels!r}')
        self.table = load_table(latency_table)
        if self.table is None and (delta == 'latency' or divisor == 'auto'):
            what = "delta='latency'" if delta == 'latency' else "divisor='auto'"
            raise ValueError(f'{what} needs `latency_table`, the measured layer times of the '
                             'deploy device; make one with tools/profile_latency.py')
        if self.table is not None:
            self.table.check_groups(groups)
        self.model = model
        self.groups = groups
        self.delta = delta
        self.min_channels = min_channels
        self.divisor = divisor
        self.divisors = {g.key: self.table.group_align(groups, g.key) if divisor == 'auto'
                         else divisor for g in groups.prunable}
        self.masker = ChannelMasker(model, groups, mask_on)
        self.recorder = FisherRecorder(self.masker)
        self.full = count(groups, lambda k: groups.groups[k].channels)
        self.full['params'] = sum(p.numel() for p in model.parameters())
        if self.table is not None:
            self.full['latency'] = self.table.total_us
        self.history: List[PruneRecord] = []

    def kept(self, key: str) -> int:
        return self.masker.num_kept(key)

    def _kept_now(self) -> Callable[[str], int]:
        """``kept`` read once per group: cost counts ask for the same widths thousands of
        times in one selection, and each read of a mask is a tensor reduction."""
        counts = {k: self.masker.num_kept(k) for k in self.groups.groups}
        return counts.__getitem__

    def predicted_latency(self) -> float:
        """Predicted forward time (us) of the model with the current masks (needs a table)."""
        if self.table is None:
            raise ValueError('predicted_latency() needs `latency_table`; make one with '
                             'tools/profile_latency.py')
        return self.table.predict(self.groups, self._kept_now())

    def remaining(self) -> Dict[str, float]:
        """FLOPs, activations and parameters remaining, as fractions of the unpruned model;
        with a latency table also ``'latency'``, the predicted time over the unpruned one."""
        kept = self._kept_now()
        now = count(self.groups, kept)
        now['params'] = count_params(self.model, self.groups, kept)
        if self.table is not None:
            now['latency'] = self.table.predict(self.groups, kept)
        return {k: now[k] / self.full[k] if self.full[k] else 1.0 for k in now}

    def _plan(self, key: str) -> Optional[Tuple[torch.Tensor, int, int, int]]:
        """(alive units, units the next removal takes, step, floor), None at the floor
        (:func:`plan_removal`)."""
        alive = self.masker.keep[key].nonzero().flatten()
        plan = plan_removal(len(alive), self.groups.groups[key].block, self.divisors[key],
                            self.min_channels)
        return None if plan is None else (alive, *plan)

    def _candidate(self, key: str, alive: torch.Tensor, k: int, cost: float):
        if cost <= 0:
            return None
        fisher = self.recorder.fisher[key][alive]
        order = fisher.argsort()[:k]
        score = float(fisher[order].sum()) / (cost * k)
        return score, alive[order].tolist()

    def select(self) -> Optional[PruneRecord]:
        """The removal with the lowest Fisher importance per unit of cost, or None."""
        plans = {}
        for g in self.groups.prunable:
            if self.recorder.hits[g.key] == 0:
                continue  # no gradient reached it (frozen layers): never rank zeros
            plan = self._plan(g.key)
            if plan is not None:
                plans[g.key] = plan
        kept = self._kept_now()
        costs = unit_costs(self.groups, kept, self.delta, self.table,
                           {key: plan[1] for key, plan in plans.items()})
        best = None
        for key, plan in plans.items():
            k, cost = plan[1], costs[key]
            if self.delta == 'latency' and cost <= 0:
                k, cost = look_ahead(self.table, self.groups, kept, key, plan[1:], cost)
            cand = self._candidate(key, plan[0], k, cost)
            if cand is not None and (best is None or cand[0] < best[1]):
                best = (key, cand[0], cand[1])
        if best is None:
            return None
        key, score, units = best
        return PruneRecord(key, units, score, kept(key) - len(units) *
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
