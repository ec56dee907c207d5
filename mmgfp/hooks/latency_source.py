"""Where FisherPruningHook gets its latency table: a file, or a profile at the start of training.

``latency_table='TABLE.json'`` loads a table made by ``tools/profile_latency.py`` (checked when
the hook is built, so a typo fails before training). ``latency_table=dict(...)`` profiles the
model when training starts, on the main process only, with the settings given (device, dtype,
channels_last, batch, input_size, threads and the profiler's sampling options); the table is
written to ``out`` (default ``WORK_DIR/latency_table.json``; a later run with the same device
and settings reuses it, e.g. on resume) and sent to every other rank, so all ranks prune with
the same times. The other ranks wait in that broadcast while the main process profiles; a
profile longer than the process group's timeout (``env_cfg.dist_cfg.timeout`` in seconds, else
torch's default) fails there, so for large models profile with the tool first and give the file.
"""
import copy
import os.path as osp
from typing import Dict, Optional, Tuple, Union

from mmengine.dist import broadcast_object_list, get_world_size, is_main_process

from mmgfp.core import LatencyTable

# profile_latency's settings a config may give (the rest: model, forward pass, groups).
PROFILE_KEYS = ('out', 'device', 'dtype', 'channels_last', 'batch', 'input_size', 'threads',
                'points', 'rounds', 'warmup', 'tol', 'max_points', 'align', 'force')
TABLE_NAME = 'latency_table.json'


def check_source(source: Union[str, Dict, None], delta: str,
                 metric: str) -> Tuple[Optional[LatencyTable], Optional[Dict]]:
    """(table loaded from a path, profile settings): what the hook's ``latency_table`` means.

    Raises:
        ValueError: Latency is asked for without a source, the path does not exist, or the
            profile settings hold unknown keys or bad values.
    """
    if source is None:
        if 'latency' in (delta, metric):
            arg = 'delta' if delta == 'latency' else 'target_metric'
            raise ValueError(f"`{arg}='latency'` needs `latency_table`: a table of the deploy "
                             'device made with tools/profile_latency.py, or dict(...) '
                             'settings to profile the model when training starts')
        return None, None
    if isinstance(source, dict):
        return None, check_profile(source)
    if not isinstance(source, str):
        raise ValueError(f'`latency_table` must be the path of a JSON table made by '
                         f'tools/profile_latency.py or a dict of profile settings, but got '
                         f'{source!r}')
    if not osp.isfile(source):
        raise ValueError(f'`latency_table` {source!r} does not exist; make it with '
                         f'tools/profile_latency.py CONFIG --out {source}, or give '
                         'dict(input_size=(H, W), ...) to profile when training starts')
    return LatencyTable.load(source), None


def check_profile(settings: Dict) -> Dict:
    """The profile settings, checked (names and the values a typo would spoil)."""
    unknown = sorted(set(settings) - set(PROFILE_KEYS))
    if unknown:
        raise ValueError(f'`latency_table` profile settings: unknown keys {unknown}; '
                         f'known: {list(PROFILE_KEYS)}')
    size = settings.get('input_size')
    if size is not None and (not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
            isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f'`latency_table` input_size must be (H, W), two positive integers, '
                         f'but got {size!r}')
    batch = settings.get('batch', 1)
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f'`latency_table` batch must be a positive integer, but got {batch!r}')
    if settings.get('dtype', 'fp32') not in ('fp32', 'fp16'):
        raise ValueError(f"`latency_table` dtype must be 'fp32' or 'fp16', but got "
                         f"{settings['dtype']!r}")
    device = settings.get('device')
    if device is not None and (not isinstance(device, str) or
                               not device.split(':')[0] in ('cpu', 'cuda')):
        raise ValueError(f"`latency_table` device must be 'cpu' or 'cuda[:N]', but got "
                         f'{device!r}')
    threads = settings.get('threads')
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f'`latency_table` threads must be a positive integer, but got '
                         f'{threads!r}')
    if not isinstance(settings.get('channels_last', False), bool):
        raise ValueError(f'`latency_table` channels_last must be True or False, but got '
                         f"{settings['channels_last']!r}")
    return dict(settings)


def profile_at_start(runner, model, groups, settings: Dict) -> Tuple[LatencyTable, str]:
    """Profile a copy of ``model`` on the main process and share the table with every rank.

    Returns:
        tuple: The table and the file it was written to (or reused from).

    Raises:
        RuntimeError: On the other ranks, when the main process failed to profile (it raises
            its own error): every rank stops instead of waiting for a table that never comes.
    """
    payload, error = [None, None], None
    if is_main_process():
        try:
            table, out = _profile(runner, model, groups, settings)
            payload = [table.to_dict(), out]
        except Exception as e:  # noqa: BLE001  (re-raised below, after the other ranks hear)
            if get_world_size() == 1:
                raise
            error, payload = e, [None, f'{type(e).__name__}: {e}'[:300]]
    if get_world_size() > 1:
        broadcast_object_list(payload, src=0)  # every rank waits here: always send something
    if error is not None:
        raise error
    if payload[0] is None:
        raise RuntimeError(f'FisherPruningHook: the main process could not profile the latency '
                           f'table ({payload[1]}); its log has the details')
    return LatencyTable.from_dict(payload[0]), payload[1]


def _profile(runner, model, groups, settings: Dict) -> Tuple[LatencyTable, str]:
    from mmgfp.apis.inputs import (default_input_size, demo_batch, pipeline_input_size,
                                   tensor_forward)
    from mmgfp.apis.latency.profile import profile_latency
    s = dict(settings)
    out = s.pop('out', None) or osp.join(runner.work_dir, TABLE_NAME)
    size = tuple(s.pop('input_size', None) or pipeline_input_size(runner.cfg) or
                 default_input_size(runner.cfg))
    device = s.pop('device', None) or str(next(model.parameters()).device)
    batch = s.pop('batch', 1)
    runner.logger.info(f'FisherPruningHook: profiling the latency table on {device} (batch '
                       f'{batch}, input {size[0]}x{size[1]}, {s.get("dtype", "fp32")}) into '
                       f'{out}; this takes minutes, once per device and settings')
    copy_ = copy.deepcopy(model)  # profile_latency moves and casts it; training keeps its own
    data = demo_batch(copy_, batch, size, seed=0)
    table = profile_latency(copy_, tensor_forward(data), groups, device=device, batch=batch,
                            input_size=size, config=str(runner.cfg.filename or ''), out=out,
                            **s)
    del copy_
    return table, out
