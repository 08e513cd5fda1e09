"""A real `cellar quickstart` for the tests: the example repo with its sample data, plus a
batch ingestion of a Parquet file, served on free ports. The binary is `CELLAR_BIN`, else the
workspace's debug build."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]

BATCH_REPO = """kind: Ingestion
name: profile_import
batch: {{ files: {{ path: "{path}" }} }}
into: user_profile
key: user_id
event_time: ts
features: {{ country: country, age: age }}
"""


def digest(key: str) -> str:
    """An API key as `[[auth.api_keys]]` keeps it."""
    return hashlib.sha256(key.encode()).hexdigest()


def cellar_bin() -> str:
    if os.environ.get("CELLAR_BIN"):
        return os.environ["CELLAR_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "debug" / "cellar"
    if not binary.exists():
        raise RuntimeError(f"{binary} does not exist: build it (cargo build -p cellar) or set CELLAR_BIN")
    return str(binary)


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port below the kernel's ephemeral range, for a server started as a process.

    A port from binding port 0 may be taken as the local port of an outgoing connection before
    the server binds it; below the ephemeral range only explicit binds go.
    """
    try:
        below = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        below = 32768
    lowest = 10000
    start = os.getpid() % (below - lowest)
    for step in range(below - lowest):
        port = lowest + (start + step) % (below - lowest)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {lowest}..{below}")


class Server:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path, data: Path) -> None:
        self.url = url
        self.process = process
        self.log = log
        self.data = data
        self.tmp = data.parent

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start(
    tmp: Path,
    extra_env: dict[str, str] | None = None,
    config: str | None = None,
    repo_files: dict[str, str] | None = None,
) -> Server:
    """`cellar quickstart` in `tmp` (again after a stop: on the same data), with `config`
    (TOML) as its config file when given and `repo_files` (name -> YAML) added to its repo."""
    repo, data = tmp / "repo", tmp / "data"
    repo.mkdir(parents=True, exist_ok=True)
    options: list[str] = []
    if config is not None:
        (tmp / "cellar.toml").write_text(config)
        options = ["--config", str(tmp / "cellar.toml")]
    # Profiles for the batch ingestion: p0..p99, aged 20..119.
    profiles = pa.table(
        {
            "user_id": [f"p{i}" for i in range(100)],
            "ts": pa.array([1_767_225_600_000 + i for i in range(100)], pa.timestamp("ms", tz="UTC")),
            "country": ["SE"] * 100,
            "age": list(range(20, 120)),
        }
    )
    pq.write_table(profiles, tmp / "profiles.parquet")
    (repo / "import.yaml").write_text(BATCH_REPO.format(path=tmp / "profiles.parquet"))
    for name, text in (repo_files or {}).items():
        (repo / name).write_text(text)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "cellar.log"
    env = {**os.environ, "RUST_LOG": "warn", **(extra_env or {})}
    process = subprocess.Popen(
        [
            cellar_bin(),
            *options,
            "--data-dir", str(data),
            "--repo", str(repo),
            "quickstart",
            "--listen", f"127.0.0.1:{port}",
            "--grpc-listen", f"127.0.0.1:{free_port()}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env=env,
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"cellar quickstart exited: {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"cellar quickstart did not answer in 180 s: {log.read_text()[-3000:]}")
        time.sleep(0.1)
    return Server(url, process, log, data)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start(tmp_path_factory.mktemp("cellar"))
    yield s
    s.stop()
