"""Example Python functions for a praas cloud process (docs/python.md).

Each function is `f(ctx, data)`: `data` is a read-only memoryview of the input, `ctx` the
invocation's context (`praas_function.Context`); it returns bytes, bytearray, memoryview or None.
examples/python/manifest.toml lists them beside the Rust example functions, and
dataplane/tests/python_functions.rs runs them in real processes.
"""

import time

import praas_function

# Module globals live as long as this process: they are not part of a swap (use ctx.state_put
# for what must survive one).
_calls = 0
_kept = None


def echo(ctx, data):
    """Returns the input (copied once, into the output buffer)."""
    return data


def noop(ctx, data):
    """Returns nothing: the Python counterpart of the C no-op."""
    return None


def counter(ctx, data):
    """Counts its invocations in the process's state (survives a swap): returns 1, 2, 3, ..."""
    found = ctx.state_get("py-counter")
    count = int(found[0]) + 1 if found else 1
    ctx.state_put("py-counter", str(count).encode())
    return str(count).encode()


def module_counter(ctx, data):
    """Counts its invocations in a module global (starts again at 1 after a swap)."""
    global _calls
    _calls += 1
    return str(_calls).encode()


def state_ops(ctx, data):
    """Input `key value`: stores, reads back, lists and deletes the key; returns what it saw."""
    key, value = bytes(data).split(b" ", 1)
    key = key.decode()
    ctx.state_put(key, value)
    got, timestamp = ctx.state_get(key)
    listed = [k for k, _ in ctx.state_keys() if k == key]
    deleted = ctx.state_delete(key)
    again = ctx.state_delete(key)
    gone = ctx.state_get(key) is None
    seen = f"{timestamp > 0} {listed == [key]} {deleted} {again} {gone}"
    return got + b" " + seen.encode()


def _check(text):
    if text.startswith("fail"):
        raise ValueError(f"asked to fail: {text}")
    return text


def fail(ctx, data):
    """Raises ValueError (two frames deep, for the traceback) when the input starts with `fail`."""
    return _check(bytes(data).decode()).encode()


def spin(ctx, data):
    """Burns the CPU in Python bytecode for the input's number of seconds (default 60)."""
    seconds = float(bytes(data) or b"60")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return b"finished"


def burn(ctx, data):
    """Input `n`: runs n iterations of a pure-Python loop and returns nothing: a fixed amount of
    work holding the GIL throughout (praas-bench python-gil measures how it scales with workers;
    a loop bounded by the clock, as `spin` is, would finish sooner under contention).
    """
    total = 0
    for i in range(int(bytes(data))):
        total += i
    return None


def msg_put(ctx, data):
    """Input `dest key payload`: puts the payload to process `dest` under `key`."""
    dest, key, payload = bytes(data).split(b" ", 2)
    ctx.put(dest.decode(), key.decode(), payload)
    return b"stored"


def msg_get(ctx, data):
    """Input `source|* key timeout_ms`: gets a message; returns `from payload`."""
    source, key, timeout_ms = bytes(data).decode().split()
    sender, payload = ctx.get(key, None if source == "*" else source, int(timeout_ms) / 1000)
    return sender.encode() + b" " + payload


def call_echo(ctx, data):
    """Invokes the process's `echo` (the Rust example's, through the C ABI) with the input."""
    return ctx.invoke("echo", data)


def call_python(ctx, data):
    """Invokes the Python `counter` locally, then `echo` with its answer."""
    return ctx.invoke("echo", b"counter=" + ctx.invoke("py_counter", b""))


def remote_call(ctx, data):
    """Input `process function input`: invokes `function` of `process` with `input` and returns
    its output (a failure raises praas_function.Error, which the caller's client sees with its
    status and message)."""
    process, function, payload = bytes(data).split(b" ", 2)
    return ctx.invoke_remote(process.decode(), function.decode(), payload)


def fan_out(ctx, data):
    """Input `p1,p2,... function input`: invokes `function` of every process listed at once and
    gathers the answers as they come; one line per process, in the order given:
    `p ok OUTPUT` or `p err STATUS MESSAGE` (the message's first line: a Python callee's
    traceback follows it)."""
    processes, function, payload = bytes(data).split(b" ", 2)
    names = [p for p in processes.decode().split(",") if p]
    lines = {}
    handles = {}
    for name in names:
        try:
            handles[ctx.submit(name, function.decode(), payload)] = name
        except praas_function.Error as err:
            lines[name] = f"{name} err {err.status} {_first_line(err)}"
    pending = list(handles)
    while pending:
        handle, result = ctx.wait_any(pending)
        pending.remove(handle)
        name = handles[handle]
        if isinstance(result, praas_function.Error):
            lines[name] = f"{name} err {result.status} {_first_line(result)}"
        else:
            lines[name] = f"{name} ok {result.decode(errors='replace')}"
    return "\n".join(lines[n] for n in names if n in lines).encode()


def _first_line(err):
    return (str(err).splitlines() or [""])[0]


def gather(ctx, data):
    """Input `p1,p2,... function input`: submits to every process, then `wait_all`; returns the
    outputs joined by `|` (an error as `!STATUS`)."""
    processes, function, payload = bytes(data).split(b" ", 2)
    handles = [ctx.submit(p, function.decode(), payload) for p in processes.decode().split(",") if p]
    results = ctx.wait_all(handles)
    return b"|".join(b"!%d" % r.status if isinstance(r, praas_function.Error) else r for r in results)


def big(ctx, data):
    """Returns as many bytes as the input says (a repeating 0..255 pattern)."""
    n = int(bytes(data))
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def process_id(ctx, data):
    """The id of the process it runs in."""
    ctx.log("info", "asked for the process id")
    return ctx.process_id.encode()


def keep(ctx, data):
    """Keeps a slice of its input and the context past the call (which a function should not)."""
    global _kept
    _kept = (data[:], ctx)
    return b"kept"


def kept(ctx, data):
    """What `keep` kept: the bytes of the slice (still valid), and what the old ctx does now."""
    view, old = _kept
    try:
        old.state_keys()
        answer = b"old ctx still works"
    except praas_function.Error as err:
        answer = b"old ctx raised status %d: %s" % (err.status, str(err).encode())
    return bytes(view) + b"|" + answer


def returns_text(ctx, data):
    """Returns a str, which is not bytes: the invocation fails."""
    return "text"
