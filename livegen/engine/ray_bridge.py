"""The daemon's Ray driver lives in a child process: ``python -m livegen.engine.ray_bridge FD``.

Why: a Ray driver whose cluster goes away is *terminated by Ray* ("Failed to connect to GCS within
60 seconds ... The program will terminate", measured: 60 s after the head stopped), and its core
worker threads run inside the process. The daemon must outlive its pool, so it never imports Ray:
the bridge process holds the :class:`~livegen.engine.ray_client.RayPool` and the daemon talks to it
over a socket pair (pickled tuples, :class:`multiprocessing.connection.Connection`). When the bridge
dies the daemon sees the end of the connection, renders here, and starts a new bridge later.

Daemon -> bridge: ``("connect", address, name, models, timeout)``, ``("submit", key, request dict,
stream, start_timeout, seconds_left)``, ``("cancel", key)``, ``("close",)``.
Bridge -> daemon: ``("connected", {model: replicas})`` or ``("unavailable", sentence)``;
``("started", key, pid)``, ``("progress", key, step, total)``, ``("begin", key, rate, frames)``,
``("chunk", key, array)``, ``("done", key, meta, audio)``, ``("error", key, kind, sentence)`` with
``kind`` one of unavailable, overloaded, late, lost, failed, cancelled.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("livegen.ray")

ERROR_KINDS = ("unavailable", "overloaded", "late", "lost", "failed", "cancelled")


class BridgeClient:
    """The daemon's end: starts the bridge process, sends commands, reads its messages on a thread
    (``on_message(tuple)`` is called there; ``None`` once the bridge is gone)."""

    def __init__(self, on_message: Callable[[tuple | None], None]) -> None:
        self._on_message = on_message
        ours, theirs = socket.socketpair()
        env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"),
                   RAY_USAGE_STATS_ENABLED=os.environ.get("RAY_USAGE_STATS_ENABLED", "0"))
        self.proc = subprocess.Popen([sys.executable, "-m", "livegen.engine.ray_bridge", str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=None, env=env)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._send_lock = threading.Lock()
        self.closed = False
        self._reader = threading.Thread(target=self._read, name="livegen-ray-bridge", daemon=True)
        self._reader.start()

    def send(self, message: tuple) -> bool:
        """False when the bridge is gone (the caller renders here)."""
        if self.closed:
            return False
        try:
            with self._send_lock:
                self._conn.send(message)
            return True
        except (OSError, ValueError, BrokenPipeError):
            return False

    def close(self, timeout: float = 2.0) -> None:
        """Ask the bridge to leave, then end it by its PID if it does not."""
        if self.proc.poll() is not None:
            self.closed = True
            return
        self.send(("close",))
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
        self.closed = True
        try:
            self._conn.close()
        except OSError:
            pass

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # noqa: BLE001 - a message that does not unpickle: the bridge is broken
                log.debug("unreadable message from the Ray bridge", exc_info=True)
                break
            self._on_message(message)
        self.closed = True
        self._on_message(None)


# ------------------------------------------------------------------------------------ child side
def _serve(conn: Connection) -> None:
    import time

    from livegen.engine.host import RenderFailed
    from livegen.engine.ray_client import PoolLate, PoolLost, PoolOverloaded, PoolUnavailable, RayPool
    from livegen.errors import Cancelled
    from livegen.output.prerender import request_from_dict

    lock = threading.Lock()
    pool: RayPool | None = None

    def send(message: tuple) -> None:
        try:
            with lock:
                conn.send(message)
        except (OSError, ValueError):
            pass

    kinds = ((PoolOverloaded, "overloaded"), (PoolLate, "late"), (PoolLost, "lost"), (PoolUnavailable, "unavailable"),
             (RenderFailed, "failed"), (Cancelled, "cancelled"))

    class Sink:
        def __init__(self, key: str) -> None:
            self.key = key

        def begin(self, rate: int, frames: int) -> None:
            send(("begin", self.key, rate, frames))

        def write(self, chunk: Any) -> None:
            send(("chunk", self.key, chunk))

        def end(self, ok: bool) -> None:
            """Nothing to send: the job's outcome reaches the daemon as its own done or error message."""

    def finished(key: str, future: Any) -> None:
        try:
            clip = future.result()
        except Exception as exc:  # noqa: BLE001 - every outcome goes back as one message
            kind = next((k for cls, k in kinds if isinstance(exc, cls)), "lost")
            send(("error", key, kind, str(exc) or exc.__class__.__name__))
            return
        meta = {"seed": clip.seed, "model": clip.model, "sample_rate": clip.sample_rate,
                "render_seconds": clip.render_seconds, "levels": clip.levels}
        send(("done", key, meta, clip.audio))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        op = message[0]
        if op == "connect":
            _, address, name, models, timeout = message
            pool = RayPool(address, name)
            try:
                info = pool.connect(models, timeout=timeout)
                send(("connected", {m: pool.replicas(m) for m in info}))
            except PoolUnavailable as exc:
                send(("unavailable", str(exc)))
        elif op == "submit":
            _, key, request, stream, start_timeout, seconds_left = message
            if pool is None or not pool.connected:
                send(("error", key, "unavailable", "the Ray pool is not connected"))
                continue

            def on_event(e: Any, key: str = key) -> None:
                if e.kind == "started":
                    send(("started", key, e.pid))
                elif e.kind == "progress":
                    send(("progress", key, e.step, e.total))

            _, future = pool.submit(request_from_dict(request), key=key, sink=Sink(key) if stream else None,
                                    on_event=on_event, start_timeout=start_timeout,
                                    deadline=time.monotonic() + seconds_left)
            future.add_done_callback(lambda f, key=key: finished(key, f))
        elif op == "cancel":
            if pool is not None:
                pool.cancel(message[1])
        elif op == "close":
            break
    if pool is not None:  # the cluster may be gone: leaving must not wait for it
        threading.Timer(2.0, os._exit, (0,)).start()
        pool.close(shutdown=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s livegen.ray-bridge: %(message)s", datefmt="%H:%M:%S")
    conn = Connection(int(args[0]))
    try:
        _serve(conn)
    finally:
        conn.close()
    # leave without interpreter teardown: Ray's threads may still be waiting on a dead cluster
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
