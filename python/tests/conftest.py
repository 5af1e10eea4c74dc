"""Real processes and a real control plane for the Python client's tests (no mocks).

The workspace's binaries are built with cargo (``praas`` and the example functions), their paths
read from ``cargo build --message-format=json`` (so ``CARGO_TARGET_DIR`` is honoured); set
``PRAAS_PYTEST_PROFILE=release`` to test release builds (default: debug, which the Rust tests
build anyway). Every wait has a deadline; every child is ended at teardown.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

WORKSPACE = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 3600
START_TIMEOUT = 60


def cargo_build(packages: List[str], release: bool) -> Dict[str, Path]:
    """Builds ``packages`` and returns the files cargo produced, by target name."""
    command = [os.environ.get("CARGO", "cargo"), "build", "--message-format=json-render-diagnostics"]
    for package in packages:
        command += ["-p", package]
    if release:
        command.append("--release")
    done = subprocess.run(
        command, cwd=WORKSPACE, stdout=subprocess.PIPE, timeout=BUILD_TIMEOUT, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed with status {done.returncode}")
    outputs: Dict[str, Path] = {}
    for line in done.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact":
            continue
        name = message["target"]["name"]
        if message.get("executable"):
            outputs[name] = Path(message["executable"])
        for file in message.get("filenames", []):
            if file.endswith(".so"):
                outputs[name] = Path(file)
    return outputs


@pytest.fixture(scope="session")
def binaries() -> Dict[str, Path]:
    """``praas``: the CLI; ``functions``: ``libpraas_example_functions.so``."""
    release = os.environ.get("PRAAS_PYTEST_PROFILE", "debug") == "release"
    built = cargo_build(["praas-control", "praas-example-functions"], release)
    found = {"praas": built.get("praas"), "functions": built.get("praas_example_functions")}
    missing = [name for name, path in found.items() if path is None or not path.exists()]
    if missing:
        pytest.fail(f"cargo built no {missing}: {sorted(built)}")
    return found  # type: ignore[return-value]


class Child:
    """A child process whose first lines of standard output are read with a deadline."""

    def __init__(self, argv: List[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            text=True,
        )
        self._lines: List[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def line_with(self, prefix: str, timeout: float = START_TIMEOUT) -> str:
        """The first line of standard output that contains ``prefix``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    if prefix in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{self.argv[:3]} printed no {prefix!r} within {timeout} s: {self._lines}")
                self._cond.wait(min(left, 0.5))

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)
        self._reader.join(timeout=5)


def manifest(library: Path) -> str:
    """The test functions: the example library's, under their own names."""
    entries = [
        ("echo", "inline", None),
        ("noop", "inline", None),
        ("echo_worker", "worker", "echo"),
        ("fail", "worker", None),
        ("sleep", "worker", None),
        ("counter", "worker", None),
        ("generate", "worker", None),
        ("checksum", "worker", None),
    ]
    text = []
    for name, mode, symbol in entries:
        text += ["[[function]]", f"name = {json.dumps(name)}", f"library = {json.dumps(str(library))}", f'mode = "{mode}"']
        if symbol:
            text.append(f"symbol = {json.dumps(symbol)}")
        text.append("")
    return "\n".join(text)


@pytest.fixture(scope="session")
def manifest_file(binaries: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "functions.toml"
    path.write_text(manifest(binaries["functions"]))
    return path


def serve(binaries: Dict[str, Path], manifest_file: Path, *extra: str, env: Optional[Dict[str, str]] = None) -> Iterator[str]:
    child = Child(
        [str(binaries["praas"]), "process", "serve", "--manifest", str(manifest_file), "--listen", "127.0.0.1:0",
         "--workers", "2", *extra],
        env=env,
    )
    try:
        line = child.line_with("listening on ")
        yield line.split("listening on ", 1)[1].strip()
    finally:
        child.stop()


@pytest.fixture(scope="session")
def process(binaries: Dict[str, Path], manifest_file: Path) -> Iterator[str]:
    """The address of a process serving the test functions (anonymous clients)."""
    yield from serve(binaries, manifest_file)


AUTH_APP = "pyauth"


@pytest.fixture(scope="session")
def auth_process(binaries: Dict[str, Path], manifest_file: Path) -> Iterator[Dict[str, str]]:
    """A process of application ``pyauth`` serving authenticated clients only: its address and
    the application's secret."""
    secret = secrets.token_hex(32)
    for address in serve(binaries, manifest_file, "--client-auth", "--app", AUTH_APP, env={"PRAAS_SECRET": secret}):
        yield {"address": address, "secret": secret, "app": AUTH_APP}


@pytest.fixture(scope="session")
def control_plane(binaries: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, object]]:
    """A control plane on the local backend: its URL, data folder and runtime folder (where it
    publishes its token; the tests point ``PRAAS_RUNTIME_DIR`` there)."""
    root = tmp_path_factory.mktemp("control")
    data = root / "data"
    runtime = root / "runtime"
    runtime.mkdir(mode=0o700)
    child = Child(
        [str(binaries["praas"]), "control", "serve", "--listen", "127.0.0.1:0", "--metrics-ms", "50",
         "--data-dir", str(data)],
        env={"PRAAS_RUNTIME_DIR": str(runtime)},
    )
    try:
        line = child.line_with("http://")
        url = next(word for word in line.split() if word.startswith("http://"))
        yield {"url": url, "data": data, "runtime": runtime, "child": child}
    finally:
        # The processes it started and a failed test left running: ended by their pids.
        try:
            import praas

            token = (data / "api-token").read_text().strip()
            plane = praas.ControlPlane(url, token=token, timeout=10)
            for app in plane.apps():
                for record in plane.processes(app["name"]):
                    if record.get("pid") and record.get("status") not in ("CLOSED", "FAILURE", "SWAPPED_OUT"):
                        os.kill(record["pid"], signal.SIGKILL)
        except Exception as e:  # the control plane is gone: nothing to ask
            print(f"cleaning up the control plane's processes: {e}", file=sys.stderr)
        child.stop()
