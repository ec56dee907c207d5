"""Channel layouts and the union-find of channel spaces used by the tracer.

A *space* is a set of channels that some layer produces (a conv's output channels, say). A tensor's
channel axis is described by a :class:`Layout`: which spaces, in which order, lie along it (one
space for a plain conv output, several for a concatenation), and ``inner``, the number of
consecutive elements one channel occupies after a flatten (``(N, C, 7, 7) -> (N, C*49)``).
Spaces that must be pruned together are merged in :class:`SpaceSet`.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple


@dataclass
class LayerCall:
    """Shapes seen for one call of a conv/linear layer (per sample)."""
    module: str
    out_elems: int  # output elements per channel per sample (spatial size, scaled for RoIs)
    kernel: int  # weight elements per (in, out) channel pair
    batch: int


@dataclass(frozen=True)
class Layout:
    """Where channel spaces lie along one axis of a tensor.

    Args:
        ch_dim (int): The channel axis (non-negative).
        segs (tuple): ``((space_id, length), ...)`` in order along the axis.
        inner (int): Elements per channel along the axis. Defaults to 1.
    """
    ch_dim: int
    segs: Tuple[Tuple[int, int], ...]
    inner: int = 1

    @property
    def size(self) -> int:
        return sum(n for _, n in self.segs) * self.inner

    def moved(self, ch_dim: int) -> 'Layout':
        return Layout(ch_dim, self.segs, self.inner)


@dataclass
class _Space:
    size: int
    block: int = 1
    reasons: List[str] = field(default_factory=list)


class SpaceSet:
    """Union-find over channel spaces with size, block size and unprunable reasons."""

    def __init__(self):
        self._parent: List[int] = []
        self._spaces: Dict[int, _Space] = {}

    def new(self, size: int) -> int:
        sid = len(self._parent)
        self._parent.append(sid)
        self._spaces[sid] = _Space(int(size))
        return sid

    def find(self, sid: int) -> int:
        root = sid
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[sid] != root:  # path compression
            self._parent[sid], sid = root, self._parent[sid]
        return root

    def info(self, sid: int) -> _Space:
        return self._spaces[self.find(sid)]

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        sa, sb = self._spaces[ra], self._spaces[rb]
        if sa.size != sb.size:
            # Never expected from a correct trace; keep the model safe rather than fail.
            reason = f'coupled channel spaces of different sizes ({sa.size} vs {sb.size})'
            sa.reasons.append(reason)
            sb.reasons.append(reason)
            return ra
        if ra > rb:
            ra, rb, sa, sb = rb, ra, sb, sa
        self._parent[rb] = ra
        sa.block = sa.block * sb.block // math.gcd(sa.block, sb.block)
        sa.reasons.extend(r for r in sb.reasons if r not in sa.reasons)
        del self._spaces[rb]
        return ra

    def mark(self, sid: int, reason: str) -> None:
        reasons = self.info(sid).reasons
        if reason not in reasons:
            reasons.append(reason)

    def constrain_block(self, sid: int, block: int) -> None:
        sp = self.info(sid)
        sp.block = sp.block * block // math.gcd(sp.block, block)

    def roots(self) -> List[int]:
        return sorted(self._spaces)
