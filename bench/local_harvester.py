"""A throw-away harvester for the benchmarks: free loopback port, temporary home, local pilots."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_harvester(slots: int) -> Iterator[dict[str, str]]:
    """Yields the environment a client needs (HPCAF_URL, HPCAF_TOKEN) to use the harvester."""
    home = Path(tempfile.mkdtemp(prefix="hpcaf-bench-"))
    port = free_port()
    (home / "harvester.toml").write_text(f"""
[queues.ANALY_LOCAL]
provider = "local"
maxWorkers = {slots}
nQueueLimitWorker = {slots}
maxNewWorkersPerCycle = {slots}
""")
    env = {
        **os.environ,
        "HPCAF_HOME": str(home),
        "HPCAF_PORT": str(port),
        "HPCAF_AGENT_INTERVAL_S": "0.5",
        "HPCAF_PILOT_MAX_IDLE_S": "5",
        "HPCAF_IMAGE_CACHE": os.environ.get("HPCAF_IMAGE_CACHE", str(REPO / ".cache" / "images")),
    }
    token = subprocess.run(
        [sys.executable, "-m", "harvester.cli", "token", "create", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    server = subprocess.Popen(
        [sys.executable, "-m", "harvester.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield {**env, "HPCAF_URL": f"http://127.0.0.1:{port}", "HPCAF_TOKEN": token}
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(home, ignore_errors=True)
