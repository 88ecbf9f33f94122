"""The warm worker's wire: JSON signed with the cache's key, one nonce per request. A forged, an unsigned, a
replayed and a malformed request are each refused without computing or writing anything, and the worker keeps
serving the builds that sign their requests."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
import time

import pytest
from test_worker import gone, specs_for, workers  # noqa: F401  (the fixture stops the workers started here)

from mkdocs_layerheat import plan, worker


def entries(cache_dir) -> set:
    return {p.name for p in cache_dir.glob("??/*.npz")}


def send_raw(cache_dir, payload: bytes, mac: bytes) -> bytes:
    """Bytes to the worker's socket as one message; what comes back before it closes the connection."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(worker.socket_path(cache_dir)))
    with sock:
        sock.sendall(struct.pack("!Q32s", len(payload), mac) + payload)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def signed(key: bytes, message: dict | bytes) -> tuple[bytes, bytes]:
    payload = message if isinstance(message, bytes) else json.dumps(message).encode()
    return payload, hmac.new(key, payload, hashlib.sha256).digest()


@pytest.fixture
def running(tmp_path, llama_model, workers):  # noqa: F811
    """A worker serving a cache (started by a real build of one heatmap), with the compute request a build would
    send for a second, uncomputed one."""
    settings = plan.Settings({"tiny": str(llama_model.path)}, tmp_path, tmp_path / "cache", warm_worker=60)
    workers.append(settings.cache_dir)
    first, second = specs_for("tiny", ["hidden-norm"])
    assert plan.run([first], settings)[first].computed
    pid = worker.running(settings.cache_dir)
    assert pid is not None
    found = plan.keys_for([second], settings)
    bodies = []
    original = worker.compute
    worker.compute = lambda body, *args: bodies.append(body)  # what the build would send, not sent
    try:
        assert plan._remote({found.refs[second]: [second]}, found, settings, {}, plan.Cache(settings.cache_dir),
                            plan._log) is None
    finally:
        worker.compute = original
    key = (settings.cache_dir / "worker" / "key").read_bytes()
    request = worker._request("compute", token=worker.token(), idle=60, body=bodies[0])
    return settings, key, request, found.keys[second], pid


def refused(settings, before: set, pid: int, answer: bytes) -> None:
    assert answer == b""  # no reply: the connection is closed
    assert entries(settings.cache_dir) == before  # nothing computed, nothing written
    assert worker.running(settings.cache_dir) == pid  # and the worker still serves signed requests
    log = (settings.cache_dir / "worker" / "log").read_text()
    assert "bad request refused" in log


def test_a_forged_request_is_refused(running):
    settings, key, request, _, pid = running
    before = entries(settings.cache_dir)
    payload, _ = signed(key, request)
    refused(settings, before, pid, send_raw(settings.cache_dir, payload, signed(b"x" * 32, payload)[1]))


def test_an_unsigned_request_is_refused(running):
    settings, key, request, _, pid = running
    before = entries(settings.cache_dir)
    payload, _ = signed(key, request)
    refused(settings, before, pid, send_raw(settings.cache_dir, payload, bytes(32)))


def test_a_replayed_request_is_refused(running):
    settings, key, request, second_key, pid = running
    payload, mac = signed(key, request)
    reply = json.loads(send_raw(settings.cache_dir, payload, mac)[40:])
    assert reply["status"] == "ok" and reply["nonce"] == request["nonce"] and reply["results"] == {second_key: None}
    entry = settings.cache_dir / second_key[:2] / f"{second_key}.npz"
    entry.unlink()  # so that a computation would show
    before = entries(settings.cache_dir)
    refused(settings, before, pid, send_raw(settings.cache_dir, payload, mac))  # the same bytes again
    old = dict(request, nonce="0" * 32, sent=time.time() - 3600)  # a fresh nonce on an old request
    refused(settings, before, pid, send_raw(settings.cache_dir, *signed(key, old)))
    assert not entry.exists()


@pytest.mark.parametrize("payload", [
    b"not json at all",
    b"[1, 2, 3]",
    {"op": "compute"},  # no nonce, no time
    {"op": "eval", "nonce": "a" * 32, "sent": None},
    {"op": "compute", "nonce": "b" * 32, "sent": "now", "body": {}},
    {"op": "compute", "nonce": "c" * 32, "body": {}},
])
def test_a_malformed_request_is_refused(running, payload):
    settings, key, _, _, pid = running
    before = entries(settings.cache_dir)
    refused(settings, before, pid, send_raw(settings.cache_dir, *signed(key, payload)))


def test_a_well_signed_request_with_a_bad_body_computes_nothing(running):
    settings, key, request, _, pid = running
    before = entries(settings.cache_dir)
    bad = dict(request, body={"settings": request["body"]["settings"], "models": [{"ref": {"kind": "local"}}]})
    reply = json.loads(send_raw(settings.cache_dir, *signed(key, bad))[40:])
    assert reply["status"] == "error" and reply["nonce"] == bad["nonce"]
    assert entries(settings.cache_dir) == before and worker.running(settings.cache_dir) == pid


def test_a_reply_to_another_request_is_not_taken(running, monkeypatch):
    """The build checks that the answer carries its request's nonce (a replayed reply is none)."""
    settings, key, request, _, _ = running
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(worker.socket_path(settings.cache_dir)))
    monkeypatch.setattr(worker, "_recv", lambda s, k: {"nonce": "f" * 32, "status": "pong", "pid": 1})
    with sock, pytest.raises(PermissionError, match="reply to another request"):
        worker._exchange(sock, key, worker._request("ping"))


def test_mkdocs_serve_ending_stops_its_worker_and_a_build_leaves_it(tmp_path, llama_model, workers):  # noqa: F811
    from types import SimpleNamespace

    from mkdocs_layerheat.plugin import LayerheatPlugin

    settings = plan.Settings({"tiny": str(llama_model.path)}, tmp_path, tmp_path / "cache", warm_worker=60)
    workers.append(settings.cache_dir)
    spec = specs_for("tiny", ["hidden-norm"])[:1]
    assert plan.run(spec, settings)[spec[0]].computed
    pid = worker.running(settings.cache_dir)
    plugin = LayerheatPlugin()
    plugin.stage = SimpleNamespace(settings=settings)
    plugin.on_startup(command="build", dirty=False)
    plugin.on_shutdown()
    assert worker.running(settings.cache_dir) == pid  # a build's worker waits for the next build
    plugin.on_startup(command="serve", dirty=False)
    plugin.on_shutdown()
    assert gone(pid) and worker.running(settings.cache_dir) is None
