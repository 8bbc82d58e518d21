"""What `sync_interval: always` costs on this machine's disk: JetStream publishes with and without it.

Starts a private nats-server (loopback, random port, store in a temporary directory under
--store-parent, which should be on the disk to measure) once with the default sync interval and
once with `sync_interval: always`, creates a one-replica file stream on each, and publishes N
64-byte messages twice: one at a time (latency of an acknowledged publish) and with WINDOW
publishes in flight (throughput). Speaks the NATS text protocol directly, so it needs no client
library. docs/deploy.md quotes its output.

Usage: nats_fsync_cost.py [--count N] [--window W] [--store-parent DIR] [--nats-server BIN]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

PAYLOAD = b"x" * 64


class Connection:
    """A NATS connection with one inbox subscription; enough to publish and count JetStream acks."""

    def __init__(self, port):
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.reader = self.socket.makefile("rb")
        self.reader.readline()  # INFO
        self.socket.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.> 1\r\nPING\r\n')
        while self.reader.readline().strip() != b"PONG":
            pass

    def publish(self, subject, body, count=1):
        frame = b"PUB %s _INBOX.ack %d\r\n%s\r\n" % (subject, len(body), body)
        self.socket.sendall(frame * count)

    def replies(self, count):
        """Reads `count` replies; returns the last one's body."""
        body = b""
        while count:
            line = self.reader.readline()
            if line.startswith(b"PING"):
                self.socket.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG"):
                body = self.reader.read(int(line.split()[-1]) + 2)
                count -= 1
            elif not line:
                raise ConnectionError("nats-server closed the connection")
        return body


def measure(nats_server, store_parent, sync_always, count, window):
    store = tempfile.mkdtemp(prefix="elk-fsync-", dir=store_parent)
    try:
        with open(os.path.join(store, "nats.conf"), "w", encoding="utf-8") as handle:
            handle.write(f"listen: 127.0.0.1:-1\njetstream {{ store_dir: {json.dumps(store)}\n")
            handle.write("sync_interval: always\n" if sync_always else "")
            handle.write("}\n")
        server = subprocess.Popen(
            [nats_server, "-c", os.path.join(store, "nats.conf"), "--ports_file_dir", store],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not glob.glob(os.path.join(store, "*.ports")):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("nats-server did not start")
                time.sleep(0.01)
            with open(glob.glob(os.path.join(store, "*.ports"))[0], encoding="utf-8") as handle:
                port = int(json.load(handle)["nats"][0].rsplit(":", 1)[1])
            connection = Connection(port)
            stream = {"name": "FSYNC", "subjects": ["fsync.>"], "storage": "file", "num_replicas": 1}
            connection.publish(b"$JS.API.STREAM.CREATE.FSYNC", json.dumps(stream).encode())
            if b"error" in connection.replies(1):
                raise RuntimeError("stream creation failed")

            started = time.perf_counter()
            for _ in range(count):
                connection.publish(b"fsync.one", PAYLOAD)
                connection.replies(1)
            sequential = (time.perf_counter() - started) / count

            started, sent = time.perf_counter(), 0
            connection.publish(b"fsync.many", PAYLOAD, min(window, count))
            sent = min(window, count)
            while sent < count:  # keep `window` in flight: one more for each ack
                connection.replies(1)
                connection.publish(b"fsync.many", PAYLOAD)
                sent += 1
            connection.replies(min(window, count))
            throughput = count / (time.perf_counter() - started)
            return sequential, throughput
        finally:
            server.terminate()
            server.wait()
    finally:
        shutil.rmtree(store, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--store-parent", default="/var/tmp")
    parser.add_argument("--nats-server", default=os.environ.get("NATS_SERVER_BIN", "nats-server"))
    args = parser.parse_args()
    for label, always in (("default sync_interval", False), ("sync_interval: always", True)):
        sequential, throughput = measure(args.nats_server, args.store_parent, always, args.count, args.window)
        print(f"{label:22} one at a time {sequential * 1e6:7.0f} us/publish   "
              f"{args.window} in flight {throughput:8.0f} publishes/s")


if __name__ == "__main__":
    main()
