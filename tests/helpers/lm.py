"""A tiny language model and vLLM's virtualenv, made once per test run and shared by every test.

``tiny_lm`` trains ``include/models/code_lm`` through the build launcher, in the declared build
environment, with parameters that keep it to seconds (the shape vLLM's CPU attention accepts:
head_dim 32). ``vllm_python`` creates vLLM's virtualenv with ``scripts/vllm-venv.sh``, the same
script ``make demo`` uses, under the checkout's ``.local/`` (kept across runs: the first one takes
about 5 minutes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.helpers.models import PROJECT

SHM = Path("/dev/shm")

CODE_LM = PROJECT / "include" / "models" / "code_lm"
TINY_PARAMS = {"layers": 2, "hidden": 64, "heads": 2, "steps": 60, "max_corpus_bytes": 600_000, "eval_blocks": 32,
               "train_blocks": 64}
VLLM_ARGS = {"max_model_len": 256, "dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": "512M"}


def build_lm(out: Path, params: dict[str, object] | None = None, threads: int = 2) -> Path:
    """Run the code_lm build through the launcher, as every runner does; return ``out`` (model/ and data/)."""
    from model_delivery.build_env import LAUNCHER, declare
    from model_delivery.spec import BuildSpec

    declared = declare("code_lm", BuildSpec.model_validate({"threads": threads}))
    (out.parent / "tmp").mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(out.parent), "TMPDIR": str(out.parent / "tmp")}
    done = subprocess.run([sys.executable, str(LAUNCHER), "--model-dir", str(CODE_LM), "--entrypoint", "train.py",
                           "--params", json.dumps({**TINY_PARAMS, **(params or {})}), "--env", json.dumps(declared),
                           "--output-dir", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def store_two_lms(store: Any, tiny_lm: Path, base: Path, model: str = "code_lm") -> tuple[Any, Any]:
    """The tiny LM stored twice, as two digests (the second's generation_config differs): v1 and v2 of a rollout."""
    v1 = store.put_directory(model, tiny_lm / "model")
    second = base / "v2"
    shutil.copytree(tiny_lm / "model", second)
    config = json.loads((second / "generation_config.json").read_text())
    (second / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.5}))
    return v1, store.put_directory(model, second)


def vllm_python() -> str:
    """vLLM's interpreter, creating its virtualenv first when it is missing."""
    done = subprocess.run(["bash", str(PROJECT / "scripts" / "vllm-venv.sh")], capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    python = PROJECT / ".local" / "vllm-venv" / "bin" / "python"
    assert python.exists(), done.stdout[-2000:]
    return str(python)


def kill_session(pid: int, timeout: float = 20) -> None:
    """Stop a server started in a session of its own and everything it started (vLLM's engine and workers),
    then remove the /dev/shm segments the session held that nothing else holds: a hard-killed vLLM leaves
    them behind, and they hold memory until the machine restarts."""
    held = _shm_held(_session(pid))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _session(pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while time.monotonic() < deadline + 10 and _session(pid):
        time.sleep(0.2)
    remove_shm(held)


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` still running (zombies are done)."""
    import psutil

    alive = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
    return alive


def _shm_held(pids: list[int] | None = None) -> set[int]:
    """The inodes of the /dev/shm segments processes ``pids`` (every live process by default) map or hold open.

    By inode, not by name: a named semaphore is mapped from the temporary file glibc created it as
    (``/dev/shm/sem.XXXXXX (deleted)``), and only its inode ties the mapping to ``sem.mp-…``.
    """
    if not SHM.is_dir():
        return set()
    device = SHM.stat().st_dev
    held: set[int] = set()
    for pid in pids if pids is not None else [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith(f"{SHM}/"):
                    held.add(int(fields[4]))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.stat(f"/proc/{pid}/fd/{fd}")
                    if target.st_dev == device:
                        held.add(target.st_ino)
    return held


def remove_shm(inodes: set[int]) -> list[str]:
    """Remove the /dev/shm segments with these inodes that no live process holds; return their names.

    Test files run in parallel: another test's PostgreSQL, or a vLLM starting meanwhile, holds its
    own segments, and they are never these inodes.
    """
    if not inodes:
        return []
    still_held = _shm_held()
    removed = []
    for entry in os.scandir(SHM):
        with contextlib.suppress(OSError):
            if entry.inode() in inodes and entry.inode() not in still_held:
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed
