"""latency_table=dict(...) under 2 gloo ranks: only the main process profiles; every rank prunes
with the table it made (and the file it wrote)."""
import traceback
from datetime import timedelta

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from mmgfp.core.latency import FORMAT

pytestmark = pytest.mark.slow

TABLE = {'format': FORMAT, 'key': {'device': 'cpu: rank 0', 'batch': 1},
         'total_us': 123.0, 'layers': {'conv': {'in': [3], 'out': [4, 8], 'us': [[1.0, 2.0]]}}}


class _Runner:
    work_dir = '/nonexistent'


def _rank(rank: int, init: str, result) -> None:
    from mmgfp.hooks import latency_source
    try:
        dist.init_process_group('gloo', init_method=init, rank=rank,
                                world_size=2)

        def fake_profile(runner, model, groups, settings):
            if rank != 0:
                raise AssertionError(f'rank {rank} profiled')
            return latency_source.LatencyTable.from_dict(TABLE), '/work/latency_table.json'

        latency_source._profile = fake_profile
        table, path = latency_source.profile_at_start(_Runner(), None, None, {})
        result[rank] = (table.to_dict(), path)
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001  (reported by the test)
        result[rank] = traceback.format_exc()


def _rank_failing(rank: int, init: str, result) -> None:
    from mmgfp.hooks import latency_source
    try:
        # a short timeout: without the fix rank 1 would wait for the table forever
        dist.init_process_group('gloo', init_method=init, rank=rank,
                                world_size=2, timeout=timedelta(seconds=30))

        def failing_profile(runner, model, groups, settings):
            raise ValueError('no such device: cuda:7')

        latency_source._profile = failing_profile
        try:
            latency_source.profile_at_start(_Runner(), None, None, {})
            result[rank] = 'returned'
        except Exception as e:  # noqa: BLE001  (what each rank raised is the result)
            result[rank] = f'{type(e).__name__}: {e}'
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001  (reported by the test)
        result[rank] = 'setup: ' + traceback.format_exc()


def _store(tmp_path) -> str:
    """A file rendezvous in the test's own folder: no port to draw, so none another process
    can take between drawing it and the ranks binding it."""
    return f"file://{tmp_path / 'rendezvous'}"


def test_only_rank_0_profiles_and_every_rank_gets_its_table(tmp_path):
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_rank, args=(_store(tmp_path), result), nprocs=2, join=True)
        result = dict(result)
    for rank in (0, 1):
        assert not isinstance(result[rank], str), result[rank]
        table, path = result[rank]
        assert path == '/work/latency_table.json'
        assert table['key'] == TABLE['key'] and table['total_us'] == 123.0
        assert table['layers']['conv']['us'] == [[1.0, 2.0]]


def test_a_failed_profile_stops_every_rank_with_its_reason(tmp_path):
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_rank_failing, args=(_store(tmp_path), result), nprocs=2, join=True)
        result = dict(result)
    assert result[0] == 'ValueError: no such device: cuda:7'  # the main process: its own error
    assert result[1].startswith('RuntimeError: FisherPruningHook: the main process could not '
                                'profile the latency table (ValueError: no such device: cuda:7)')
