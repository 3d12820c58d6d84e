"""The composition root: builds every service once from :class:`~qunfa.settings.Settings`.

Entrypoints (CLI, API, worker, bench, tests) create one :class:`Container` and take what they
need from it. Nothing here does I/O until a property is first used.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from qunfa.channels.ratelimit import LocalRateLimiter
from qunfa.channels.tokens import TokenService
from qunfa.crypto.fields import Keyring
from qunfa.settings import Settings
from qunfa.storage.db import make_engine, make_session_factory
from qunfa.storage.tokens import DbTokenStore

log = logging.getLogger("qunfa")


class Container:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._enqueue: Callable[[Iterable[int]], None] | None = None
        self._lock = threading.Lock()

    # -- storage ----------------------------------------------------------------------------------
    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.db_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    def migrate(self) -> None:
        from qunfa.storage.migrate import upgrade

        upgrade(self.engine)

    @cached_property
    def keyring(self) -> Keyring:
        return Keyring.load_or_create(self.settings.keyring_path)

    # -- platform access ---------------------------------------------------------------------------
    @cached_property
    def tokens(self) -> TokenService:
        return TokenService(DbTokenStore(self.sessions, self.keyring))

    @cached_property
    def limiter(self) -> LocalRateLimiter:
        return LocalRateLimiter()

    # -- services ---------------------------------------------------------------------------------
    @cached_property
    def accounts(self) -> Any:
        from qunfa.services.accounts import AccountService

        return AccountService(self)

    @cached_property
    def contacts(self) -> Any:
        from qunfa.services.contacts import ContactService

        return ContactService(self)

    @cached_property
    def people(self) -> Any:
        from qunfa.services.people import PeopleService

        return PeopleService(self)

    @cached_property
    def campaigns(self) -> Any:
        from qunfa.services.campaigns import CampaignService

        return CampaignService(self)

    @cached_property
    def segments(self) -> Any:
        from qunfa.services.segments import SegmentService

        return SegmentService(self)

    @cached_property
    def review(self) -> Any:
        from qunfa.services.review import ReviewService

        return ReviewService(self)

    @cached_property
    def keys(self) -> Any:
        from qunfa.services.keys import KeyService

        return KeyService(self)

    @cached_property
    def tags(self) -> Any:
        from qunfa.services.tags import TagService

        return TagService(self)

    @cached_property
    def tasks(self) -> Any:
        from qunfa.services.tasks import TaskService

        return TaskService(self)

    @cached_property
    def materials(self) -> Any:
        from qunfa.services.materials import MaterialService

        return MaterialService(self)

    @cached_property
    def dispatcher(self) -> Any:
        from qunfa.services.dispatcher import Dispatcher

        return Dispatcher(self)

    @cached_property
    def reconciler(self) -> Any:
        from qunfa.services.reconcile import Reconciler

        return Reconciler(self)

    @cached_property
    def quota(self) -> Any:
        from qunfa.services.quota import QuotaService

        return QuotaService(self)

    @cached_property
    def dryrun(self) -> Any:
        from qunfa.services.dryrun import DryRunService

        return DryRunService(self)

    @cached_property
    def consent(self) -> Any:
        from qunfa.services.consent import ConsentService

        return ConsentService(self)

    @cached_property
    def sweeper(self) -> Any:
        from qunfa.services.sweeper import Sweeper

        return Sweeper(self)

    @cached_property
    def behaviour(self) -> Any:
        from qunfa.services.behaviour import BehaviourService

        return BehaviourService(self)

    # -- the queue ---------------------------------------------------------------------------------
    @cached_property
    def huey(self) -> Any:
        from qunfa.worker.queue import make_huey

        return make_huey(self)

    def enqueue(self, batch_ids: Iterable[int]) -> None:
        """Wake workers for these batches. The database stays the source of truth."""
        if self._enqueue is not None:
            self._enqueue(batch_ids)
            return
        task = self.huey.send_batch_task
        for batch_id in batch_ids:
            task(batch_id)

    def set_enqueue(self, fn: Callable[[Iterable[int]], None] | None) -> None:
        """Replace the queue (tests and benchmarks drive batches directly)."""
        self._enqueue = fn

    def close(self) -> None:
        if "dispatcher" in self.__dict__:
            self.dispatcher.close()
        if "engine" in self.__dict__:
            self.engine.dispose()
