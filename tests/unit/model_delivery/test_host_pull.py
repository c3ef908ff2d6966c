"""A host pulls its artifact from the store it mounts (``deploy.ansible.artifact_transfer: pull``).

``md_supervise.py install-artifact --pull-blobs --pull-folder`` runs for real, as the role runs
it on a host: the supervisor beside a ``model_server`` package in a runtime directory, reading a
real file store. A pull killed with SIGKILL half-way resumes at the parts that do not verify; a
damaged blob or manifest is refused and nothing is put in place; a store that is not mounted
is named with the fix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from model_delivery.store import ArtifactStore
from model_server.manifest import PART_SIZE, verify_directory
from tests.helpers.host_runtime import install_artifact, make_runtime
from tests.unit.model_delivery.test_store import _big_file

MODEL = "demo"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host's runtime directory as the role installs it: md_supervise.py beside the model_server package."""
    return make_runtime(tmp_path_factory.mktemp("runtime"))


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[ArtifactStore, str, int]:
    """A store holding one artifact: a 4-part file and a small one."""
    base = tmp_path_factory.mktemp("pull")
    size = 4 * PART_SIZE + 123
    src = _big_file(base / "src" / "weights.bin", size).parent
    (src / "config.json").write_text('{"layers": 2}\n')
    store = ArtifactStore(f"file://{base}/store", link="copy")
    return store, store.put_directory(MODEL, src).digest, size


def _paths(store: ArtifactStore, digest: str) -> tuple[str, str]:
    return store.layout.blobs().path, store.layout.artifact(MODEL, digest).path


def _install(runtime: Path, host: Path, digest: str, blobs: str, folder: str) -> subprocess.CompletedProcess[str]:
    return install_artifact(runtime, host / "a.incoming", host / "a", digest, "--pull-blobs", blobs,
                            "--pull-folder", folder)


KILL_HALF_WAY = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    import md_supervise
    import model_server.transfer as transfer

    real, total, seen = transfer.copy_files_verified, int(sys.argv[2]), [0]

    def copy_then_die(files, chunk_size, *, done=None, pool=None):
        def count(n):
            done(n)
            seen[0] += n
            if seen[0] >= total // 2:
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9 half-way: no finally, no clean-up
        return real(files, chunk_size, done=count, pool=pool)

    transfer.copy_files_verified = copy_then_die
    sys.exit(md_supervise.main(sys.argv[3:]))
""")


def test_a_host_pulls_verifies_and_installs(runtime: Path, stored: tuple[ArtifactStore, str, int],
                                            tmp_path: Path) -> None:
    store, digest, size = stored

    done = _install(runtime, tmp_path, digest, *_paths(store, digest))

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verified"] == digest and report["pulled_bytes"] == size + len('{"layers": 2}\n')
    assert verify_directory(tmp_path / "a", digest)
    assert (tmp_path / "a.verified").read_text().strip() == digest and not (tmp_path / "a.incoming").exists()


def test_a_pull_killed_half_way_resumes_at_the_first_part_that_does_not_verify(
    runtime: Path, stored: tuple[ArtifactStore, str, int], tmp_path: Path
) -> None:
    store, digest, size = stored
    blobs, folder = _paths(store, digest)
    argv = ["install-artifact", "--incoming", str(tmp_path / "a.incoming"), "--dest", str(tmp_path / "a"),
            "--digest", digest, "--pull-blobs", blobs, "--pull-folder", folder]

    killed = subprocess.run([sys.executable, "-c", KILL_HALF_WAY, str(runtime), str(size), *argv],
                            capture_output=True, text=True, timeout=300, check=False)

    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.verified").exists()  # nothing half-done in place
    resumed = _install(runtime, tmp_path, digest, blobs, folder)
    assert resumed.returncode == 0, resumed.stderr
    pulled = json.loads(resumed.stdout)["pulled_bytes"]
    # a file is copied from its start by one thread: half of it copied is two whole parts written, and kept
    assert PART_SIZE <= pulled <= size - 2 * PART_SIZE
    assert verify_directory(tmp_path / "a", digest)


def test_a_damaged_blob_is_refused_and_nothing_is_installed(runtime: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(4096))
    store = ArtifactStore(f"file://{tmp_path}/store")
    digest = store.put_directory(MODEL, src).digest
    blob = Path(store.layout.blob(json.loads(Path(store.layout.manifest(MODEL, digest).path).read_text())
                                  ["files"][0]["sha256"]).path)
    blob.chmod(0o644)
    with open(blob, "r+b") as handle:
        handle.write(b"\0")

    host = tmp_path / "host"
    done = _install(runtime, host, digest, *_paths(store, digest))

    assert done.returncode == 1
    assert f"refusing the copy of {digest}" in done.stderr and "model.bin" in done.stderr
    assert not (host / "a").exists() and not (host / "a.incoming").exists()


def test_a_manifest_that_is_not_the_digest_is_refused(runtime: Path, stored: tuple[ArtifactStore, str, int],
                                                      tmp_path: Path) -> None:
    store, digest, _ = stored
    other = "sha256:" + "0" * 64

    done = _install(runtime, tmp_path, other, *_paths(store, digest))

    assert done.returncode == 1 and f"hashes to {digest}, not {other}" in done.stderr
    assert not (tmp_path / "a").exists()


def test_a_store_that_is_not_mounted_names_the_fix(runtime: Path, tmp_path: Path) -> None:
    digest = "sha256:" + "1" * 64

    done = _install(runtime, tmp_path, digest, str(tmp_path / "nfs" / "blobs"), str(tmp_path / "nfs" / "demo"))

    assert done.returncode == 2
    assert "cannot pull" in done.stderr and "store_path_on_hosts" in done.stderr
    assert not (tmp_path / "a").exists()


def test_the_supervisor_refuses_half_of_the_pull_arguments(runtime: Path, tmp_path: Path) -> None:
    done = install_artifact(runtime, tmp_path / "i", tmp_path / "d", "sha256:" + "2" * 64, "--pull-blobs",
                            str(tmp_path))
    assert done.returncode == 2 and "--pull-blobs and --pull-folder go together" in done.stderr
