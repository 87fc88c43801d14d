"""The sealer in a process of its own, beside the processes that write.

Sealing is Python work (encoding, hashing, signing: ~65 µs an event) and a pass of a few
hundred events holds an event loop for 10–20 ms. Inside a web worker that is a stall of every
request in flight; at 32 writers sharing the loop it cost them ~5 % more throughput than a
sealer in a process of its own (BENCHMARKS.md, Audit). ``circuit serve`` runs one
:class:`SealerProcess`; the benchmark runs the same.

The child connects on its own, loads the signing key from its file, and seals every
``SEAL_INTERVAL_SECONDS`` until told to stop (SIGTERM) or until its parent is gone.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import create_async_engine

from audit.chain import run_sealer
from audit.keys import load_key

log = structlog.get_logger("audit")

PARENT_CHECK_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 15.0


async def _seal_until_stopped(url: str, key_path: Path, parent: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    engine = create_async_engine(url, pool_size=1, max_overflow=0)

    async def orphaned() -> None:
        while not stop.is_set():
            if os.getppid() != parent:
                stop.set()
            await asyncio.sleep(PARENT_CHECK_SECONDS)

    watch = asyncio.create_task(orphaned())
    try:
        await run_sealer(engine, load_key(key_path), stop)
    finally:
        stop.set()
        await watch
        await engine.dispose()


def _main(url: str, key_path: str, parent: int, setup: Callable[[], None] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    if setup is not None:
        setup()
    asyncio.run(_seal_until_stopped(url, Path(key_path), parent))


class SealerProcess:
    """Start with :meth:`start`, stop with :meth:`stop` (waits for the pass in progress).

    ``setup`` (a module-level function: the child imports it by name) runs first in the
    child, e.g. to configure logging as the parent does."""

    def __init__(self, url: str, key_path: Path, setup: Callable[[], None] | None = None) -> None:
        self.url, self.key_path, self.setup = url, key_path, setup
        self.process: multiprocessing.process.BaseProcess | None = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(target=_main, args=(self.url, str(self.key_path), os.getpid(), self.setup),
                                       name="circuit-sealer", daemon=True)
        self.process.start()
        log.info("audit_sealer_started", pid=self.process.pid)

    def stop(self) -> None:
        if self.process is None or not self.process.is_alive():
            return
        self.process.terminate()
        self.process.join(STOP_TIMEOUT_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
