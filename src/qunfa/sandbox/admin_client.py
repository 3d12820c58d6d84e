"""A small synchronous client for the sandbox's ``/_sandbox`` admin API (demo, bench, tests)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote


class SandboxAdminError(RuntimeError):
    pass


class SandboxAdmin:
    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.base}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise SandboxAdminError(f"{method} {path}: HTTP {exc.code} {exc.read()!r}") from exc
        except urllib.error.URLError as exc:
            raise SandboxAdminError(f"sandbox at {self.base} unreachable: {exc.reason}") from exc
        return json.loads(raw) if raw else None

    def reset(self) -> None:
        self._call("POST", "/_sandbox/reset", {})

    def create_wechat_account(self, **fields: Any) -> dict[str, Any]:
        return self.create_account("wechat", **fields)

    def create_account(self, platform: str, **fields: Any) -> dict[str, Any]:
        """``POST /_sandbox/<platform>/accounts``: every twin creates its accounts this way."""
        result: dict[str, Any] = self._call("POST", f"/_sandbox/{platform}/accounts", fields)
        return result

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self._call("POST", path, body if body is not None else {})

    def ledger(self, channel: str, account: str | None = None) -> dict[str, Any]:
        query = f"?channel={quote(channel)}" + (f"&account={quote(account)}" if account else "")
        result: dict[str, Any] = self._call("GET", f"/_sandbox/ledger{query}")
        return result

    def faults(self, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/_sandbox/faults", fields)
        return result

    def clear_faults(self) -> None:
        self._call("DELETE", "/_sandbox/faults")

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/_sandbox/clock", {"advance": seconds})
        return result

    def callbacks(self, account: str | None = None) -> Any:
        return self._call("GET", "/_sandbox/callbacks" + (f"?account={account}" if account else ""))
