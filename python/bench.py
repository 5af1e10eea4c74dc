#!/usr/bin/env python3
"""The Python client against the Rust SDK, in one run: 8 B ``invoke`` round trips and pipelined
throughput with 64 in flight.

The Rust side is ``praas-bench invoke --json --transport T --sizes 8 --in-flight 64`` (its own
server, ``praas-bench serve-praas``); the Python side runs ``praas.Client`` against a server
started the same way (the same binary, manifest and transport), with the same CPU placement:
everything on CPU 0, as ``praas-bench`` places it by default. The two alternate ``--rounds``
times and the medians of the rounds are compared, so that a neighbour's load on a shared machine
falls on both. Prints a table, or with ``--json`` one JSON object per line with the fields of
docs/benchmarks.md (``bench`` is ``python-invoke`` / ``python-throughput``, ``baseline`` is
``rust-sdk``).

    python3 python/bench.py [--json] [--rounds 3] [--transport tcp|uring]

Needs the ``praas`` package installed (``pip install ./python``) and cargo, which builds
``praas-bench`` and the example functions in release mode (``CARGO_TARGET_DIR`` is honoured), or
``--praas-bench PATH`` and ``--functions PATH``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# The installed package, not its sources beside this script (which lack the extension module).
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import praas  # noqa: E402

WORKSPACE = Path(__file__).resolve().parent.parent
CPU = 0
START_TIMEOUT = 60.0


def build() -> Tuple[Path, Path]:
    command = [
        os.environ.get("CARGO", "cargo"), "build", "--release", "--message-format=json-render-diagnostics",
        "-p", "praas-bench", "-p", "praas-example-functions",
    ]
    done = subprocess.run(command, cwd=WORKSPACE, stdout=subprocess.PIPE, timeout=3600, check=True)
    bench: Optional[Path] = None
    functions: Optional[Path] = None
    for line in done.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact":
            continue
        if message["target"]["name"] == "praas-bench" and message.get("executable"):
            bench = Path(message["executable"])
        for file in message.get("filenames", []):
            if file.endswith("libpraas_example_functions.so"):
                functions = Path(file)
    if bench is None or functions is None:
        sys.exit("bench.py: cargo built no praas-bench or example functions")
    return bench, functions


def rust_round(bench: Path, transport: str, iters: int, warmup: int, in_flight: int) -> Dict[str, float]:
    command = [
        str(bench), "invoke", "--json", "--transport", transport, "--sizes", "8", "--in-flight", str(in_flight),
        "--local-sizes", "8", "--iters", str(iters), "--warmup", str(warmup),
    ]
    # --iters counts the throughput run's completions too: both sides use the same counts.
    result: Dict[str, float] = {}
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=600, check=True, text=True)
    for line in done.stdout.splitlines():
        record = json.loads(line)
        if record.get("bench") == "invoke" and record.get("size") == 8:
            result["p50_ns"] = record["p50_ns"]
            result["p99_ns"] = record["p99_ns"]
            result["placement"] = record.get("placement", "")
        if record.get("bench") == "throughput" and record.get("in_flight") == in_flight:
            result["ops_per_sec"] = record["ops_per_sec"]
    return result


class Server:
    """``praas-bench serve-praas`` on CPU 0: the server the Rust SDK's run measures against."""

    def __init__(self, bench: Path, manifest: Path, transport: str) -> None:
        self.popen = subprocess.Popen(
            [str(bench), "serve-praas", "--manifest", str(manifest), "--cpu", str(CPU), "--transport", transport],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        lines: List[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.popen.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        if not lines or not lines[0].startswith("listening on "):
            self.stop()
            sys.exit(f"bench.py: the praas server printed {lines!r}, not its address")
        self.address = lines[0].split("listening on ", 1)[1].strip()

    def stop(self) -> None:
        if self.popen.stdin:
            self.popen.stdin.close()  # it leaves when its standard input closes
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)


def percentile(sorted_ns: List[int], q: float) -> int:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))]


def python_round(address: str, transport: str, iters: int, warmup: int, ops: int, in_flight: int) -> Dict[str, float]:
    kind = "mio" if transport == "tcp" else transport
    payload = bytes(range(8))
    clock = time.perf_counter_ns
    with praas.Client(address, timeout=30, transport=kind) as client:
        assert client.invoke("echo", payload) == payload
        gc.disable()
        try:
            for _ in range(warmup):
                client.invoke("echo", payload)
            samples = []
            invoke = client.invoke
            for _ in range(iters):
                start = clock()
                invoke("echo", payload)
                samples.append(clock() - start)
            samples.sort()

            submit, recv = client.submit, client.recv
            for _ in range(in_flight):
                submit("echo", payload)
            for _ in range(warmup):
                recv()
                submit("echo", payload)
            start = clock()
            for _ in range(ops):
                recv()
                submit("echo", payload)
            secs = (clock() - start) / 1e9
            for _ in range(in_flight):
                _, last = recv()
            assert last == payload
        finally:
            gc.enable()
    return {"p50_ns": percentile(samples, 0.5), "p99_ns": percentile(samples, 0.99), "ops_per_sec": ops / secs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.add_argument("--transport", choices=["tcp", "uring"], default="tcp")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side (medians compared)")
    parser.add_argument("--iters", type=int, default=20_000, help="measured round trips, and completions, per round")
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--praas-bench", type=Path, help="the praas-bench binary (default: built with cargo)")
    parser.add_argument("--functions", type=Path, help="libpraas_example_functions.so (default: built with cargo)")
    args = parser.parse_args()

    if args.praas_bench and args.functions:
        bench, functions = args.praas_bench, args.functions
    else:
        bench, functions = build()
    os.sched_setaffinity(0, {CPU})  # the client's CPU, as praas-bench's own client
    host = f"{os.uname().release} {os.cpu_count()}cpu"
    with tempfile.TemporaryDirectory(prefix="praas-pybench-") as tmp:
        manifest = Path(tmp) / "functions.toml"
        manifest.write_text(f'[[function]]\nname = "echo"\nlibrary = {json.dumps(str(functions))}\nmode = "inline"\n')
        rust: List[Dict[str, float]] = []
        python: List[Dict[str, float]] = []
        for n in range(args.rounds):
            print(f"bench.py: round {n + 1}/{args.rounds}: Rust SDK (praas-bench)", file=sys.stderr)
            rust.append(rust_round(bench, args.transport, args.iters, args.warmup, args.in_flight))
            print(f"bench.py: round {n + 1}/{args.rounds}: Python client", file=sys.stderr)
            server = Server(bench, manifest, args.transport)
            try:
                python.append(python_round(server.address, args.transport, args.iters, args.warmup, args.iters, args.in_flight))
            finally:
                server.stop()

    def median(rounds: List[Dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    placement = rust[0].get("placement") or f"server={CPU},client={CPU}"
    common = {"transport": args.transport, "size": 8, "warmup": args.warmup, "baseline": "rust-sdk",
              "placement": placement, "host": host, "rounds": args.rounds}
    latency = {
        "bench": "python-invoke", **common, "iters": args.iters,
        "p50_ns": int(median(python, "p50_ns")), "p99_ns": int(median(python, "p99_ns")),
        "baseline_p50_ns": int(median(rust, "p50_ns")), "baseline_p99_ns": int(median(rust, "p99_ns")),
    }
    latency["ratio_p50"] = round(latency["p50_ns"] / latency["baseline_p50_ns"], 3)
    throughput = {
        "bench": "python-throughput", **common, "iters": args.iters, "in_flight": args.in_flight,
        "ops_per_sec": round(median(python, "ops_per_sec")), "baseline_ops_per_sec": round(median(rust, "ops_per_sec")),
        "higher_is_better": True,
    }
    throughput["ratio"] = round(throughput["ops_per_sec"] / throughput["baseline_ops_per_sec"], 3)
    if args.json:
        print(json.dumps(latency))
        print(json.dumps(throughput))
        return
    print(f"Python client vs Rust SDK, {args.transport}, {placement}, {host}, median of {args.rounds} rounds")
    print(f"{'measure':<28} {'python':>14} {'rust sdk':>14} {'ratio':>7}  target")
    print(f"{'8 B invoke p50':<28} {latency['p50_ns'] / 1000:>11.2f} us {latency['baseline_p50_ns'] / 1000:>11.2f} us"
          f" {latency['ratio_p50']:>7.3f}  <= 1.3")
    print(f"{'8 B invoke p99':<28} {latency['p99_ns'] / 1000:>11.2f} us {latency['baseline_p99_ns'] / 1000:>11.2f} us"
          f" {latency['p99_ns'] / latency['baseline_p99_ns']:>7.3f}")
    print(f"{f'throughput, {args.in_flight} in flight':<28} {throughput['ops_per_sec']:>10} op/s"
          f" {throughput['baseline_ops_per_sec']:>10} op/s {throughput['ratio']:>7.3f}  >= 0.5")


if __name__ == "__main__":
    main()
