"""Huey set-up: SQLite storage when embedded, Redis for scale-out; one task: ``send_batch``."""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

# huey.storage imports psycopg whenever it is installed, for a PostgreSQL queue storage qunfa
# never uses: ~9 MB of every worker's RSS (docs/performance.md). It is hidden for that one
# import unless already loaded (on PostgreSQL, SQLAlchemy's dialect imports it for itself).
_HIDE_PSYCOPG = "psycopg" not in sys.modules
if _HIDE_PSYCOPG:
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # import psycopg → ImportError
try:
    from huey import MemoryHuey, RedisHuey, SqliteHuey
    from huey.consumer import Consumer
finally:
    if _HIDE_PSYCOPG:
        del sys.modules["psycopg"]

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

log = logging.getLogger("qunfa.worker")


def make_huey(c: Container) -> Any:
    s = c.settings
    if s.queue == "redis":
        huey: Any = RedisHuey("qunfa", url=s.redis_url, results=False)
    elif s.queue == "memory":
        huey = MemoryHuey("qunfa", results=False)
    else:
        s.data_dir.mkdir(parents=True, exist_ok=True)
        huey = SqliteHuey("qunfa", filename=str(s.huey_path), results=False)

    @huey.task(name="send_batch")  # type: ignore[untyped-decorator]
    def send_batch(batch_id: int) -> None:
        state = c.dispatcher.run(batch_id)
        log.debug("batch %s → %s", batch_id, state)

    huey.send_batch_task = send_batch
    return huey


class EmbeddedConsumer(Consumer):  # type: ignore[misc]
    """A consumer that installs signal handlers only when it owns the process.

    Embedded in ``qunfa serve`` or the demo, SIGINT/SIGTERM belong to the host (Ctrl-C must
    stop the whole process); ``qunfa worker`` owns its process and lets Huey handle them.
    """

    def __init__(self, *args: Any, handle_signals: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handle_signals = handle_signals

    def _set_signal_handlers(self) -> None:
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            super()._set_signal_handlers()


class Worker:
    """Huey workers plus the sweeper, startable in-process (serve, demo) or standalone."""

    def __init__(self, c: Container, threads: int | None = None, standalone: bool = False) -> None:
        self.c = c
        self.consumer = EmbeddedConsumer(
            c.huey,
            workers=threads or c.settings.worker_threads,
            worker_type="thread",
            periodic=False,
            initial_delay=0.05,
            max_delay=0.5,
            check_worker_health=True,
            handle_signals=standalone,
        )
        self._stop = threading.Event()
        self._sweeper = threading.Thread(
            target=c.sweeper.run_forever, args=(self._stop,), name="qunfa-sweeper", daemon=True
        )

    def start(self) -> None:
        self.consumer.start()
        self._sweeper.start()

    def stop(self) -> None:
        self._stop.set()
        self.consumer.stop(graceful=True)
        self._sweeper.join(timeout=10)

    def run_forever(self) -> None:
        """Blocking run for ``qunfa worker`` (Ctrl-C / SIGTERM stop it)."""
        self._sweeper.start()
        try:
            self.consumer.run()
        finally:
            self._stop.set()
