"""Who may use the browser control surface, and which files it may serve.

Pure functions, checked by :mod:`livegen.control.web` on every request:

- **Host** (no DNS rebinding): the ``Host`` header must name the daemon itself: its bind address,
  ``localhost``/``127.0.0.1``/``[::1]`` on a loopback bind, or (on a wider bind) an IP literal or
  this machine's own name, always with the daemon's port. A page from ``evil.example`` whose name
  was re-pointed at 127.0.0.1 still sends ``Host: evil.example:8765`` and is refused.
- **Origin** (no cross-site requests or WebSockets): a request that carries ``Origin`` must come
  from ``http://<the Host it asked for>``; a WebSocket handshake must carry one.
- **Client and token**, on a bind other than loopback: the client's address must be in
  ``osc.allow`` and the request must carry the token (``?token=`` once, then the cookie).
- **Files**: a clip is served only from one of the daemon's own folders (the DAW folder, the
  pre-render cache), by a relative name with no ``..``, no absolute path, no backslash, that
  resolves (symlinks followed) to a regular ``.wav`` file inside that folder.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

TOKEN_COOKIE = "livegen_token"
SERVED_SUFFIXES = (".wav",)


class Refused(Exception):
    """A request the surface refuses; ``str()`` is the sentence sent back, ``status`` the HTTP code."""

    def __init__(self, sentence: str, status: int = 403) -> None:
        super().__init__(sentence)
        self.status = status


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def split_host(value: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) -> (host without brackets, port or None); raises ValueError."""
    parts = urlsplit("//" + value)
    host = parts.hostname
    if not host or parts.username is not None or parts.path or parts.query or parts.fragment:
        raise ValueError(value)
    return host.lower(), parts.port


@dataclass(frozen=True)
class Guard:
    """The checks for one bind (``host``, ``port``); ``token`` and ``allow`` matter on a wider bind."""

    host: str
    port: int
    token: str = ""
    allow: tuple[str, ...] = ("127.0.0.1", "::1")
    machine_names: tuple[str, ...] = ()

    @classmethod
    def for_bind(cls, host: str, port: int, token: str, allow: Iterable[str]) -> Guard:
        names: tuple[str, ...] = ()
        if not is_loopback(host):
            name = socket.gethostname().lower()
            names = (name, name + ".local") if name else ()
        return cls(host, int(port), token, tuple(allow), names)

    @property
    def wide(self) -> bool:
        return not is_loopback(self.host)

    def url(self, with_token: bool = True) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in shown:
            shown = f"[{shown}]"
        base = f"http://{shown}:{self.port}/"
        return base + (f"?token={self.token}" if self.wide and with_token else "")

    # ---- the checks ---------------------------------------------------------------------
    def check_host(self, header: str | None) -> None:
        if not header:
            raise Refused("The request has no Host header.", 400)
        try:
            host, port = split_host(header)
        except ValueError:
            raise Refused("The request's Host header is not a host name.", 400) from None
        if port is not None and port != self.port:
            raise Refused(f"The Host header names port {port}; this surface is on port {self.port}.")
        if self.wide:
            ok = _is_ip(host) or host == "localhost" or host in self.machine_names
        else:
            ok = is_loopback(host)
        if not ok:
            raise Refused(f"The Host header {host!r} is not this daemon's address; open {self.url(False)} "
                          "instead.")

    def check_origin(self, origin: str | None, host_header: str, websocket: bool) -> None:
        if origin is None:
            if websocket:
                raise Refused("A WebSocket without an Origin header is refused.")
            return
        expected = f"http://{host_header}".lower()
        if origin.lower().rstrip("/") != expected:
            raise Refused(f"Requests from the page {origin} are refused: only this surface's own page "
                          f"({expected}) may use it.")

    def check_client(self, address: str | None) -> None:
        if not self.wide:
            return
        try:
            ip = ipaddress.ip_address((address or "").split("%")[0])
        except ValueError:
            raise Refused("The client's address is unknown.") from None
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for entry in self.allow:
            if ip in ipaddress.ip_network(entry, strict=False):
                return
        raise Refused(f"The address {ip} is not in osc.allow, which the control surface shares.")

    def token_ok(self, given: str | None) -> bool:
        if not self.wide:
            return True
        return bool(given) and hmac.compare_digest(str(given).encode(), self.token.encode())


def resolve_clip(roots: dict[str, Path | None], root: str, name: str) -> Path:
    """The file ``name`` inside the daemon folder called ``root``; raises :class:`Refused`."""
    base = roots.get(root)
    if base is None:
        raise Refused(f"There is no clip folder {root!r}.", 404)
    if not name or "\\" in name or "\x00" in name:
        raise Refused("That clip name is not allowed.", 400)
    rel = PurePosixPath(name)
    if rel.is_absolute() or any(part in ("..", "") for part in name.split("/")):
        raise Refused("Only a clip name inside the daemon's folder is allowed (no absolute path, no '..').", 400)
    try:
        base_real = Path(base).resolve(strict=True)
        target = (base_real / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        raise Refused(f"There is no clip {name!r}.", 404) from None
    if not target.is_relative_to(base_real):
        raise Refused(f"The clip {name!r} lies outside the daemon's folder.", 403)
    if target.suffix.lower() not in SERVED_SUFFIXES or not target.is_file():
        raise Refused(f"{name!r} is not a clip.", 404)
    return target


def relative_clip(roots: dict[str, Path | None], path: str | Path) -> tuple[str, str] | None:
    """(root name, relative name) of a written clip, or None when it is in none of the folders."""
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    for key, base in roots.items():
        if base is None:
            continue
        try:
            base_real = Path(base).resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real.is_relative_to(base_real):
            return key, real.relative_to(base_real).as_posix()
    return None
