"""One typed Settings object, read once (from ``QUNFA_*`` environment variables) at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything configurable. Defaults give the embedded mode: SQLite and Huey in ``data/``."""

    model_config = SettingsConfigDict(env_prefix="QUNFA_", env_file=None, extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Folder for the embedded database")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/qunfa.db"
    )
    keys_file: Path | None = Field(
        default=None, description="Encryption keyring (JSON); default <data_dir>/keys.json"
    )
    queue: str = Field(default="sqlite", description="Huey storage: sqlite | redis | memory")
    redis_url: str = "redis://127.0.0.1:6379/0"
    public_url: str = Field(
        default="http://127.0.0.1:8000", description="Where the platforms reach qunfa's callbacks"
    )
    sandbox_url: str = "http://127.0.0.1:8600"
    worker_threads: int = 4
    lease_seconds: float = Field(default=120.0, description="How long a worker owns a batch")
    http_timeout: float = Field(
        default=30.0, description="Seconds before a platform call times out"
    )
    sweep_interval: float = Field(default=5.0, description="Seconds between sweeper passes")
    settle_after: float = Field(
        default=600.0, description="Seconds to wait for a job-finish callback before polling"
    )
    unknown_after: float = Field(
        default=23 * 3600.0,
        description="An in-doubt batch older than this is marked unknown, not re-sent "
        "(the platform's 24 h clientmsgid dedupe no longer protects it)",
    )
    retry_base: float = 2.0
    retry_max: float = 300.0
    max_attempts: int = 12
    plan_page_size: int = Field(default=100_000, description="Recipients per planning page")
    review_audience_threshold: int = Field(
        default=10_000,
        description="Largest audience sent without a reviewer's approval (docs/review.md); "
        "an account's settings['review_audience_threshold'] overrides it",
    )
    caps: dict[str, Any] = Field(
        default_factory=lambda: {
            "marketing_7d": {"limit": 3, "days": 7},
            "marketing_1d": {"limit": 1, "days": 1},
        },
        description="Per-person frequency caps across every channel and identity "
        '(docs/quotas.md): {"name": {"limit": n, "days": d}}; transactional campaigns are exempt',
    )
    log_level: str = "INFO"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'qunfa.db').as_posix()}"

    @property
    def keyring_path(self) -> Path:
        return self.keys_file or self.data_dir / "keys.json"

    @property
    def huey_path(self) -> Path:
        return self.data_dir / "queue.db"
