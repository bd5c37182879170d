"""Host batches prepared ahead of the device: in a background thread, or in worker processes.

Batch ``k`` is a pure function of ``k`` (`GraphBatcher.batch`), so the batches can be made
anywhere: ``workers=0`` makes them in one background thread; ``workers=N`` in N processes of
grain (``grain.MapDataset.range(...).map(...)`` with multiprocess prefetch): the workers take
groups of `GROUP` consecutive batches in turn, each group comes back packed in one buffer (one
shared-memory transfer instead of one per array), and the batches arrive in order,
bit-identical to the thread's. A worker that raises stops the run with its error, after the
batches before it; one that dies (killed, out of memory) with grain's error naming its exit code.
Workers start with ``spawn``: ``make_batch`` is pickled to each (a `GraphBatcher` and its
molecules; a memory-mapped store pickles as its path). Measured: docs/benchmarks.md.
No chemistry here.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Iterator, Tuple, Union


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or ``taskset``'s share,
    not the host's count), or ``os.cpu_count()`` where the platform has no affinity."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_workers(workers: Union[int, str], local_devices: int = 1, cores: int = 0) -> int:
    """``data.workers`` as a number of worker processes. ``"auto"``: the usable cores less two
    (the training process and its XLA threads), at most 4 per local device, 0 on a host of two
    cores or fewer (a thread is as fast there: docs/benchmarks.md)."""
    if isinstance(workers, str):
        if workers == "auto":
            cores = cores or usable_cores()
            return max(0, min(cores - 2, 4 * max(1, local_devices)))
        if not workers.strip().isdigit():
            raise ValueError(
                f"data.workers={workers!r}: a number of worker processes (0: a thread) or 'auto'"
            )
        workers = int(workers)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"data.workers={workers!r}: a number of worker processes (0: a thread) or 'auto'")
    return workers


class _Group:
    """j -> (the ``per`` batches k of group j packed (`_pack`), None), or with the batches before
    the one that raised and its error: what a worker returns (picklable when ``make_batch`` is). One buffer per group: one shared-memory transfer, not one per array
    of every batch."""

    def __init__(self, make_batch, start: int, stop: int, per: int):
        self.make_batch, self.start, self.stop, self.per = make_batch, start, stop, per

    def __call__(self, j):
        first = self.start + int(j) * self.per
        ks, batches = [], []
        for k in range(first, min(first + self.per, self.stop)):
            try:
                batches.append(self.make_batch(k))
            except Exception as e:  # the batches before it still arrive, then the error
                return _pack(ks, batches), _portable(e, k)
            ks.append(k)
        return _pack(ks, batches), None


def _portable(e: Exception, k: int) -> Exception:
    """``e`` with the batch and the worker's traceback as a note, as it will cross to the training
    process: an exception that does not survive pickling becomes a RuntimeError with its text."""
    import pickle
    import traceback

    e.add_note(f"in batch {k}, made in a worker process:\n{traceback.format_exc()}")
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}\n" + "\n".join(getattr(e, "__notes__", [])))


def _pack(ks, batches):
    """(one uint8 buffer holding every array of ``batches``, what `_unpack` needs to rebuild them)."""
    import jax
    import numpy as np

    leaves, treedef = jax.tree_util.tree_flatten(batches)
    leaves = [np.ascontiguousarray(x) for x in leaves]
    buf = np.empty(sum(x.nbytes for x in leaves), np.uint8)
    layout, at = [], 0
    for x in leaves:
        buf[at : at + x.nbytes] = x.reshape(-1).view(np.uint8)
        layout.append((at, x.dtype, x.shape))  # the dtype itself: bfloat16's .str is only '<V2'
        at += x.nbytes
    return buf, (ks, treedef, layout)


def _unpack(packed):
    """The (k, batch) items of a `_pack`ed group; the arrays are copies (the buffer is released)."""
    import jax
    import numpy as np

    buf, (ks, treedef, layout) = packed
    buf = np.asarray(buf)
    leaves = []
    for at, dtype, shape in layout:
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        leaves.append(buf[at : at + n].view(dtype).reshape(shape).copy())
    return list(zip(ks, jax.tree_util.tree_unflatten(treedef, leaves)))


GROUP = 16  # batches per transfer from a worker


def _grain_batches(make_batch, start: int, stop: int, workers: int) -> Iterator[Tuple]:
    import grain

    _absl_flags_parsed()
    groups = -(-(stop - start) // GROUP)
    # two groups per worker: one made while the other waits (one alone serialises worker and reader)
    options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
    # one thread and one group read ahead inside each worker: grain's defaults (16 threads, 500
    # elements) would let every worker run thousands of batches ahead of training, in memory
    inner = grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)
    ds = grain.MapDataset.range(0, groups).map(_Group(make_batch, start, stop, GROUP)).to_iter_dataset(inner)
    return _Flat(iter(ds.mp_prefetch(options, worker_init_fn=_worker_init)))


def _worker_init(index: int, count: int) -> None:
    """In each worker as it starts: die with the training process (Linux), whatever kills it
    (SIGKILL, the out-of-memory killer), instead of running on as an orphan."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class _Flat:
    """The (k, batch) items of the groups, one at a time; ``close`` stops grain's workers."""

    def __init__(self, groups):
        self.groups, self.pending, self.error = groups, [], None

    def __iter__(self):
        return self

    def __next__(self):
        while not self.pending:
            if self.error is not None:
                raise self.error
            packed, self.error = next(self.groups)
            self.pending = _unpack(packed)
        return self.pending.pop(0)

    def close(self):
        close = getattr(self.groups, "close", None)
        if close is not None:
            close()


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
            self._source = _grain_batches(make_batch, start, stop, workers)
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
        if close is not None:  # stops grain's workers, even if the thread still waits on one
            close()
