"""The warm worker (opt-in): a local process that keeps models loaded between `mkdocs build`s.

A fresh `mkdocs build` that must compute one edited block spends most of its time starting torch and
transformers and loading the model (about 3 s for a 135M model on a CPU), then 0.1 s computing. With
`warm_worker: <idle seconds>` (or `LAYERHEAT_WORKER=<idle seconds>`), a build hands its cache misses to
a worker process instead: the worker runs the same code as the build would (`plan.compute_misses`,
handed to `serve`: this module knows nothing of plans),
takes the cache lock, writes the entries, and answers, for each cache key, null or why there is no entry,
with its log lines; the build reads the entries from the cache. It keeps the
last model loaded and exits by itself after `idle` seconds without a request, or as soon as its socket
disappears (the cache was cleared).

The worker is started on first need, detached (its own session, stdio to `worker/log`), so that a
build, a CI job or a test never waits for it to end. It listens on a Unix socket in `cache_dir/worker/`
(or, when that path is too long for a socket, in the temporary folder, named by the cache's path).
Messages are JSON, signed with a key only the user can read (`worker/key`, mode 0600), each request with
a nonce and a time so that a replayed one is refused; nothing is unpickled. A worker
running other code (the package, torch or transformers changed, another interpreter, other
environment variables that change the numbers) answers "stale" and exits; the build then starts a
new one. Whenever the worker cannot be reached or fails, the build computes in its own process,
with identical results.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

from .cache import library_versions, source_hash

PROTOCOL = 2  # JSON messages with nonces (1: pickles)
DEFAULT_IDLE = 600  # seconds, for LAYERHEAT_WORKER=on
START_TIMEOUT = 30.0  # seconds to wait for a new worker's socket
_HEADER = struct.Struct("!Q32s")  # payload length, HMAC-SHA256 of the payload
MAX_MESSAGE = 1 << 28  # bytes: a longer one is refused before it is read
REQUEST_TTL = 120.0  # seconds: an older request is refused (and one seen before, whatever its age)
_ENV_PREFIXES = ("OMP_", "MKL_", "CUDA_", "HF_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "PYTHON")
_log = logging.getLogger("mkdocs.plugins.layerheat")


def idle_seconds(option: int, env: str | None = None) -> int:
    """The worker's idle timeout from the plugin option and `LAYERHEAT_WORKER` (which wins): 0 = no worker.

    The variable takes seconds, or on/true/yes (the option's value, else 600 s), or off/false/no/0.
    """
    env = os.environ.get("LAYERHEAT_WORKER") if env is None else env
    if env is None or not env.strip():
        return max(0, int(option))
    value = env.strip().lower()
    if value in ("on", "true", "yes"):
        return int(option) if option > 0 else DEFAULT_IDLE
    if value in ("off", "false", "no"):
        return 0
    try:
        return max(0, int(float(value)))
    except ValueError:
        _log.warning(f"LAYERHEAT_WORKER={env!r} is not a number of seconds, on or off; no warm worker")
        return 0


def worker_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir).resolve() / "worker"


def socket_path(cache_dir: str | Path) -> Path:
    """The worker's socket: in the cache, unless that path is too long for a Unix socket (about 100 bytes)."""
    path = worker_dir(cache_dir) / "socket"
    if len(os.fsencode(path)) < 100:
        return path
    digest = hashlib.sha256(os.fsencode(worker_dir(cache_dir))).hexdigest()[:16]
    return Path(tempfile.gettempdir(), f"layerheat-{os.getuid()}-{digest}.sock")


def token() -> str:
    """What the computation depends on besides the request: our code, the libraries, the interpreter, the environment."""
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES))
    material = [PROTOCOL, sys.executable, sys.version, source_hash(Path(__file__).parent), library_versions(), env]
    return hashlib.sha256(repr(material).encode()).hexdigest()


# -- messages ------------------------------------------------------------------------------------
# A message is JSON, signed with HMAC-SHA256 under the worker's key. A request carries a fresh nonce and the
# time it was sent; the worker refuses one it has seen (a replay) or one older than REQUEST_TTL, and answers
# with the request's nonce, which the build checks. Nothing is ever unpickled.


def _send(sock: socket.socket, key: bytes, message: dict) -> None:
    data = json.dumps(message, ensure_ascii=False).encode("utf-8")
    sock.sendall(_HEADER.pack(len(data), hmac.new(key, data, hashlib.sha256).digest()) + data)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket, key: bytes) -> dict:
    length, mac = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    if length > MAX_MESSAGE:
        raise ValueError(f"message of {length} bytes")
    data = _recv_exactly(sock, length)
    if not hmac.compare_digest(mac, hmac.new(key, data, hashlib.sha256).digest()):
        raise PermissionError("message not signed with the worker's key")
    message = json.loads(data.decode("utf-8"))
    if not isinstance(message, dict):
        raise ValueError("message is not a JSON object")
    return message


def _request(op: str, **body: Any) -> dict:
    return {"op": op, "nonce": os.urandom(16).hex(), "sent": time.time(), **body}


def _exchange(sock: socket.socket, key: bytes, request: dict) -> dict:
    """Send a request, receive its answer: one that does not carry the request's nonce is no answer to it."""
    _send(sock, key, request)
    reply = _recv(sock, key)
    if reply.get("nonce") != request["nonce"]:
        raise PermissionError("reply to another request")
    return reply


def _key(directory: Path, create: bool) -> bytes | None:
    path = directory / "key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(32))
    return path.read_bytes()


# -- the build's side ------------------------------------------------------------------------------


def compute(body: dict, cache_dir: Path, idle: int, entry: str, log=_log) -> dict | None:
    """The warm worker's answer to a compute request (`body`: what `entry`'s handler reads), the worker started
    if needed (`entry`: "module:function" that serves, see `serve`); None when it cannot help, and the build
    computes in its own process."""
    if not hasattr(socket, "AF_UNIX"):  # Windows
        return None
    for attempt in range(2):
        try:
            connection = _connect(cache_dir, idle, entry, replace=attempt > 0)
        except Exception as exc:  # an unreadable key, a socket path that is not a socket...
            log.debug(f"cannot reach the warm worker ({type(exc).__name__}: {exc}); computing in this process")
            return None
        if connection is None:
            return None
        sock, key = connection
        try:
            with sock:
                reply = _exchange(sock, key, _request("compute", token=token(), idle=idle, body=body))
        except Exception as exc:  # the worker died, was killed, or sent garbage: compute here
            log.debug(f"warm worker failed ({type(exc).__name__}: {exc}); computing in this process")
            return None
        if reply.get("status") == "stale":
            log.debug("warm worker runs other code; starting a new one")
            continue
        if reply.get("status") != "ok":
            log.debug(f"warm worker failed: {reply.get('message')}; computing in this process")
            return None
        return reply
    return None


def _try_connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def _connect(cache_dir: Path, idle: int, entry: str, replace: bool = False) -> tuple[socket.socket, bytes] | None:
    """A connection to the cache's worker and its key: the running one, else one started now."""
    directory, path = worker_dir(cache_dir), socket_path(cache_dir)
    if not replace:
        key = _key(directory, create=False)
        sock = _try_connect(path) if key else None
        if sock is not None:
            return sock, key
    try:
        from filelock import FileLock

        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ignore = directory / ".gitignore"  # never committed with the cache
        if not ignore.exists():
            ignore.write_text("*\n")
        with FileLock(str(directory / "spawn.lock"), timeout=START_TIMEOUT):
            key = _key(directory, create=True)
            if not replace and (sock := _try_connect(path)) is not None:
                return sock, key  # another build started it while we waited for the lock
            path.unlink(missing_ok=True)  # a dead worker's socket, or a stale one's (which then leaves it alone)
            process = _spawn(cache_dir, idle, entry)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if (sock := _try_connect(path)) is not None:
                    return sock, key
                if process.poll() is not None:
                    _log.debug(f"warm worker exited at start (see {directory / 'log'})")
                    return None
                time.sleep(0.01)
            _log.debug("warm worker did not start in time")
    except Exception as exc:  # an unwritable cache, a lock held too long: compute here
        _log.debug(f"cannot start the warm worker ({type(exc).__name__}: {exc})")
    return None


_ENTRY = ("import importlib, sys; m, f = sys.argv[1].split(':'); "
          "getattr(importlib.import_module(m), f)(sys.argv[2], float(sys.argv[3]))")


def _spawn(cache_dir: Path, idle: int, entry: str) -> subprocess.Popen:
    import subprocess  # (only to start a worker: a warm build imports no more than it needs)

    directory = worker_dir(cache_dir)
    with open(directory / "log", "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", _ENTRY, entry, str(Path(cache_dir).resolve()), str(idle)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            cwd=str(directory), start_new_session=True, close_fds=True,
        )
    return process


def _ask(cache_dir: str | Path, op: str) -> dict | None:
    key = _key(worker_dir(cache_dir), create=False)
    sock = _try_connect(socket_path(cache_dir)) if key else None
    if sock is None:
        return None
    try:
        with sock:
            return _exchange(sock, key, _request(op))
    except (OSError, EOFError, ValueError):
        return None


def running(cache_dir: str | Path) -> int | None:
    """The process id of the cache's worker, if one is running."""
    reply = _ask(cache_dir, "ping")
    return reply["pid"] if reply else None


def stop(cache_dir: str | Path, timeout: float = 10.0) -> bool:
    """Ask the cache's worker to exit and wait until it has; False when none was running."""
    reply = _ask(cache_dir, "stop")
    if reply is None:
        return False
    pid = reply["pid"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # our own child that exited and was not reaped yet counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


# -- the worker's side ---------------------------------------------------------------------------


class Collect(logging.Handler):
    """Keeps the log records of one request, to be logged again by the build that sent it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records.append((record.levelno, message))


def serve(cache_dir: Path, idle: float, handle: Callable[[dict], dict]) -> None:
    """Answer requests on the cache's socket until `idle` seconds pass without one, or the socket is removed;
    `handle(body)` answers a compute request's body with a JSON object (`status` "ok", or "error")."""
    directory, path = worker_dir(cache_dir), socket_path(cache_dir)
    key = _key(directory, create=False)
    if key is None:
        return
    me = token()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file: the user only
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    inode = _identity(path)
    listener.listen(16)
    listener.settimeout(1.0)
    print(f"layerheat worker {os.getpid()} on {path}, idle timeout {idle:g} s", flush=True)
    last = time.monotonic()
    seen: dict[str, float] = {}  # nonces of the requests answered, with their times (a replay is refused)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if time.monotonic() - last > idle or not _still_ours(path, inode) or _key(directory, False) != key:
                    return
                continue
            with conn:
                conn.settimeout(60.0)
                try:
                    request = _checked(_recv(conn, key), seen)
                except (OSError, EOFError, ValueError, PermissionError, KeyError, TypeError) as exc:
                    print(f"bad request refused: {type(exc).__name__}: {exc}", flush=True)
                    continue
                conn.settimeout(None)
                answer = {"nonce": request["nonce"], "pid": os.getpid()}
                if request["op"] == "ping":
                    _reply(conn, key, {**answer, "status": "pong"})
                    continue
                if request["op"] == "stop":
                    _reply(conn, key, {**answer, "status": "stopped"})
                    return
                if request.get("token") != me:
                    _reply(conn, key, {**answer, "status": "stale"})
                    return
                started = time.perf_counter()
                try:
                    reply = handle(request["body"])
                except Exception as exc:
                    import traceback

                    traceback.print_exc()
                    reply = {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
                _reply(conn, key, {**reply, **answer})
                idle = max(1, int(request.get("idle") or idle))  # the latest build's setting wins
                print(f"request done in {time.perf_counter() - started:.2f} s", flush=True)
            last = time.monotonic()
    finally:
        listener.close()
        if _still_ours(path, inode):
            path.unlink(missing_ok=True)


def _checked(request: dict, seen: dict[str, float]) -> dict:
    """A signed request's envelope, refused when it is malformed, seen before, or too old to be a new one."""
    now = time.time()
    for nonce, at in list(seen.items()):
        if now - at > 2 * REQUEST_TTL:
            del seen[nonce]
    nonce, sent, op = request["nonce"], request["sent"], request["op"]
    if not isinstance(nonce, str) or len(nonce) != 32 or op not in ("ping", "stop", "compute"):
        raise ValueError("malformed request")
    if not isinstance(sent, (int, float)) or abs(now - sent) > REQUEST_TTL:
        raise PermissionError("request too old (or from the future): a replay")
    if nonce in seen:
        raise PermissionError("request seen before: a replay")
    if op == "compute" and not isinstance(request.get("body"), dict):
        raise ValueError("compute request without a body")
    seen[nonce] = now
    return request


def _reply(conn: socket.socket, key: bytes, reply: Any) -> None:
    try:
        _send(conn, key, reply)
    except OSError:
        pass  # the build was interrupted; the entries are in the cache anyway


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()  # an inode number alone may be reused at once by the next worker's socket
    return stat.st_ino, stat.st_ctime_ns, stat.st_mtime_ns


def _still_ours(path: Path, inode: tuple[int, int, int]) -> bool:
    try:
        return _identity(path) == inode
    except OSError:
        return False
