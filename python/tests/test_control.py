"""praas.ControlPlane against a real control plane (`praas control serve`, local backend)."""

from __future__ import annotations

import pytest

import praas


@pytest.fixture()
def plane(control_plane, monkeypatch):
    """A client that found the token the way the CLI does: published in the runtime folder."""
    for var in ("PRAAS_TOKEN", "PRAAS_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PRAAS_RUNTIME_DIR", str(control_plane["runtime"]))
    plane = praas.ControlPlane(control_plane["url"], timeout=120)
    assert plane.has_token
    return plane


def test_token_lookup_order(control_plane, monkeypatch, tmp_path):
    token = (control_plane["data"] / "api-token").read_text().strip()
    url = control_plane["url"]
    monkeypatch.setenv("PRAAS_RUNTIME_DIR", str(control_plane["runtime"]))
    monkeypatch.delenv("PRAAS_TOKEN", raising=False)
    monkeypatch.delenv("PRAAS_TOKEN_FILE", raising=False)
    assert praas.discover_token(url) == token  # published for this address
    other = "ab" * 32
    monkeypatch.setenv("PRAAS_TOKEN", other)
    assert praas.discover_token(url) == other  # PRAAS_TOKEN first
    monkeypatch.setenv("PRAAS_TOKEN", "not a token")
    file = tmp_path / "token"
    file.write_text("cd" * 32 + "\n")
    monkeypatch.setenv("PRAAS_TOKEN_FILE", str(file))
    assert praas.discover_token(url) == "cd" * 32  # then PRAAS_TOKEN_FILE
    monkeypatch.setenv("PRAAS_TOKEN_FILE", str(tmp_path / "missing"))
    assert praas.discover_token(url) is None  # an unreadable file ends the lookup
    monkeypatch.delenv("PRAAS_TOKEN_FILE")
    monkeypatch.delenv("PRAAS_TOKEN")
    assert praas.discover_token(url.rsplit(":", 1)[0] + ":1") is None  # nothing for that port
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    monkeypatch.setenv("PRAAS_RUNTIME_DIR", str(open_dir))
    assert praas.discover_token(url) is None  # a folder others can read is not trusted


def test_a_wrong_or_missing_token_is_refused_with_401(control_plane, monkeypatch, tmp_path):
    wrong = praas.ControlPlane(control_plane["url"], token="00" * 32)
    with pytest.raises(praas.ApiError) as caught:
        wrong.apps()
    assert caught.value.status == 401
    with pytest.raises(praas.ApiError) as caught:
        wrong.create_app("never", "")
    assert caught.value.status == 401
    for var in ("PRAAS_TOKEN", "PRAAS_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PRAAS_RUNTIME_DIR", str(tmp_path))  # no token published here
    none = praas.ControlPlane(control_plane["url"])
    assert not none.has_token
    with pytest.raises(praas.ApiError) as caught:
        none.apps()
    assert caught.value.status == 401 and "PRAAS_TOKEN_FILE" in caught.value.message


def test_unreachable_control_plane_raises_connection_error():
    with pytest.raises(praas.ConnectionError):
        praas.ControlPlane("http://127.0.0.1:1", token="00" * 32, timeout=5).apps()


def test_application_lifecycle(plane, manifest_file):
    app = "pyapp"
    info = plane.create_app_from_manifest(app, manifest_file, vcpus=1, memory_mb=2048)
    assert info["name"] == app and "counter" in info["functions"]
    assert app in [a["name"] for a in plane.apps()]
    with pytest.raises(praas.ApiError) as caught:
        plane.create_app_from_manifest(app, manifest_file)
    assert caught.value.status == 409
    with pytest.raises(praas.ApiError) as caught:
        plane.app("no-such-app")
    assert caught.value.status == 404

    record = plane.create_process(app, "p1")
    assert record["status"] == "ALLOCATED" and record["data_addr"]
    # Through the API, then straight to the process's data plane with the client key.
    assert plane.invoke(app, "counter", process="p1") == b"1"
    assert plane.invoke(app, "echo", b"via the API", process="p1") == b"via the API"
    with plane.connect(app, "p1", timeout=30) as client:
        assert client.invoke("counter") == b"2"
        assert client.invoke("echo", b"direct") == b"direct"
    with pytest.raises(praas.ApiError) as caught:
        plane.invoke(app, "fail", b"api failure", process="p1")
    assert caught.value.status >= 400 and "api failure" in caught.value.message

    swapped = plane.swap(app, "p1")
    assert swapped["status"] == "SWAPPED_OUT" and swapped["swap"]["bytes"] > 0
    assert plane.process(app, "p1")["status"] == "SWAPPED_OUT"
    back = plane.swap_in(app, "p1")
    assert back["status"] == "ALLOCATED"
    assert plane.invoke(app, "counter", process="p1") == b"3"  # the state survived the swap

    with pytest.raises(praas.ApiError) as caught:
        plane.delete_process(app, "p1")  # a running process
    assert caught.value.status == 409
    with pytest.raises(praas.ApiError) as caught:
        plane.delete_app(app)  # with processes
    assert caught.value.status == 409
    assert plane.stop(app, "p1")["status"] == "CLOSED"
    plane.delete_process(app, "p1")
    assert plane.processes(app) == []
    plane.delete_app(app)
    assert app not in [a["name"] for a in plane.apps()]


def test_invoke_picks_or_makes_a_process(plane, manifest_file):
    app = "pyauto"
    plane.create_app_from_manifest(app, manifest_file, vcpus=1, memory_mb=2048)
    try:
        assert plane.invoke(app, "echo", bytearray(b"anywhere")) == b"anywhere"
        (record,) = plane.processes(app)
        plane.wait_status(app, record["name"], "ALLOCATED", timeout=60)
        key = plane.client_key(app)
        assert len(key) == 64 and plane.credentials(app).app == app
        assert "praas" in plane.metrics()
    finally:
        for record in plane.processes(app):
            if record["status"] == "ALLOCATED":
                plane.stop(app, record["name"])
            plane.delete_process(app, record["name"])
        plane.delete_app(app)
