"""Host batches prepared ahead of the device: in a background thread, or in worker processes.

Batch ``k`` is a pure function of ``k`` (`GraphBatcher.batch`), so the batches can be made
anywhere: ``workers=0`` makes them in one background thread; ``workers=N`` in N processes of
grain (``grain.MapDataset.range(start, stop).map(make_batch)`` with multiprocess prefetch: worker
``i`` makes batches ``start + i, start + i + N, ...`` and they come back in order), bit-identical
to the thread's. A worker that raises stops the run with its error; one that dies (killed, out of
memory) with grain's error naming its exit code. Workers start with ``spawn``: ``make_batch`` is
pickled to each (a `GraphBatcher` and its molecules; a memory-mapped store pickles as its path).
No chemistry here.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Iterator, Tuple, Union


def resolve_workers(workers: Union[int, str], local_devices: int = 1, cores: int = 0) -> int:
    """``data.workers`` as a number of worker processes. ``"auto"``: the host's cores less two
    (the training process and its XLA threads), at most 4 per local device, 0 on a host of two
    cores or fewer (a thread is as fast there: docs/benchmarks.md)."""
    if isinstance(workers, str):
        if workers == "auto":
            cores = cores or os.cpu_count() or 1
            return max(0, min(cores - 2, 4 * max(1, local_devices)))
        if not workers.strip().isdigit():
            raise ValueError(
                f"data.workers={workers!r}: a number of worker processes (0: a thread) or 'auto'"
            )
        workers = int(workers)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"data.workers={workers!r}: a number of worker processes (0: a thread) or 'auto'")
    return workers


class _Numbered:
    """k -> (k, make_batch(k)): what a worker returns (picklable when ``make_batch`` is)."""

    def __init__(self, make_batch):
        self.make_batch = make_batch

    def __call__(self, k):
        return int(k), self.make_batch(int(k))


def _grain_batches(make_batch, start: int, stop: int, workers: int, depth: int) -> Iterator[Tuple]:
    import grain

    _absl_flags_parsed()
    options = grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, depth // workers)
    )
    ds = grain.MapDataset.range(start, stop).map(_Numbered(make_batch)).to_iter_dataset()
    return iter(ds.mp_prefetch(options))


def _absl_flags_parsed():
    """grain reads its own absl flags; an entry point has parsed them (absl's app.run), a library
    caller (tests, notebooks) may not have: their defaults then apply."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class Prefetcher:
    """Batches ``start, start+1, ..., stop-1`` prepared ahead (at most ``depth`` waiting), by a
    background thread (``workers=0``) or by ``workers`` grain worker processes."""

    def __init__(self, make_batch, start: int, stop: int, depth: int = 4, workers: int = 0):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        if workers:
            self._source = _grain_batches(make_batch, start, stop, workers, depth)
        else:
            self._source = ((k, make_batch(k)) for k in range(start, stop))

        def work():
            while not self._stop.is_set():
                try:
                    item = (*next(self._source), None)
                except StopIteration:
                    return
                except Exception as e:  # hand the error (a worker's too) to the consumer
                    item = (None, None, e)
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if item[2] is not None:
                    return

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def get(self):
        k, batch, err = self._q.get()
        if err is not None:
            raise err
        return k, batch

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        close = getattr(self._source, "close", None)
        if close is not None and not self._thread.is_alive():
            close()  # stops grain's workers (a generator: nothing to stop)
