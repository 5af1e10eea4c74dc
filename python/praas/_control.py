"""``praas.ControlPlane``: the control plane's HTTP API (docs/control-plane.md), over the standard
library's ``urllib`` (no dependency), and the API token's discovery.

Every request presents the API's bearer token. Without one given, it is found the way the
``praas`` CLI finds it (``praas_control::api_token::discover``), in this order:

1. ``PRAAS_TOKEN``: the token itself (64 hex digits; anything else is ignored);
2. ``PRAAS_TOKEN_FILE``: a file holding it (the control plane's ``DATA/api-token``); if that file
   cannot be read, no token is used (the lookup does not go on);
3. the token the control plane published for this user, for the URL's address: the file
   ``RUNTIME/api/IP_PORT`` for each address the URL's host resolves to, then for ``0.0.0.0`` and
   ``::`` on that port (a control plane listening on all interfaces). ``RUNTIME`` is
   ``$PRAAS_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/praas``, else ``$HOME/.praas``, else
   ``$TMPDIR/praas-UID`` (``/tmp`` without ``TMPDIR``), and is trusted only if it is a folder of
   this user with mode 0700. A published file holds the token and the control plane's pid, and
   counts only while that process runs.

With no token found, requests go without one and the control plane answers 401 (:class:`ApiError`
with ``status == 401``).
"""

from __future__ import annotations

import base64
import builtins
import http.client
import ipaddress
import json
import os
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from . import _native
from ._errors import ApiError, ConnectionError, PraasError, TimeoutError

try:  # TypedDict is in typing from 3.8 on
    from typing import TypedDict
except ImportError:  # pragma: no cover
    TypedDict = dict  # type: ignore[misc,assignment]

_TOKEN_HEX = 64
_MAX_OUTPUT = 1 << 30


class Resources(TypedDict):
    """Resources of a process: vCPUs (worker threads, CPUs) and memory in MiB."""

    vcpus: int
    memory_mb: int


class AppInfo(TypedDict, total=False):
    """An application as the API shows it (never its secret)."""

    name: str
    resources: Resources
    functions: List[str]
    processes: int
    slurm: Dict[str, Any]


class ProcessInfo(TypedDict, total=False):
    """A process record: ``status`` is ``ALLOCATING``, ``ALLOCATED``, ``SWAPPING_OUT``,
    ``SWAPPED_OUT``, ``SWAPPING_IN``, ``CLOSING``, ``CLOSED`` or ``FAILURE``; ``data_addr`` the
    TCP address of its data plane (``HOST:PORT``), ``rdma_addr`` its RDMA one when it serves RDMA;
    ``swap`` the last swap's ``bytes`` and ``secs``; ``metrics`` what it last reported."""

    app: str
    name: str
    status: str
    resources: Resources
    data_addr: Optional[str]
    rdma_addr: Optional[str]
    pid: Optional[int]
    handle: Optional[str]
    node: Optional[str]
    job: Optional[str]
    error: Optional[str]
    swap: Optional[Dict[str, Any]]
    metrics: Dict[str, Any]
    swap_progress: Optional[int]


def _parse_token(text: str) -> Optional[str]:
    text = text.strip()
    if len(text) == _TOKEN_HEX and all(c in "0123456789abcdefABCDEF" for c in text):
        return text
    return None


def runtime_dir() -> Path:
    """The folder where this user's control planes publish their tokens (see the module's doc)."""
    for var, sub in (("PRAAS_RUNTIME_DIR", None), ("XDG_RUNTIME_DIR", "praas"), ("HOME", ".praas")):
        value = os.environ.get(var)
        if value:
            return Path(value) / sub if sub else Path(value)
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"praas-{os.geteuid()}"


def _private_dir(path: Path) -> bool:
    try:
        meta = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(meta.st_mode) and meta.st_uid == os.geteuid() and meta.st_mode & 0o077 == 0


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not text.rsplit(")", 1)[-1].lstrip().startswith("Z")


def _read_published(path: Path) -> Optional[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 2:
        return None
    token = _parse_token(lines[0])
    try:
        pid = int(lines[1].strip())
    except ValueError:
        return None
    return token if token and _alive(pid) else None


def _authority(url: str) -> Optional[Tuple[str, int]]:
    if not url.startswith("http://"):
        return None
    authority = url[len("http://") :].split("/", 1)[0]
    host, sep, port = authority.rpartition(":")
    if not sep:
        return None
    try:
        number = int(port)
    except ValueError:
        return None
    return host.strip("[]"), number


def _published_name(ip: str, port: int) -> str:
    return f"{ipaddress.ip_address(ip.split('%', 1)[0])}_{port}"


def discover_token(url: str) -> Optional[str]:
    """The token to present to the control plane at ``url``, found as the CLI finds it (see the
    module's doc), or ``None``."""
    token = _parse_token(os.environ.get("PRAAS_TOKEN", ""))
    if token:
        return token
    token_file = os.environ.get("PRAAS_TOKEN_FILE")
    if token_file:
        try:
            return _parse_token(Path(token_file).read_text())
        except OSError:
            return None
    root = runtime_dir()
    if not _private_dir(root):
        return None
    authority = _authority(url)
    if authority is None:
        return None
    host, port = authority
    names: List[str] = []
    try:
        for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            names.append(_published_name(str(sockaddr[0]), port))
    except (OSError, ValueError):
        pass
    names += [f"0.0.0.0_{port}", f"::_{port}"]
    for name in dict.fromkeys(names):  # in order, once each
        token = _read_published(root / "api" / name)
        if token:
            return token
    return None


def _path(*segments: str) -> str:
    # Names the control plane accepts need no escaping; anything else is escaped (and refused
    # with 400 or 404), so that no name can change the route.
    return "/" + "/".join(urllib.parse.quote(s, safe="") for s in segments)


def _resources(vcpus: Optional[int], memory_mb: Optional[int]) -> Optional[Resources]:
    if vcpus is None and memory_mb is None:
        return None
    if vcpus is None or memory_mb is None:
        raise ValueError("give both vcpus and memory_mb, or neither (the application's default)")
    return {"vcpus": int(vcpus), "memory_mb": int(memory_mb)}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string but for one escape TOML lacks: "\/", never written.
        return json.dumps(value)
    raise ValueError(f"cannot write {value!r} into a manifest")


def manifest_with_uploads(path: Union[str, os.PathLike]) -> Tuple[str, Dict[str, bytes]]:
    """Reads a manifest and the files of its functions' code (libraries, and the ``.py`` module of
    each Python function), as ``praas app create`` does: returns the manifest rewritten to name
    each file by its upload path (its file name, ``N/NAME`` where two differ in folder) and the
    files to upload. Relative paths are resolved against the manifest's folder. Needs ``tomllib`` (Python 3.11) or ``tomli``."""
    try:
        import tomllib  # type: ignore[import-not-found]
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[import-not-found,no-redef]
        except ImportError as e:
            raise PraasError("reading a manifest needs Python 3.11 or the package tomli") from e
    manifest_path = Path(path)
    with open(manifest_path, "rb") as f:
        manifest = tomllib.load(f)
    functions = manifest.get("function", [])
    uploads: Dict[Path, str] = {}
    files: Dict[str, bytes] = {}
    lines: List[str] = []
    for function in functions:
        function = dict(function)
        python = function.get("language") == "python"
        named = function.get("module") if python else function.get("library")
        if python and named is not None and not (named.endswith(".py") or "/" in named):
            raise PraasError(
                f"function {function.get('name')!r}: module {named!r} is a module name: name the module's .py file "
                "(the control plane loads only files uploaded with the manifest or inside a --function-root)"
            )
        if named is not None:
            what = "module" if python else "library"
            try:
                source = (manifest_path.parent / named).resolve(strict=True)
            except OSError as e:
                raise PraasError(f"function {function.get('name')!r}: {what} {named}: {e}") from e
            upload = uploads.get(source)
            if upload is None:
                # A module's upload stays a file to the control plane: a .py name, or a folder.
                base = source.name if not python or source.name.endswith(".py") else f"modules/{source.name}"
                upload = base
                n = 2
                while upload in files:
                    upload = f"{n}/{base}"
                    n += 1
                files[upload] = source.read_bytes()
                uploads[source] = upload
            function["module" if python else "library"] = upload
        lines.append("[[function]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in function.items()]
        lines.append("")
    return "\n".join(lines), files


class ControlPlane:
    """A client of the control plane's HTTP API at ``url`` (``http://HOST:PORT``; default
    ``$PRAAS_CONTROL``, else ``http://127.0.0.1:7000``), presenting ``token`` or the one found as
    the CLI finds it (:func:`discover_token`). Every request times out after ``timeout`` seconds.

    Answers are the API's JSON as dictionaries (:class:`AppInfo`, :class:`ProcessInfo`);
    refusals raise :class:`ApiError` with the HTTP status, an unreachable control plane
    :class:`ConnectionError`, a request that timed out :class:`TimeoutError`.
    """

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, timeout: float = 600.0) -> None:
        url = url or os.environ.get("PRAAS_CONTROL") or "http://127.0.0.1:7000"
        if not url.startswith("http://"):
            raise ValueError(f"the control plane's URL is http://HOST:PORT, not {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token = token if token is not None else discover_token(self.url)
        # No proxy: the API is on the cluster's own network, and a proxy would see the token.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:
        return f"ControlPlane({self.url!r}, token={'...' if self._token else None})"

    @property
    def has_token(self) -> bool:
        """Whether requests present a token."""
        return self._token is not None

    # -- the HTTP exchange -------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None
    ) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.read(_MAX_OUTPUT + 1)
        except urllib.error.HTTPError as e:
            raise self._refusal(e) from None
        except (socket.timeout, builtins.TimeoutError) as e:
            raise TimeoutError(f"the control plane at {self.url} did not answer within {self.timeout} s") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, builtins.TimeoutError)):
                raise TimeoutError(f"the control plane at {self.url} did not answer within {self.timeout} s") from e
            raise ConnectionError(f"cannot reach the control plane at {self.url}: {e.reason}") from e
        except (OSError, http.client.HTTPException) as e:
            raise ConnectionError(f"cannot reach the control plane at {self.url}: {e}") from e

    def _refusal(self, error: urllib.error.HTTPError) -> ApiError:
        text = error.read().decode("utf-8", "replace")
        try:
            message = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            message = text or str(error.reason)
        if error.code == 401 and not self._token:
            message += (
                f"; no token found for {self.url}: run as the user who started the control plane,"
                " or set PRAAS_TOKEN_FILE"
            )
        return ApiError(error.code, message)

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        text = self._request(method, path, data, "application/json" if data is not None else None)
        try:
            return json.loads(text)
        except ValueError as e:
            raise PraasError(f"unexpected answer from {self.url}{path}: {text[:200]!r}") from e

    # -- applications ------------------------------------------------------------------------

    def apps(self) -> List[AppInfo]:
        """Every application."""
        return self._json("GET", "/apps")

    def app(self, name: str) -> AppInfo:
        """One application."""
        return self._json("GET", _path("apps", name))

    def create_app(
        self,
        name: str,
        manifest: str,
        files: Optional[Mapping[str, bytes]] = None,
        *,
        vcpus: Optional[int] = None,
        memory_mb: Optional[int] = None,
        slurm: Optional[Mapping[str, Any]] = None,
    ) -> AppInfo:
        """Creates application ``name`` from the manifest's TOML text and the files uploaded with
        it (each library of the manifest, by the relative path the manifest names; libraries may
        instead lie inside a ``--function-root`` of the control plane). ``vcpus`` and
        ``memory_mb``: its processes' default resources; ``slurm``: its Slurm job settings."""
        body: Dict[str, Any] = {
            "manifest": manifest,
            "files": [
                {"path": path, "content": base64.b64encode(bytes(content)).decode("ascii")}
                for path, content in (files or {}).items()
            ],
            "resources": _resources(vcpus, memory_mb),
        }
        if slurm is not None:
            body["slurm"] = dict(slurm)
        return self._json("PUT", _path("apps", name), body)

    def create_app_from_manifest(
        self,
        name: str,
        manifest: Union[str, os.PathLike],
        *,
        vcpus: Optional[int] = None,
        memory_mb: Optional[int] = None,
        slurm: Optional[Mapping[str, Any]] = None,
        upload: bool = True,
    ) -> AppInfo:
        """Creates application ``name`` from a manifest file, as ``praas app create`` does: every
        library it names is uploaded with it (:func:`manifest_with_uploads`); with
        ``upload=False`` the manifest goes as it is (``--in-place``: libraries inside a
        ``--function-root``)."""
        if upload:
            text, files = manifest_with_uploads(manifest)
        else:
            text, files = Path(manifest).read_text(), {}
        return self.create_app(name, text, files, vcpus=vcpus, memory_mb=memory_mb, slurm=slurm)

    def delete_app(self, name: str) -> None:
        """Deletes an application without processes (409 while it has any)."""
        self._json("DELETE", _path("apps", name))

    def client_key(self, app: str) -> str:
        """The application's client key, what data-plane clients authenticate with."""
        return self._json("GET", _path("apps", app, "client-key"))["client_key"]

    def credentials(self, app: str, name: str = "python") -> "_native.Credentials":
        """Client credentials of the application (its client key), for :class:`praas.Client`."""
        return _native.Credentials(app, self.client_key(app), name)

    # -- processes ---------------------------------------------------------------------------

    def processes(self, app: str) -> List[ProcessInfo]:
        """The application's processes, whatever their status."""
        return self._json("GET", _path("apps", app, "processes"))

    def process(self, app: str, name: str) -> ProcessInfo:
        """One process."""
        return self._json("GET", _path("apps", app, "processes", name))

    def create_process(
        self, app: str, name: str, *, vcpus: Optional[int] = None, memory_mb: Optional[int] = None
    ) -> ProcessInfo:
        """Creates a process; answers once it is ALLOCATED, with its data-plane address."""
        return self._json("PUT", _path("apps", app, "processes", name), {"resources": _resources(vcpus, memory_mb)})

    def swap(self, app: str, name: str) -> ProcessInfo:
        """Drains and swaps the process out; answers once SWAPPED_OUT (``swap.bytes``, ``.secs``)."""
        return self._json("POST", _path("apps", app, "processes", name, "swap"))

    def swap_in(self, app: str, name: str) -> ProcessInfo:
        """Starts the process again from its snapshot; answers once ALLOCATED."""
        return self._json("POST", _path("apps", app, "processes", name, "swapin"))

    def stop(self, app: str, name: str) -> ProcessInfo:
        """Stops the process (SIGTERM, SIGKILL after 10 s); answers once CLOSED."""
        return self._json("POST", _path("apps", app, "processes", name, "stop"))

    def delete_process(self, app: str, name: str, force: bool = False) -> None:
        """Deletes a SWAPPED_OUT, CLOSED or FAILURE process and its swap data. A SWAPPED_OUT
        process's snapshot is its only state: without ``force`` deleting one is refused (409)."""
        path = _path("apps", app, "processes", name)
        self._json("DELETE", path + "?force=true" if force else path)

    def wait_status(self, app: str, name: str, status: Union[str, Iterable[str]], timeout: float = 60.0) -> ProcessInfo:
        """Polls the process until its status is ``status`` (or one of several); raises
        :class:`TimeoutError` after ``timeout`` seconds."""
        wanted = {status} if isinstance(status, str) else set(status)
        deadline = time.monotonic() + timeout
        while True:
            record = self.process(app, name)
            if record.get("status") in wanted:
                return record
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{app}/{name} is {record.get('status')}, not {sorted(wanted)}, after {timeout} s")
            time.sleep(0.02)

    # -- invocations -------------------------------------------------------------------------

    def invoke(self, app: str, function: str, data: Any = b"", process: Optional[str] = None) -> bytes:
        """Invokes ``function`` through the control plane (on ``process``, or on one it picks:
        an idle ALLOCATED one, else a swapped-out one swapped in, else a new one); returns the
        output. A function's failure is an :class:`ApiError` (its HTTP status and message)."""
        path = _path("apps", app, "invoke", function)
        if process is not None:
            path += "?" + urllib.parse.urlencode({"process": process})
        output = self._request("POST", path, bytes(memoryview(data)), "application/octet-stream")
        if len(output) > _MAX_OUTPUT:
            raise PraasError(f"the output of {function} exceeds {_MAX_OUTPUT} bytes")
        return output

    def connect(self, app: str, process: str, *, rdma: bool = True, **options: Any) -> "_native.Client":
        """A :class:`praas.Client` straight to the process's data plane (as ``praas invoke
        --direct``): over RDMA where the process serves it and ``rdma`` is true, else over TCP,
        presenting the application's client key. ``options`` go to :class:`praas.Client`."""
        record = self.process(app, process)
        if rdma and record.get("rdma_addr") and _native.HAS_RDMA:
            address = f"rdma://{record['rdma_addr']}"
        elif record.get("data_addr"):
            address = record["data_addr"]
        else:
            raise ApiError(503, f"{app}/{process} is {record.get('status')}: it has no data-plane address")
        options.setdefault("credentials", self.credentials(app))
        return _native.Client(address, **options)

    def metrics(self) -> str:
        """Every metric of the control plane, in the Prometheus text format."""
        return self._request("GET", "/metrics").decode("utf-8", "replace")
