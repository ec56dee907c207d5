"""Timing on a device: settings, a median timer, whole-model latency (interleaved)."""
import statistics
from contextlib import contextmanager
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from mmgfp.core.latency import config_name
from mmgfp.apis.latency.runner import (DTYPES, Timer, device_name, minor_faults,  # noqa: F401
                                       steady_allocator)


# -- settings ------------------------------------------------------------------------------------
def make_key(device: str, dtype: str, channels_last: bool, batch: int, threads: int,
             input_size: Sequence[int], model: str, config: str) -> Dict:
    """The settings a table was measured with, as plain JSON types (``torch.__version__`` is
    a ``TorchVersion``, which a checkpoint holding the key could not load with
    ``weights_only=True``); the config named by :func:`~mmgfp.core.latency.config_name`."""
    return {'device': str(device_name(device)), 'torch': str(torch.__version__),
            'dtype': str(dtype),
            'channels_last': bool(channels_last), 'batch': int(batch), 'threads': int(threads),
            'input_size': [int(s) for s in input_size], 'model': model,
            'config': config_name(config)}


def check_settings(device: str, dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f'`dtype` must be one of {tuple(DTYPES)}, but got {dtype!r}')
    if not (device == 'cpu' or device.startswith('cuda')):
        raise ValueError(f"`device` must be 'cpu' or 'cuda[:N]', but got {device!r}")
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'`device` is {device!r}, but torch sees no CUDA device here')


@contextmanager
def threads_set(threads: Optional[int]):
    """``torch.set_num_threads(threads)`` inside the block (no change for None)."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def prepare(model: nn.Module, device: str = 'cpu', dtype: str = 'fp32',
            channels_last: bool = False) -> nn.Module:
    """``model`` in eval mode on ``device``/``dtype``/memory format (in place). For fp16 a
    forward pre-hook casts the floating inputs of the model's forward (after its data
    preprocessor) to half."""
    model.eval().to(device)
    if dtype == 'fp16':
        model.half()

        def cast(mod, args, kwargs):
            conv = (lambda t: t.half() if isinstance(t, torch.Tensor) and t.is_floating_point()
                    else t)
            return tuple(conv(a) for a in args), {k: conv(v) for k, v in kwargs.items()}

        model.register_forward_pre_hook(cast, with_kwargs=True)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


# -- whole-model timing ----------------------------------------------------------------------------
def compare_latency(models: Dict[str, nn.Module], forward_fn: Callable[[nn.Module], Any],
                    device: str = 'cpu', rounds: int = 10, warmup: int = 2,
                    threads: Optional[int] = None,
                    faults: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Median forward time (ms) of each model, interleaved: every round times each model once
    in rotating order, so drift and other processes hit all alike. Models must already be on
    their device/dtype (see :func:`prepare`). On the CPU the allocator is fixed first
    (:func:`~mmgfp.apis.latency.runner.steady_allocator`).

    Args:
        faults (dict, optional): Filled with each model's minor page faults per timed run (a
            forward that faults in thousands of pages is timing the allocator).
    """
    names = list(models)
    times: Dict[str, List[float]] = {n: [] for n in names}
    counts = {n: 0 for n in names}
    if device == 'cpu':
        steady_allocator()
    timer = Timer(device, rounds=1, warmup=0)
    with threads_set(threads), torch.no_grad():
        for _ in range(warmup):
            for n in names:
                forward_fn(models[n])
        for r in range(rounds):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                before = minor_faults()
                times[n].append(timer(lambda: forward_fn(models[n])) / 1e3)
                counts[n] += minor_faults() - before
    if faults is not None:
        faults.update({n: counts[n] / max(rounds, 1) for n in names})
    return {n: statistics.median(t) for n, t in times.items()}


def measure_latency(model: nn.Module, forward_fn: Callable[[nn.Module], Any],
                    device: str = 'cpu', rounds: int = 10, warmup: int = 2,
                    threads: Optional[int] = None) -> float:
    """Median forward time of one (prepared) model in milliseconds."""
    return compare_latency({'model': model}, forward_fn, device, rounds, warmup,
                           threads)['model']
