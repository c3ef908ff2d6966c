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
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.models import PROJECT

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


def vllm_python() -> str:
    """vLLM's interpreter, creating its virtualenv first when it is missing."""
    done = subprocess.run(["bash", str(PROJECT / "scripts" / "vllm-venv.sh")], capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    python = PROJECT / ".local" / "vllm-venv" / "bin" / "python"
    assert python.exists(), done.stdout[-2000:]
    return str(python)


def shm_segments() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def kill_session(pid: int, timeout: float = 20) -> None:
    """Stop a server started in a session of its own and everything it started (vLLM's engine and workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _session(pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` still running (zombies are done)."""
    import psutil

    alive = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
    return alive


def shm_in_use() -> set[str]:
    """The /dev/shm segments some live process has mapped or open (another test's PostgreSQL, say)."""
    used: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    used.add(line.split("/dev/shm/", 1)[1].split()[0])
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("/dev/shm/"):
                        used.add(target[len("/dev/shm/"):].split()[0])
    return used


def remove_new_shm(before: set[str]) -> None:
    """Remove the shared-memory segments a hard-killed vLLM left behind: those not there before the test
    and that no live process holds. Tests run in parallel: a segment another test's server (PostgreSQL's
    dynamic shared memory) created meanwhile is in use, and must stay."""
    new = shm_segments() - before
    if not new:
        return
    held = shm_in_use()
    for name in new - held:
        if name.startswith("PostgreSQL."):
            continue
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/{name}")
