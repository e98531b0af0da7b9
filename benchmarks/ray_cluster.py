"""A real Ray local cluster started the way users start one (`ray start --head`, then `duplex serve --ray
--detach`), for `duplex bench cluster` and the scale-out tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Ray's token authentication, as `ray start` sets it up by default: every process that joins must use it
RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def health(port: int, timeout: float = 10) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as r:
        return json.loads(r.read())


def wait_health(port: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health(port, timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"no server on port {port} after {timeout:.0f} s")


class LocalRayCluster:
    """One head node on loopback with `cpus` CPUs; `deploy` runs the CLI as a user would; `stop` ends it all."""

    def __init__(self, cpus: int):
        self.gcs, self.port = free_port(), free_port()
        self.exe = shutil.which("ray", path=str(BIN)) or "ray"
        self.ray("stop", "--force")  # a cluster left over from an earlier run would take the new one's place
        if "RAY_AUTH_TOKEN" not in RAY_ENV and not (Path.home() / ".ray" / "auth_token").exists():
            self.ray("get-auth-token", "--generate")  # token auth needs one, as on a fresh machine (Ray's docs)
        started = self.ray("start", "--head", f"--port={self.gcs}", "--node-ip-address=127.0.0.1",
                           f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats", timeout=180)
        if started.returncode != 0:
            raise RuntimeError(f"ray start failed: {started.stderr[-3000:]}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs}"

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self.exe, *args], capture_output=True, text=True, timeout=timeout, env=RAY_ENV)

    def deploy(self, replicas: int, slots: int, cpus_per_replica: float, model: str = "default",
               extra: tuple[str, ...] = (), wait: bool = True) -> subprocess.CompletedProcess:
        """`duplex serve --ray --address ... --detach`: deploy, or update the running application; with `wait`,
        until every replica answers /health."""
        cmd = [str(BIN / "duplex"), "serve", "--ray", "--address", self.address, "--detach", "--model", model,
               "--replicas", str(replicas), "--slots-per-replica", str(slots), "--cpus-per-replica",
               str(cpus_per_replica), "--port", str(self.port), "--device", "cpu", *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=RAY_ENV)
        if done.returncode != 0:
            raise RuntimeError(f"duplex serve --ray failed: {done.stdout[-2000:]}{done.stderr[-4000:]}")
        if wait:
            self.wait_replicas(replicas)
        return done

    def wait_replicas(self, replicas: int, timeout: float = 300) -> None:
        wait_health(self.port, timeout)
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while len(seen) < replicas and time.monotonic() < deadline:  # every replica answers
            try:
                seen.add(health(self.port)["replica"])
            except OSError:
                time.sleep(1)

    def stop(self) -> None:
        self.ray("stop", "--force")
