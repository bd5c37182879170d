"""Host batches prepared ahead of the device, in a background thread; no chemistry here."""

from __future__ import annotations

import queue
import threading


class Prefetcher:
    """Prepares batches ``start, start+1, ...`` in a background thread (bounded queue)."""

    def __init__(self, make_batch, start: int, stop: int, depth: int = 4):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

        def work():
            for k in range(start, stop):
                if self._stop.is_set():
                    return
                try:
                    item = (k, make_batch(k), None)
                except Exception as e:  # hand the error to the consumer
                    item = (k, None, e)
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
