"""A Python driver for praas, as a researcher writes one in a notebook or a script.

It deploys an application of Python and Rust functions through the control plane, invokes them
(through the control plane, then straight to the process with the application's client key,
pipelined), swaps the process out and back in with its state intact, and cleans up.

    pip install ./python                       # the client package (maturin, once)
    praas control serve --listen 127.0.0.1:7000 --data-dir /tmp/praas-data &
    python3 examples/python/driver.py --manifest MANIFEST [--control http://127.0.0.1:7000]

MANIFEST lists the functions (examples/python/manifest.toml, its `library` lines naming your
build's libpraas_example_functions.so); the control plane's token is found as the CLI finds it.
"""

import argparse
import time

import praas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="the functions' manifest")
    parser.add_argument("--control", default=None, help="the control plane's URL (default: $PRAAS_CONTROL)")
    parser.add_argument("--app", default="pydriver")
    args = parser.parse_args()

    plane = praas.ControlPlane(args.control)
    plane.create_app_from_manifest(args.app, args.manifest, vcpus=1, memory_mb=2048)
    try:
        process = plane.create_process(args.app, "w1")
        print(f"process w1 is {process['status']} at {process['data_addr']}")

        # Through the control plane: a Python function keeping a counter in the process's state.
        for _ in range(3):
            print("py_counter ->", plane.invoke(args.app, "py_counter", process="w1").decode())

        # Straight to the process, authenticated with the application's client key.
        with plane.connect(args.app, "w1") as client:
            print("py_call_echo ->", client.invoke("py_call_echo", b"python calls rust").decode())
            try:
                client.invoke("py_fail", b"fail on purpose")
            except praas.RemoteError as e:
                print(f"py_fail -> {e.status.name}: {e.message.splitlines()[0]}")
            started = time.perf_counter()
            ids = [client.submit("py_echo", f"message {i}".encode()) for i in range(64)]
            answers = {id_: client.wait(id_) for id_ in ids}
            elapsed = time.perf_counter() - started
            assert all(answers[i] == f"message {n}".encode() for n, i in enumerate(ids))
            print(f"64 pipelined py_echo invocations in {elapsed * 1e3:.2f} ms")

        swapped = plane.swap(args.app, "w1")
        print(f"swapped out: {swapped['swap']['bytes']} bytes in {swapped['swap']['secs']:.3f} s")
        plane.swap_in(args.app, "w1")
        print("after the swap, py_counter ->", plane.invoke(args.app, "py_counter", process="w1").decode())
    finally:
        for process in plane.processes(args.app):
            if process["status"] not in ("SWAPPED_OUT", "CLOSED", "FAILURE"):
                plane.stop(args.app, process["name"])
            plane.delete_process(args.app, process["name"])
        plane.delete_app(args.app)


if __name__ == "__main__":
    main()
