#!/usr/bin/env python3
"""Writes the seed inputs and dictionaries of the fuzz targets into <dir>/<target>/ (called by
scripts/fuzz before every run; deterministic, so re-running changes nothing).

Seeds are valid messages of every kind the targets decode, written as the protocol does
(MessagePack maps with string keys, docs/protocol.md §3), plus JSON bodies, query strings and
TOML files, so the fuzzer starts from the accepted shapes and mutates from there. A dictionary per
target holds the field names and enum strings (as MessagePack strings for the binary targets).
"""
import json
import os
import struct
import sys


def pack(value):
    """Minimal MessagePack encoder: nil, bool, int, str, bytes, list, dict (string keys)."""
    if value is None:
        return b"\xc0"
    if value is True:
        return b"\xc3"
    if value is False:
        return b"\xc2"
    if isinstance(value, int):
        if 0 <= value < 0x80:
            return bytes([value])
        if value < 0:
            if value >= -32:
                return struct.pack("b", value)
            return b"\xd3" + struct.pack(">q", value)
        for code, fmt, limit in ((0xCC, ">B", 1 << 8), (0xCD, ">H", 1 << 16), (0xCE, ">I", 1 << 32)):
            if value < limit:
                return bytes([code]) + struct.pack(fmt, value)
        return b"\xcf" + struct.pack(">Q", value)
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) < 32:
            return bytes([0xA0 | len(raw)]) + raw
        return b"\xd9" + bytes([len(raw)]) + raw if len(raw) < 256 else b"\xda" + struct.pack(">H", len(raw)) + raw
    if isinstance(value, (list, tuple)):
        head = bytes([0x90 | len(value)]) if len(value) < 16 else b"\xdc" + struct.pack(">H", len(value))
        return head + b"".join(pack(item) for item in value)
    if isinstance(value, dict):
        head = bytes([0x80 | len(value)]) if len(value) < 16 else b"\xde" + struct.pack(">H", len(value))
        return head + b"".join(pack(k) + pack(v) for k, v in value.items())
    raise TypeError(value)


RANGE = {"min": 1, "max": 1000}
REF = {"id": "worker-1", "incarnation": 1764100000000000000}
SPEC = {"range": RANGE, "partition_size": 100, "open_ended": False, "max_attempts": 3,
        "retry_backoff_ms": 1000, "lookahead": 4}
JOB = {"schema": 1, "name": "backfill", "spec": SPEC, "state": "active", "cursor": 1,
       "next_partition": 1, "partitions_total": 0, "partitions_completed": 0,
       "partitions_failed": 0, "partitions_compacted": 0, "ids_completed": 0,
       "created_unix_ms": 1, "completed_unix_ms": None, "epoch": 1, "known_max": None,
       "low_watermark": None, "completed_above_watermark": [RANGE]}
PARTITION = {"schema": 1, "job": "backfill", "id": 1, "range": RANGE, "status": "granted",
             "owner": REF, "token": 4294967297, "checkpoint": 400, "attempts": 0, "error": None,
             "not_before_unix_ms": None, "epoch": 1}
GRANT = {"job": "backfill", "partition": 1, "range": RANGE, "resume_from": 1, "token": 4294967297}
MEMBER = {"schema": 1, "role": "worker", "incarnation": 7, "capacity": 2, "jobs": ["backfill"],
          "labels": {"zone": "a"}, "version": "0.1.0"}
KV = [
    MEMBER,
    {"schema": 1, "holder": "election-1", "incarnation": 7},
    {"schema": 1, "generation": 8, "members": [{"id": "worker-1", "role": "worker",
                                                "incarnation": 7, "capacity": 2, "jobs": []}]},
    {"schema": 1, "holder": REF, "epoch": 1, "generation": 8},
    JOB,
    PARTITION,
    {"schema": 1, "incarnation": 7, "epoch": 1, "seq": 2, "grants": [GRANT], "drain": False},
    {"schema": 1, "epoch": 1, "desired": 3, "live_workers": 2, "backlog_ids": 1000,
     "backlog_partitions": 10, "computed_unix_ms": 1},
]
EVENTS = [{"kind": "checkpoint", "last_done": 42}, {"kind": "completed"},
          {"kind": "failed", "error": "boom", "last_done": None, "permanent": True},
          {"kind": "released", "last_done": 7}]
PROGRESS = [{"schema": 1, "worker": "worker-1", "incarnation": 7, "job": "backfill",
             "partition": 1, "token": 4294967297, "event": event} for event in EVENTS]
COMMANDS = [
    {"verb": "create_job", "name": "backfill", "spec": SPEC},
    {"verb": "list_jobs"}, {"verb": "get_job", "name": "backfill"},
    {"verb": "pause_job", "name": "backfill"}, {"verb": "resume_job", "name": "backfill"},
    {"verb": "cancel_job", "name": "backfill"},
    {"verb": "list_partitions", "job": "backfill", "statuses": ["pending", "failed"],
     "after": ["backfill", 3], "limit": 10},
    {"verb": "retry", "job": "backfill", "partition": 2},
    {"verb": "id_status", "job": "backfill", "id": 5}, {"verb": "stats"},
]
STATS = {"epoch": 1, "jobs": 1, "live_workers": 2, "partitions": {"pending": 1},
         "progress_applied": 1, "progress_rejected": 0, "progress_malformed": 0,
         "gaps_detected": 0, "gaps_repaired": 0, "overlaps_detected": 0, "revocations": 0,
         "revokes_overdue": 0, "retries_scheduled": 0, "partitions_compacted": 0}
REPLIES = [
    {"schema": 2, "result": {"kind": "job", "job": JOB}, "error": None},
    {"schema": 2, "result": {"kind": "jobs", "jobs": [JOB]}, "error": None},
    {"schema": 2, "result": {"kind": "partitions", "partitions": [PARTITION],
                             "next_after": ["backfill", 1]}, "error": None},
    {"schema": 2, "result": {"kind": "retried", "count": 3}, "error": None},
    {"schema": 2, "result": {"kind": "id_status", "id": 5,
                             "status": {"state": "in_partition", "partition": PARTITION}},
     "error": None},
    {"schema": 2, "result": {"kind": "id_status", "id": 5, "status": {"state": "completed"}},
     "error": None},
    {"schema": 2, "result": {"kind": "stats", "stats": STATS}, "error": None},
    {"schema": 2, "result": None, "error": {"code": "unknown_job", "message": "no job"}},
    {"schema": 1, "result": None, "error": "unknown job 'x'"},
]
HTTP = [
    b'{"name": "backfill", "start": 1, "end": 1000, "partition_size": 100}',
    b'{"name": "events", "start": 1, "partition_size": 100, "lookahead": 4, "max_attempts": 2, '
    b'"retry_backoff_ms": 10}',
]
RETRY = [b"", b"{}", b'{"job": "backfill", "partition": 2}']
QUERY = [b"job=backfill&status=pending,failed&after_job=backfill&after_id=3&limit=10", b"limit=1000"]
TOML = [
    '[service]\nnamespace = "demo"\nmember_id = "election-1"\nmember_ttl = "3s"\n'
    '[service.nats]\nurl = "nats://127.0.0.1:4222"\n[election]\nelection_ttl = "3s"\n',
    '[service]\nnamespace = "demo"\n[assigner]\ntick = "100ms"\nhttp_listen = "127.0.0.1:8080"\n',
    '[service]\nnamespace = "demo"\n[scaler]\nmin_workers = 1\nmax_workers = 100\n',
]


def words(values, found):
    """Every map key and string in `values`, recursively."""
    if isinstance(values, dict):
        for key, value in values.items():
            found.add(key)
            words(value, found)
    elif isinstance(values, (list, tuple)):
        for value in values:
            words(value, found)
    elif isinstance(values, str):
        found.add(values)
    return found


def dictionary(tokens, binary):
    escape = lambda raw: "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}" for b in raw)
    lines = []
    for token in sorted(tokens):
        raw = pack(token) if binary else token.encode()
        lines.append(f'"{escape(raw)}"')
    if binary:
        lines += ['"\\xcf\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff"', '"\\xd3\\x80\\x00\\x00\\x00\\x00\\x00\\x00\\x00"',
                  '"\\xc0"', '"\\xc3"', '"\\xcb\\x7f\\xf0\\x00\\x00\\x00\\x00\\x00\\x00"']
    return "\n".join(lines) + "\n"


def main():
    out = sys.argv[1]
    targets = {
        "progress_report": [pack(m) for m in PROGRESS]
        + [pack({"schema": 1, "reports": PROGRESS}), pack({"schema": 1, "reports": []})],
        "kv_records": [bytes([i]) + pack(m) for i, m in enumerate(KV)],
        "admin_request": [pack({"schema": 1, "command": c}) for c in COMMANDS],
        "admin_reply": [pack(r) for r in REPLIES],
        "plan_messages": [b"\x00" + pack({"schema": 1, "job": "events", "cursor": 4001, "wanted": 8000}),
                          b"\x01" + pack({"schema": 1, "max_id": 6250}), b"\x01" + pack({"schema": 1, "max_id": None})],
        "http_inputs": [b"\x00" + b for b in HTTP] + [b"\x01" + b for b in RETRY] + [b"\x02" + b for b in QUERY],
        "config_toml": [bytes([i]) + t.encode() for i, t in enumerate(TOML)],
    }
    structured = {"progress_report": PROGRESS, "kv_records": KV, "admin_request": COMMANDS,
                  "admin_reply": REPLIES, "plan_messages": [{"schema": 1, "job": "", "cursor": 1,
                                                              "wanted": 1, "max_id": 1}]}
    for target, seeds in targets.items():
        directory = os.path.join(out, target)
        os.makedirs(directory, exist_ok=True)
        for index, seed in enumerate(seeds):
            with open(os.path.join(directory, f"seed-{index:02}"), "wb") as file:
                file.write(seed)
        if target in structured:
            text = dictionary(words(structured[target], {"schema"}), binary=True)
        elif target == "http_inputs":
            text = dictionary(words([json.loads(b) for b in HTTP[:2]], {"job", "partition", "status",
                                                                          "after_job", "after_id", "limit"}), False)
        else:
            text = dictionary({"[service]", "[service.nats]", "[election]", "[assigner]", "[scaler]",
                               "namespace", "member_id", "member_ttl", "metrics_listen", "url",
                               "credentials_file", "grants_per_capacity", "partitions_per_round",
                               "revoke_timeout", "tick", "http_listen", "election_ttl",
                               "standby_retry", "view_debounce", "role_resync", "interval",
                               "min_workers", "max_workers", "partitions_per_worker",
                               "18446744073709551615", "-1", "0", "=", '"', "[[", "{"}, False)
        with open(os.path.join(out, f"{target}.dict"), "w") as file:
            file.write(text)


if __name__ == "__main__":
    main()
