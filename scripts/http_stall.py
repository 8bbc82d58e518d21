"""The stalled-connection attack of issue 9 against a real elk-assigner: what it costs the process.

Starts a private nats-server (loopback, random port, store in a temporary directory) and one
elk-assigner binary serving its HTTP API on a free loopback port, then opens --connections TCP
connections that each send half a request's headers and stall (slowloris). For --hold seconds it
keeps that many open: a connection the assigner closes (header timeout) or refuses (503 over its
connection limit) is replaced at once, as an attacker would. Meanwhile it samples the assigner's
resident memory and the sockets it holds, and asks /healthz once as a legitimate client would.

Prints one JSON object: rss_before_kb, rss_peak_kb, rss_after_kb (after the attacker leaves),
assigner_sockets_max (sockets the assigner held at once), replaced (connections the assigner
ended and the attacker re-opened), healthz_during (the status a legitimate client got during the
attack; 503 while the attacker holds every place), healthz_after. Speaks raw TCP only, so it needs
no client library. docs/security.md quotes its output.

Usage: http_stall.py [--assigner BIN] [--nats-server BIN] [--connections N] [--hold SECONDS]
                     [--max-connections N] [--header-timeout 5s]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import selectors
import shutil
import socket
import subprocess
import tempfile
import time

STALL = b"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # headers never finished


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def sockets_held(pid):
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                held += 1
        except OSError:
            pass  # closed while listing
    return held


def http_status(port, timeout=5.0):
    """Status of GET /healthz, 0 when the connection fails or closes without an answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            line = client.makefile("rb").readline()
            return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (OSError, ValueError, IndexError):
        return 0


def wait_for(condition, what, deadline_s=60.0):
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def stall(port):
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(STALL)
    client.setblocking(False)
    return client


def attack(pid, port, connections, hold_s):
    """Holds `connections` stalled connections for `hold_s`; returns the samples."""
    selector = selectors.DefaultSelector()
    for _ in range(connections):
        selector.register(stall(port), selectors.EVENT_READ)
    peak_rss, peak_sockets, replaced, healthz_during = 0, 0, 0, None
    started = time.monotonic()
    while time.monotonic() - started < hold_s:
        # Readable means answered (503) or closed by the assigner: replace it.
        for key, _ in selector.select(timeout=0.2):
            selector.unregister(key.fileobj)
            key.fileobj.close()
            selector.register(stall(port), selectors.EVENT_READ)
            replaced += 1
        peak_rss = max(peak_rss, rss_kb(pid))
        peak_sockets = max(peak_sockets, sockets_held(pid))
        if healthz_during is None and time.monotonic() - started > hold_s / 2:
            healthz_during = http_status(port)
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    selector.close()
    return peak_rss, peak_sockets, replaced, healthz_during


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    parser.add_argument("--assigner", default=os.path.join(target, "debug", "elk-assigner"))
    parser.add_argument("--nats-server", default=os.environ.get("NATS_SERVER_BIN", "nats-server"))
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--hold", type=float, default=20.0)
    parser.add_argument("--max-connections", type=int, default=None)
    parser.add_argument("--header-timeout", default=None)
    args = parser.parse_args()

    store = tempfile.mkdtemp(prefix="elk-http-stall-")
    nats_port, http_port = free_port(), free_port()
    nats = subprocess.Popen(
        [args.nats_server, "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(
        os.environ,
        ELK_NATS_URL=f"nats://127.0.0.1:{nats_port}",
        ELK_NAMESPACE="stall",
        ELK_ASSIGNER__HTTP_LISTEN=f"127.0.0.1:{http_port}",
        ELK_HTTP_ADMIN_TOKENS=secrets.token_hex(16),
        RUST_LOG="warn",
    )
    if args.max_connections is not None:
        env["ELK_ASSIGNER__HTTP__MAX_CONNECTIONS"] = str(args.max_connections)
    if args.header_timeout is not None:
        env["ELK_ASSIGNER__HTTP__HEADER_TIMEOUT"] = args.header_timeout
    assigner = subprocess.Popen(
        [args.assigner], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: http_status(http_port, 1.0) == 200, "the assigner's /healthz")
        time.sleep(2)  # let start-up allocations settle before the baseline
        before = rss_kb(assigner.pid)
        peak, held, replaced, during = attack(
            assigner.pid, http_port, args.connections, args.hold
        )
        wait_for(lambda: http_status(http_port, 1.0) == 200, "/healthz after the attack")
        time.sleep(2)
        after = rss_kb(assigner.pid)
        print(
            json.dumps(
                {
                    "connections": args.connections,
                    "hold_s": args.hold,
                    "rss_before_kb": before,
                    "rss_peak_kb": peak,
                    "rss_after_kb": after,
                    "assigner_sockets_max": held,
                    "replaced": replaced,
                    "healthz_during": during,
                    "healthz_after": http_status(http_port),
                }
            )
        )
    finally:
        for process in (assigner, nats):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
