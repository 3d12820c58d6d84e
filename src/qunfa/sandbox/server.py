"""Sandbox server: the aiohttp app factory, a blocking :func:`run`, and :class:`EmbeddedSandbox`.

>>> with EmbeddedSandbox(Path("data/sandbox.db")) as sb:   # doctest: +SKIP
...     sb.url  # "http://127.0.0.1:<free port>"

The app owns one :class:`~qunfa.sandbox.state.State` (opened by :func:`create_app`, closed on
cleanup) and one background job loop (started on startup, cancelled on cleanup) that settles due
jobs of every twin and posts pending callbacks. Pending jobs and callbacks live in the database,
so they resume after a restart on the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType

from aiohttp import web

from qunfa.sandbox import admin, callbacks, calls, ledger, twins
from qunfa.sandbox.faults import FAULTS, FaultInjector, fault_middleware
from qunfa.sandbox.state import STATE, State

log = logging.getLogger("qunfa.sandbox")


def schemas() -> tuple[str, ...]:
    return (
        ledger.SCHEMA,
        callbacks.SCHEMA,
        *(m.SCHEMA for m in twins.discover() if hasattr(m, "SCHEMA")),
    )


def completers() -> tuple[Callable[[State], int], ...]:
    return tuple(m.complete_due for m in twins.discover() if hasattr(m, "complete_due"))


TICK_SECONDS = 0.05
SHUTDOWN_TIMEOUT = 0.5  # hung (accept-then-timeout) requests are cut off after this on stop


async def job_loop(state: State, poster: callbacks.CallbackPoster) -> None:
    """Settle due jobs and post callbacks, forever (cancelled on app cleanup)."""
    while True:
        try:
            for complete in completers():
                complete(state)
            poster.pump()
        except Exception:  # keep the loop alive; the next tick retries
            log.exception("sandbox job loop tick failed")
        await asyncio.sleep(TICK_SECONDS)


def create_app(state_path: Path, *, clock: Callable[[], float] = time.time) -> web.Application:
    """The sandbox as an aiohttp application over the SQLite file ``state_path``."""
    app = web.Application(
        middlewares=[admin.bad_request, calls.call_middleware, fault_middleware],
        client_max_size=64 * 1024**2,
    )
    state = State(Path(state_path), schemas(), clock)
    poster = callbacks.CallbackPoster(state)
    app[STATE] = state
    app[FAULTS] = FaultInjector(state)
    app[callbacks.POSTER] = poster

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await poster.start()
        task = asyncio.create_task(job_loop(state, poster))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await poster.close()
        state.close()

    app.cleanup_ctx.append(lifecycle)
    admin.add_routes(app)
    calls.add_routes(app)
    for twin in twins.discover():
        if hasattr(twin, "add_routes"):
            twin.add_routes(app)
    return app


def run(
    host: str = "127.0.0.1", port: int = 8600, state_path: Path = Path("data/sandbox.db")
) -> None:
    """Serve the sandbox until interrupted (blocking); used by ``qunfa sandbox``."""
    web.run_app(
        create_app(state_path), host=host, port=port, shutdown_timeout=SHUTDOWN_TIMEOUT,
        print=lambda msg: print(f"qunfa sandbox on http://{host}:{port} (state {state_path})"),
    )  # fmt: skip


class EmbeddedSandbox:
    """The sandbox in a background thread with its own event loop (for tests and the demo)."""

    def __init__(
        self, state_path: Path, port: int = 0, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.state_path = Path(state_path)
        self.port = port
        self._clock = clock
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedSandbox:
        self._thread = threading.Thread(target=self._serve, name="qunfa-sandbox", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=60):
            raise RuntimeError("sandbox did not start within 60 s")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError("sandbox failed to start") from self._error
        return self

    def stop(self) -> None:
        """Shut down (in-flight requests get ``SHUTDOWN_TIMEOUT``) and join the thread."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=30)
        self._loop = self._stop = self._thread = None

    def __enter__(self) -> EmbeddedSandbox:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        try:
            app = create_app(self.state_path, clock=self._clock)
            runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", self.port)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._stop = asyncio.Event()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
