"""praas.Client against real processes (`praas process serve` with the example functions)."""

from __future__ import annotations

import array
import builtins
import hashlib
import hmac
import os
import threading
import time

import pytest

import praas
from praas import _native


def test_status_mirrors_the_wire():
    assert [(s.name, s.code) for s in praas.Status] == _native.STATUSES
    assert praas.Status.UNKNOWN_FUNCTION == 2 and praas.Status.OVERLOADED.retryable


@pytest.mark.parametrize("size", [0, 8, 1 << 20])
def test_echo_is_byte_exact(process, size):
    data = os.urandom(size)
    with praas.Client(process, timeout=30) as client:
        assert client.invoke("echo", data) == data
        assert client.invoke("echo_worker", data) == data


def test_any_bytes_like_input(process):
    with praas.Client(process) as client:
        assert client.invoke("echo") == b""
        assert client.invoke("echo", bytearray(b"abc")) == b"abc"
        assert client.invoke("echo", memoryview(b"xabcx")[1:4]) == b"abc"
        assert client.invoke("echo", array.array("I", [1, 2])) == array.array("I", [1, 2]).tobytes()
        with pytest.raises(TypeError):
            client.invoke("echo", "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            client.invoke("echo", 5)  # type: ignore[arg-type]


def test_large_output(process):
    with praas.Client(process) as client:
        out = client.invoke("generate", str(3 << 20).encode())
        assert len(out) == 3 << 20 and out[:3] == bytes([0, 1, 2]) and out[251] == 0


def test_unknown_function_raises_remote_error(process):
    with praas.Client(process) as client:
        with pytest.raises(praas.RemoteError) as caught:
            client.invoke("no_such_function", b"x")
        error = caught.value
        assert error.status is praas.Status.UNKNOWN_FUNCTION
        assert error.status.name == "UNKNOWN_FUNCTION" and error.status.code == 2
        assert "no_such_function" in error.message
        assert isinstance(error, praas.PraasError) and error.id is None
        # The connection serves on.
        assert client.invoke("echo", b"after") == b"after"


def test_failing_function_raises_with_its_message(process):
    with praas.Client(process) as client:
        with pytest.raises(praas.RemoteError) as caught:
            client.invoke("fail", b"it went wrong")
        assert caught.value.status is praas.Status.FUNCTION
        assert "it went wrong" in caught.value.message
        assert "FUNCTION" in str(caught.value)
        assert client.invoke("echo", b"ok") == b"ok"


def test_pipelined_submit_and_recv_of_64(process):
    with praas.Client(process) as client:
        sent = {}
        for i in range(64):
            payload = i.to_bytes(4, "little") * (i + 1)
            sent[client.submit("echo", payload)] = payload
        assert client.in_flight == 64 and len(sent) == 64
        for _ in range(64):
            id, output = client.recv()
            assert output == sent.pop(id)
        assert not sent and client.in_flight == 0


def test_wait_out_of_order_and_completions(process):
    with praas.Client(process) as client:
        ids = [client.submit("echo_worker", str(i).encode()) for i in range(16)]
        assert client.wait(ids[10]) == b"10"
        assert client.wait(ids[3]) == b"3"
        seen = dict(client.completions(4))
        assert len(seen) == 4 and client.in_flight == 10
        rest = dict(client.completions())  # until none is in flight
        assert client.in_flight == 0
        expected = {id: str(i).encode() for i, id in enumerate(ids) if i not in (3, 10)}
        assert {**seen, **rest} == expected


def test_a_failed_completion_names_its_id(process):
    with praas.Client(process) as client:
        good = client.submit("echo", b"a")
        bad = client.submit("fail", b"no")
        outputs, failures = {}, []
        iterator = client.completions(2)
        while True:
            try:
                id, output = next(iterator)
            except StopIteration:
                break
            except praas.RemoteError as e:  # the iterator goes on after a failure
                failures.append(e)
                continue
            outputs[id] = output
        assert outputs == {good: b"a"}
        assert [(e.id, e.status) for e in failures] == [(bad, praas.Status.FUNCTION)]
        with pytest.raises(praas.RemoteError) as caught:
            client.wait(client.submit("no_such_function"))
        assert caught.value.status is praas.Status.UNKNOWN_FUNCTION and caught.value.id is not None
        assert client.in_flight == 0


def test_client_timeout_then_the_connection_serves_on(process):
    with praas.Client(process, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(praas.TimeoutError) as caught:
            client.invoke("sleep", b"1500")
        assert time.monotonic() - started < 1.2
        assert isinstance(caught.value, builtins.TimeoutError)
        client.timeout = 10
        assert client.timeout == 10
        # The late answer to the sleep is kept aside; this one is matched by its id.
        assert client.invoke("echo", b"next") == b"next"


def test_the_process_deadline_answers_timeout(process):
    with praas.Client(process, timeout=30, invocation_timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(praas.RemoteError) as caught:
            client.invoke("sleep", b"3000")
        assert caught.value.status is praas.Status.TIMEOUT
        assert time.monotonic() - started < 2.9
        assert client.invoke("echo", b"x") == b"x"


def test_the_gil_is_released_while_waiting(process):
    with praas.Client(process, timeout=30) as client:
        done = threading.Event()

        def call():
            client.invoke("sleep", b"400")
            done.set()

        thread = threading.Thread(target=call)
        thread.start()
        spins = 0
        deadline = time.monotonic() + 10
        while not done.is_set() and time.monotonic() < deadline:
            spins += 1  # Python code runs meanwhile: the waiting thread holds no GIL
        thread.join(timeout=10)
        assert done.is_set() and spins > 10_000


def test_calls_from_threads_share_one_client(process):
    with praas.Client(process) as client:
        errors = []

        def work(n):
            try:
                for i in range(50):
                    data = f"{n}-{i}".encode()
                    assert client.invoke("echo", data) == data
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors and not any(t.is_alive() for t in threads)


def test_close_and_context_manager(process):
    client = praas.Client(process)
    assert client.transport in ("uring", "mio") and client.address == process
    assert "in flight" in repr(client)
    with client:
        assert client.invoke("noop") == b""
    assert client.closed
    with pytest.raises(praas.ConnectionError):
        client.invoke("echo", b"x")
    client.close()  # twice is harmless


@pytest.mark.parametrize("transport", ["mio", "auto"])
def test_transports(process, transport):
    with praas.Client(process, transport=transport, spin=20e-6) as client:
        assert client.invoke("echo", b"t") == b"t"
        if transport == "mio":
            assert client.transport == "mio"


def test_bad_arguments():
    with pytest.raises(ValueError):
        praas.Client("127.0.0.1:1", timeout=-1)
    with pytest.raises(ValueError):
        praas.Client("127.0.0.1:1", transport="carrier-pigeon")
    with pytest.raises(ValueError):
        praas.Credentials.parse("no colon")


def test_refused_connection_raises_connection_error():
    with pytest.raises(praas.ConnectionError) as caught:
        praas.Client("127.0.0.1:1", timeout=5)
    assert isinstance(caught.value, builtins.ConnectionError)


def client_key(secret: str) -> str:
    """The application's client key, derived from its secret as the wire does."""
    return hmac.new(secret.encode(), b"praas client key", hashlib.sha256).hexdigest()


def test_client_key_credentials(auth_process, tmp_path):
    address, app = auth_process["address"], auth_process["app"]
    credentials = praas.Credentials(app, client_key(auth_process["secret"]), name="pytest")
    assert "key=..." in repr(credentials) and client_key(auth_process["secret"]) not in repr(credentials)
    with praas.Client(address, credentials=credentials) as client:
        assert client.invoke("echo", b"authenticated") == b"authenticated"
    # From a file, as `praas invoke --credentials-file` reads it.
    file = tmp_path / "credentials"
    file.write_text(f"{app}:{client_key(auth_process['secret'])}\n")
    with praas.Client(address, credentials=praas.Credentials.from_file(file)) as client:
        assert client.invoke("echo", b"f") == b"f"


def test_wrong_or_missing_credentials_are_refused(auth_process):
    address, app = auth_process["address"], auth_process["app"]
    with pytest.raises(praas.RemoteError) as caught:
        praas.Client(address, credentials=praas.Credentials(app, client_key("another secret")), timeout=10)
    assert caught.value.status is praas.Status.UNAUTHENTICATED
    with pytest.raises(praas.RemoteError) as caught:
        praas.Client(address, credentials=praas.Credentials("other-app", client_key(auth_process["secret"])), timeout=10)
    assert caught.value.status is praas.Status.UNAUTHENTICATED
    # Anonymous: the process answers the invocation UNAUTHENTICATED (or drops the connection).
    with pytest.raises((praas.RemoteError, praas.ConnectionError)) as caught:
        with praas.Client(address, timeout=10) as client:
            client.invoke("echo", b"x")
    if isinstance(caught.value, praas.RemoteError):
        assert caught.value.status is praas.Status.UNAUTHENTICATED
