"""Real PostgreSQL and Redis servers for tests, on 127.0.0.1, installed from Debian when missing."""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.models import free_port

_APT_UPDATED = False


def ensure_installed(binary_glob: str, package: str) -> str:
    """The path of a binary, installing its Debian package first if needed (as root, like CI)."""
    global _APT_UPDATED
    found = sorted(glob.glob(binary_glob)) or ([shutil.which(binary_glob)] if shutil.which(binary_glob) else [])
    if found:
        return found[-1]
    if not _APT_UPDATED:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=600)
        _APT_UPDATED = True
    subprocess.run(["apt-get", "install", "-y", "-q", package], check=True, capture_output=True, timeout=900)
    found = sorted(glob.glob(binary_glob)) or ([shutil.which(binary_glob)] if shutil.which(binary_glob) else [])
    assert found, f"installed {package} but found no {binary_glob}"
    return found[-1]


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}: {log.read_text()[-2000:]}")


@contextmanager
def postgres(base: Path, database: str = "airflow", also: tuple[str, ...] = ()) -> Iterator[str]:
    """A throwaway PostgreSQL cluster; yields a SQLAlchemy URL for ``database`` (user airflow, trust auth).

    ``also`` names more databases created on the same server (the team stack's ledger).
    """
    initdb = ensure_installed("/usr/lib/postgresql/*/bin/initdb", "postgresql")
    bin_dir = Path(initdb).parent
    base.mkdir(parents=True, exist_ok=True)
    # PostgreSQL refuses to run as root, and the postgres user cannot enter pytest's 0700 directories.
    home = Path(tempfile.mkdtemp(prefix="model-delivery-pg-"))
    data, sock = home / "data", home / "sock"
    for path in (home, data, sock):
        path.mkdir(exist_ok=True)
        shutil.chown(path, "postgres", "postgres")
    run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*run_as, str(initdb), "-D", str(data), "-U", "airflow", "-A", "trust"], check=True,
                   capture_output=True, timeout=120)
    port = free_port()
    log = base / "postgres.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*run_as, str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                 "-p", str(port), "-k", str(sock)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_port(port, proc, log)
        time.sleep(1)
        for name in (database, *also):
            subprocess.run([*run_as, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "airflow",
                            name], check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://airflow@127.0.0.1:{port}/{database}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def redis(base: Path, password: str) -> Iterator[str]:
    """A throwaway Redis with a password; yields its URL."""
    server = ensure_installed("redis-server", "redis-server")
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = base / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--requirepass", password,
                                 "--save", "", "--appendonly", "no", "--dir", str(base)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc, log)
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
