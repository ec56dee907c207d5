"""Take the discrete decisions of a forward pass once, in the reference model, and replay them.

A masked model and its compact copy compute the same function up to float rounding (~1e-7).
Where a forward pass takes a discrete decision on such values (which proposals survive the
RPN's top-k and NMS, which boxes a cascade stage refines to, which FPN level an RoI is cut
from), a 1e-7 difference can flip it, and every output after it then differs by O(1) although
both models are right. :class:`Decisions` records what the reference decided and makes the
other model decide the same; the continuous values each decision is taken on (the outputs of
the RPN head and of every box head) are tapped in both models and compared with the outputs,
so a wrong layer before a decision is still seen.
"""
import copy
from contextlib import contextmanager
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

# (where, method, what is decided). ``where`` is a child attribute of the model, or '*' for
# every module that has the method. The owners of methods marked ``tap`` have their forward
# outputs compared.
DECISION_POINTS = (
    ('rpn_head', 'predict', 'proposals: top-k and NMS on the RPN scores', True),
    ('*', 'regress_by_class', 'the boxes a cascade stage passes to the next', True),
    ('*', 'map_roi_levels', 'the FPN level each RoI is cut from', False),
)


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detach(o) for o in obj) if not hasattr(obj, '_fields') else obj
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return copy.deepcopy(obj)


def find_points(model: nn.Module) -> List[Tuple[str, nn.Module, str, bool]]:
    """``(module name, module, method, tap)`` for every decision point of ``model``."""
    out = []
    for where, method, _, tap in DECISION_POINTS:
        if where == '*':
            mods = [(n, m) for n, m in model.named_modules() if callable(getattr(m, method, None))]
        else:
            mod = getattr(model, where, None)
            mods = [(where, mod)] if isinstance(mod, nn.Module) and callable(
                getattr(mod, method, None)) else []
        out += [(n, m, method, tap) for n, m in mods]
    return out


class Decisions:
    """Record a model's decisions (``recording``) or impose recorded ones (``replaying``).

    Args:
        model (nn.Module): The model whose decision points are patched while a context is
            open (instance attributes, removed on exit).
        recorded (Decisions, optional): What a reference model decided; given, the contexts
            replay it. Defaults to None (record).
    """

    def __init__(self, model: nn.Module, recorded: Optional['Decisions'] = None):
        self.model = model
        self.recorded = recorded
        self.calls: Dict[str, List[Any]] = {}
        self.taps: Dict[str, List[Any]] = {}
        self.outputs: Any = None  # set by the caller: the forward pass's outputs

    def counts(self) -> Dict[str, int]:
        """Calls seen per decision point (``'rpn_head.predict': 1``...)."""
        return {k: len(v) for k, v in self.calls.items() if v}

    def _wrap(self, key: str, fn):

        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)  # run it anyway: taps fire, side effects happen
            calls = self.calls.setdefault(key, [])
            if self.recorded is not None:
                ref = self.recorded.calls.get(key, [])
                if len(calls) >= len(ref):
                    raise RuntimeError(f'{key} was called more often than in the reference '
                                       f'forward pass ({len(ref)} times): the two models do '
                                       'not take the same path')
                out = _detach(ref[len(calls)])
            calls.append(_detach(out))
            return out

        return wrapper

    def _tap(self, key: str):

        def hook(module, inputs, output):
            self.taps.setdefault(key, []).append(_detach(output))

        return hook

    @contextmanager
    def active(self):
        """Patch every decision point of the model for the duration of the block."""
        patched, handles, tapped = [], [], set()
        try:
            for name, mod, method, tap in find_points(self.model):
                key = f'{name}.{method}' if name else method
                if method in vars(mod):
                    continue  # already patched (shared module)
                setattr(mod, method, self._wrap(key, getattr(mod, method)))
                patched.append((mod, method))
                if tap and id(mod) not in tapped:
                    tapped.add(id(mod))
                    handles.append(mod.register_forward_hook(self._tap(name or 'model')))
            yield self
        finally:
            for mod, method in patched:
                delattr(mod, method)
            for h in handles:
                h.remove()
