"""No plaintext PII at rest or in the logs.

Seeded phone numbers go through the whole path an operator takes: import (with some bad rows,
which the errors file may name — it is the operator's own file), an SMS campaign with some
numbers refused by the platform, delivery receipts, messages in which people wrote their own
numbers (in four spellings), and key rotation. Then the SQLite database
file (with its WAL) and everything qunfa logged at DEBUG are searched for every number in the
forms a leak would take: E.164, national, and the number's UTF-16 bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from tests.approval import approve
from tests.conftest import drain
from tests.integration.test_sms_tencent import CONTENT, make_account

# Loggers of the platforms' side (the sandbox plays the platform, which does see numbers).
PLATFORM_SIDE = ("qunfa.sandbox", "aiohttp.access", "mail.log")


class _QunfaOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(PLATFORM_SIDE)


@pytest.fixture
def log_text() -> Iterator[StringIO]:
    buf = StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_QunfaOnly())
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(exc_info)s"))
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def forms(phone: str) -> list[bytes]:
    national = phone.removeprefix("+86")
    return [
        phone.encode(),
        national.encode(),
        national.encode("utf-16-le"),
        f"{national[:3]}-{national[3:7]}-{national[7:]}".encode(),
    ]


def test_seeded_phones_never_appear_in_the_database_file_or_the_logs(
    container: Container,
    admin: SandboxAdmin,
    sandbox: EmbeddedSandbox,
    tmp_path: Path,
    log_text: StringIO,
) -> None:
    app = make_account(admin, container, sandbox, per_number_daily=1)
    seeded = [f"+86139{n:08d}" for n in range(7_000_123, 7_000_123 + 300)]
    csv = tmp_path / "phones.csv"
    csv.write_text("phone\n" + "\n".join(p.removeprefix("+86") for p in seeded) + "\nnot-a-phone\n")
    report = container.contacts.import_csv(app, csv)
    assert report.imported == 300 and report.rejected == 1
    # Two campaigns: the second is refused per number by the twin's daily cap (a failure
    # path that records reasons per recipient), then the receipts of the first arrive.
    for name in ("first", "second"):
        camp = container.campaigns.create(
            name=name, channel="sms_tencent", account=app, audience="all", content=CONTENT
        )
        approve(container, camp.id)  # the SMS link is off the allow-list: review
        container.campaigns.start(camp.id)
        drain(container)
    statuses = container.campaigns.status(camp.id)
    assert statuses["deliveries"].get("failed", 0) == 300, statuses  # cap hit: per-number errors
    # People write their numbers into chats: message events keep the text (said() searches
    # it) with the numbers masked, in every spelling.
    spellings = [
        lambda n: f"我的手机是{n}，请回电",
        lambda n: f"退款进度？+86 {n[:3]} {n[3:7]} {n[7:]}",
        lambda n: f"call {n[:3]}-{n[3:7]}-{n[7:]} or mail me",
        lambda n: "号码 " + n.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
    ]
    messages = [
        {
            "kind": "message",
            "phone": phone,
            "text": spellings[i % len(spellings)](phone.removeprefix("+86")),
            "at": time.time() - 60,
        }
        for i, phone in enumerate(seeded[:40])
    ]
    ingested = container.behaviour.ingest(messages)
    assert ingested.inserted == 40, ingested
    # The text is still searchable: the ten messages asking for 退款进度.
    assert container.segments.preview('said("退款", 1d)').count == 10
    container.keys.rotate()
    logging.getLogger("qunfa.test").debug("end of the seeded session at %s", time.time())

    settings = container.settings
    container.close()  # checkpoint nothing: the WAL is searched as it is
    files = [p for p in settings.data_dir.glob("qunfa.db*") if p.is_file()]
    assert files, "the SQLite database file was not found"
    blob = b"".join(p.read_bytes() for p in files)
    logs = log_text.getvalue()
    assert "end of the seeded session" in logs  # the capture works
    assert len(logs) > 200
    leaks = [
        (p, f)
        for p in seeded
        for f in forms(p)
        if f in blob or f.decode("utf-8", "replace") in logs
    ]
    assert not leaks, f"plaintext phone numbers found: {leaks[:5]}"
