"""The model server's three ways to infer, one server process: JSON over REST (the baseline: what every
client spoke before), binary tensors over REST, and gRPC; throughput and p95 latency at batch 1 and 1024.

The breast_cancer demo model is trained by its own ``train.py`` and served by ``python -m model_server
--grpc-port`` (one process: HTTP and gRPC on one event loop). The clients are Triton's tritonclient.http
(JSON: ``binary_data=False`` on the input and the outputs; binary: its default, raw tensors both ways) and
tritonclient.grpc (raw contents), one request at a time from this process, with the server's token.
The three are interleaved in rounds (each round runs every protocol at a batch size) so that drift of the
machine hits them alike; every answer is checked against the JSON path's first (exit 1 if one differs).

Throughput is rows per second through one sequential client (both cores: the client and the server);
latency is per request, client side. RATIO lines: each protocol's throughput over JSON's at the same batch.

    .venv/bin/python bench/bench_oip.py [--quick] [--requests N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT, finish, fmt_s, isolated_env, median, ratio_line, table, workdir  # noqa: E402

NAME = "oip"
MODEL = "breast_cancer"
VERSION = "1"
TOKEN = "bench-oip-token"
BATCHES = (1, 1024)
PROTOCOLS = ("json", "binary", "grpc")
READY_S = 60.0


def auth() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}"}  # a new dict each call: tritonclient.http adds to it


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_artifact(work: Path, env: dict[str, str]) -> tuple[Path, str]:
    """Train the demo model with its train.py and write the artifact's manifest; return (directory, digest)."""
    subprocess.run([sys.executable, str(PROJECT / "include" / "models" / MODEL / "train.py"), "--output-dir",
                    str(work / "build")], env=env, check=True, capture_output=True, cwd=work)
    sys.path.insert(0, str(PROJECT / "include" / "serving"))
    from model_server.manifest import MANIFEST_NAME, build_manifest, manifest_digest

    artifact = work / "build" / "model"
    manifest = build_manifest(artifact)
    (artifact / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return artifact, manifest_digest(manifest)


def start_server(work: Path, env: dict[str, str], artifact: Path, digest: str) -> tuple[subprocess.Popen[bytes], int, int]:
    http_port, grpc_port = free_port(), free_port()
    child_env = {**env, "PYTHONPATH": str(PROJECT / "include" / "serving"), "MODEL_SERVER_TOKEN": TOKEN}
    log = open(work / "server.log", "wb")  # noqa: SIM115 (closed with the process, at the end of the run)
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_server", "--artifact", str(artifact), "--digest", digest, "--model-name",
         MODEL, "--model-version", VERSION, "--host", "127.0.0.1", "--port", str(http_port), "--grpc-port",
         str(grpc_port), "--log-level", "warning"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=work,
    )  # fmt: skip
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    deadline = time.monotonic() + READY_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"model server exited {proc.returncode}: {(work / 'server.log').read_text()[-2000:]}")
        try:
            if (httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").is_server_ready()
                    and grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").is_server_ready()):
                return proc, http_port, grpc_port
        except Exception:  # noqa: BLE001 (not up yet)
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"model server not ready in {READY_S}s: {(work / 'server.log').read_text()[-2000:]}")
        time.sleep(0.1)


class Clients:
    """One request of each protocol, as a real client makes it; returns the outputs as arrays."""

    def __init__(self, http_port: int, grpc_port: int) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.httpclient, self.grpcclient = httpclient, grpcclient
        self.http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=120.0)
        self.grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")

    def call(self, protocol: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        if protocol == "grpc":
            inp = self.grpcclient.InferInput("features", list(rows.shape), "FP64")
            inp.set_data_from_numpy(rows)
            result = self.grpc.infer(MODEL, [inp], model_version=VERSION, headers=auth())
        else:
            binary = protocol == "binary"
            inp = self.httpclient.InferInput("features", list(rows.shape), "FP64")
            inp.set_data_from_numpy(rows, binary_data=binary)
            outputs = [self.httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("predict", "predict_proba")]
            result = self.http.infer(MODEL, [inp], outputs=outputs, model_version=VERSION, headers=auth())
        return {n: result.as_numpy(n) for n in ("predict", "predict_proba")}


def measure(clients: Clients, rows: np.ndarray, requests: int, rounds: int) -> dict[str, list[float]]:
    """Per protocol, the seconds of every request: ``rounds`` rounds of ``requests`` requests each, interleaved."""
    reference = clients.call("json", rows)
    for protocol in PROTOCOLS:  # warm-up, and the check: every protocol answers what JSON answers
        got = clients.call(protocol, rows)
        for name, want in reference.items():
            if got[name].dtype != want.dtype or not np.array_equal(got[name], want):
                raise RuntimeError(f"{protocol} answered a different {name} than JSON at batch {len(rows)}")
    samples: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
    for round_ in range(rounds):
        order = PROTOCOLS[round_ % 3:] + PROTOCOLS[:round_ % 3]
        for protocol in order:
            for _ in range(requests):
                started = time.perf_counter()
                clients.call(protocol, rows)
                samples[protocol].append(time.perf_counter() - started)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--requests", type=int, default=None, help="requests per protocol per round (batch 1; "
                        "batch 1024 makes a quarter as many)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, --quick 2)")
    args = parser.parse_args()
    requests = args.requests or (100 if args.quick else 400)
    rounds = args.rounds or (2 if args.quick else 5)
    started = time.perf_counter()
    rng = np.random.default_rng(7)
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer().data
    with workdir(NAME) as work:
        env = isolated_env(work)
        artifact, digest = build_artifact(work, env)
        proc, http_port, grpc_port = start_server(work, env, artifact, digest)
        try:
            clients = Clients(http_port, grpc_port)
            results: dict[str, Any] = {}
            for batch in BATCHES:
                rows = np.ascontiguousarray(data[rng.integers(0, len(data), size=batch)])
                per_round = requests if batch == 1 else max(requests // 4, 5)
                results[str(batch)] = measure(clients, rows, per_round, rounds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    table_rows, lines, summary = [], [], {}
    for batch in BATCHES:
        samples = results[str(batch)]
        base = len(samples["json"]) * batch / sum(samples["json"])
        for protocol in PROTOCOLS:
            seconds = samples[protocol]
            rows_per_s = len(seconds) * batch / sum(seconds)
            p95 = float(np.percentile(seconds, 95))
            summary[f"{protocol}_b{batch}"] = {"requests": len(seconds), "rows_per_s": rows_per_s,
                                               "p50_s": median(seconds), "p95_s": p95}
            table_rows.append([f"batch {batch}", protocol, f"{len(seconds) / sum(seconds):.0f}", f"{rows_per_s:.0f}",
                               fmt_s(median(seconds)), fmt_s(p95), f"{rows_per_s / base:.2f}x"])
            if protocol != "json":
                lines.append(ratio_line(f"oip_{protocol}_b{batch}", rows_per_s / base,
                                        f"{protocol} over JSON REST throughput at batch {batch}, "
                                        f"p95 {fmt_s(p95)} vs {fmt_s(float(np.percentile(samples['json'], 95)))}"))
    print(table(["batch", "protocol", "req/s", "rows/s", "p50", "p95", "vs JSON"], table_rows))
    document = {"requests_per_round": requests, "rounds": rounds, "cpus": os.cpu_count(), "summary": summary,
                "samples": results}
    return finish(NAME, document, lines, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
