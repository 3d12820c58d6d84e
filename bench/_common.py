"""Plumbing shared by the benchmarks: ports, peak RSS, the sandbox process, child runs."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). ``ru_maxrss`` is not used: Linux carries it across
    execve, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def sandbox_process(state: Path, port: int | None = None) -> Iterator[str]:
    """``qunfa sandbox`` in its own process (its CPU and memory are not the measured side's),
    on ``port`` (a free one if None)."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qunfa.cli.main", "sandbox", "--port", str(port),
         "--state", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def child(script: str, role: str, *args: str) -> dict[str, Any]:
    """Run ``script --child role ARGS`` and return the JSON it prints last."""
    out = subprocess.run(
        [sys.executable, script, "--child", role, *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"{role} run failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result
