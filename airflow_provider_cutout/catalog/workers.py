"""The threads of a batch run: jobs taken one by one by ``max_concurrency`` workers, with progress lines,
a stop on the first bug a worker meets, and a kill that starts no new job."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from airflow_provider_cutout.catalog.progress import Progress


class Workers:
    """Run a step's jobs on the run's threads.

    :param progress: the run's shared counters and stop signals.
    :param concurrency: how many jobs run at once.
    :param interval: seconds between progress lines.
    :param report: writes a progress line.
    :param kill: stops the run (called when the main thread is interrupted: ``execution_timeout``).
    """

    def __init__(self, progress: Progress, concurrency: int, interval: float | None, report: Callable[[], None],
                 kill: Callable[[], None]) -> None:
        self.progress, self.concurrency, self.interval = progress, concurrency, interval
        self.report, self.kill = report, kill

    def work(self, jobs: Iterable[tuple[Any, ...]]) -> None:
        """Run jobs ``(function, *args)`` on ``concurrency`` threads that take them one by one (so the cost per
        job stays constant however many there are), with progress lines."""
        jobs = list(jobs)
        if not jobs:
            return
        queue, lock, killed = iter(jobs), threading.Lock(), self.progress.killed

        def worker() -> None:
            while not killed.is_set():  # told to stop: no new job starts, those in flight finish
                with lock:
                    job = next(queue, None)
                if job is None:
                    return
                job[0](*job[1:])

        self.progress.started = self.progress.started or time.monotonic()  # rates over the run's work so far
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="cutout-batch") as pool:
            workers = [pool.submit(worker) for _ in range(self.concurrency)]
            try:
                self._watch(workers)
            except BaseException:  # execution_timeout's AirflowTaskTimeout lands here, in the main thread
                self.kill()
                raise

    def _watch(self, workers: list[Any]) -> None:
        """Report progress until the workers are done; raise the first bug a worker met."""
        while True:
            done, running = wait(workers, timeout=self.interval, return_when=FIRST_EXCEPTION)
            if any(future.exception() for future in done):
                self.progress.stop.set()  # a bug in a worker must not pass silently: stop, then raise it
                next(future for future in done if future.exception()).result()
            if not running:
                return
            self.report()
