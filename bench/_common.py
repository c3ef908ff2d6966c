"""Shared helpers of the benchmarks: an isolated environment, clean-up, tables, results.

Every benchmark works in its own temporary directory (its own AIRFLOW_HOME, SQLite DB,
MODEL_DELIVERY_HOME and copy of the model specs with free ports) and removes it at the
end, after killing every process whose command line names that directory (model
servers, front proxies, builds). Only 127.0.0.1 is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

PROJECT = Path(__file__).resolve().parents[1]
BENCH = PROJECT / "bench"
RESULTS = BENCH / "results"
VENV_BIN = Path(sys.executable).parent
# Variables a benchmark child must never inherit from the caller (``make bench`` exports
# AIRFLOW_HOME and friends pointing at the project's .local/; a developer may have more).
_STRIPPED_PREFIXES = ("AIRFLOW_", "AIRFLOW__", "MODEL_DELIVERY_")


def isolated_env(work: Path, *, md_home: Path | None = None, models_dir: Path | None = None,
                 dags_folder: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a benchmark child: everything Airflow or model-delivery reads points into ``work``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_PREFIXES)}
    airflow_home = work / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    env.update(
        AIRFLOW_HOME=str(airflow_home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder or PROJECT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(PROJECT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{airflow_home / 'airflow.db'}",
        MODEL_DELIVERY_HOME=str(md_home or work / "md"),
        GIT_PYTHON_REFRESH="quiet",
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
    )
    if models_dir is not None:
        env["MODEL_DELIVERY_MODELS_DIR"] = str(models_dir)
    env.update(extra)
    return env


def copy_models(dest: Path, names: tuple[str, ...] = ("breast_cancer", "wine")) -> Path:
    """Copies of the project's model folders, each with a free front port (tests/helpers/models.py)."""
    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))
    from tests.helpers.models import copy_models as _copy

    return _copy(dest, names)


def kill_processes_under(path: Path, timeout: float = 10.0) -> int:
    """Kill every process (not this one) whose command line contains ``path``; return how many."""
    import psutil

    marker = str(path)
    me = os.getpid()
    victims = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.info["pid"] != me and marker in " ".join(proc.info["cmdline"] or []):
                victims.append(proc)
        except psutil.Error:
            pass
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(victims, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return len(victims)


@contextlib.contextmanager
def workdir(name: str, keep: bool = False) -> Iterator[Path]:
    """A fresh temporary directory; on exit its processes are killed and it is removed.

    SIGTERM and SIGHUP are turned into ``SystemExit`` so that clean-up runs then too.
    """

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, _exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    path = Path(tempfile.mkdtemp(prefix=f"md-bench-{name}-")).resolve()
    try:
        yield path
    finally:
        killed = kill_processes_under(path)
        if killed:
            print(f"[cleanup] stopped {killed} process(es) started under {path}")
        if keep:
            print(f"[cleanup] kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def ratio_line(name: str, ratio: float, what: str) -> str:
    """The one summary line of a benchmark, collected by run_all.py."""
    return f"RATIO {name}: {ratio:.2f}x ({what})"


def machine() -> dict[str, Any]:
    import psutil

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_mib": psutil.virtual_memory().total // 2**20,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_results(name: str, document: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {"benchmark": name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **document}
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    return path


def finish(name: str, document: dict[str, Any], lines: list[str], elapsed: float) -> int:
    """Write the results, print where they are and the RATIO lines; return the exit code 0."""
    path = write_results(name, {**document, "ratio_lines": lines})
    print(f"\nresults: {path.relative_to(PROJECT)}  ({elapsed:.0f} s)")
    for line in lines:
        print(line)
    return 0


def vm_hwm_kib(pid: int | str = "self") -> int | None:
    """Peak resident set size (VmHWM) of a live process's own address space, in KiB.

    Not ``ru_maxrss`` from ``wait4``: Linux carries the parent's memory into the child's
    ru_maxrss across fork/vfork + exec (a ``/bin/true`` started from a Python process
    holding 200 MiB reports ~210 MiB), so ru_maxrss of a child is not its own peak.
    VmHWM belongs to the address space created by exec, so it is.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def settle(seconds: float) -> None:
    """Flush dirty pages, then let the machine calm down (this VM hands freed memory back to its host)."""
    import subprocess

    subprocess.run(["sync"], check=True)
    time.sleep(seconds)


def run_child(script: str, op: str, env: dict[str, str], work: Path, settle_s: float, **kw: str) -> dict[str, Any]:
    """Run ``script --child op --out F --key value ...`` in a fresh process (after :func:`settle`) and return the
    JSON it wrote; ``{"killed": True}`` when it died of SIGKILL (a resume case kills itself)."""
    import subprocess

    out = work / f"child-{op}.json"
    cmd = [sys.executable, script, "--child", op, "--out", str(out)]
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", value]
    settle(settle_s)
    with open(work / "children.log", "ab") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if code == -signal.SIGKILL:
        return {"killed": True}
    if code != 0:
        raise RuntimeError(f"{op} exited {code}: {(work / 'children.log').read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    subprocess.run(["sync"], check=True)
    return result
