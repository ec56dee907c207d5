"""Let torch >= 2.6 load MMEngine's own checkpoints under ``weights_only=True``.

``torch.load`` now refuses any class it does not know, and MMEngine 0.10.7 checkpoints carry the
message hub's ``HistoryBuffer`` and numpy arrays/scalars in ``meta``. Rather than turning
``weights_only`` off for every file (which would let any pickled code run), register just those
classes as safe globals. Called on ``import mmgfp``.
"""
import torch


def _numpy_globals():
    import numpy as np
    found = [np.ndarray, np.dtype]
    try:  # numpy >= 2 moved the pickling helpers to numpy._core
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    found += [multiarray._reconstruct, multiarray.scalar]
    found += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8,
                                          np.int16, np.int32, np.int64, np.uint8, np.bool_)]
    return found


def rebuild_history_buffer(log_history, count_history, max_length):
    """Unpickle a ``HistoryBuffer`` from plain lists (see :func:`_reduce_history_buffer`)."""
    from mmengine.logging import HistoryBuffer
    return HistoryBuffer(log_history, count_history, max_length)


def _reduce_history_buffer(buf):
    # By default a HistoryBuffer pickles its statistics methods as ``getattr(HistoryBuffer,
    # 'min')``; allowing ``getattr`` in weights-only loading would let a file reach any
    # attribute of any object. Pickle only its data, through a function of ours instead.
    return rebuild_history_buffer, (buf._log_history.tolist(), buf._count_history.tolist(),
                                    int(buf.max_length))


def register_safe_globals() -> None:
    """Add the classes MMEngine checkpoints need to torch's weights-only allow-list."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:  # torch < 2.4 loads everything anyway
        return
    safe = _numpy_globals()
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:
        pass
    else:
        import copyreg
        copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
        safe += [HistoryBuffer, rebuild_history_buffer]
    add(safe)
