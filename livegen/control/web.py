"""The control surface in the browser: an aiohttp server in the daemon's own event loop.

``GET /`` serves the page (plain HTML/CSS/JS from ``web_static/``, package data), ``/ws`` one
WebSocket per page. The server pushes the whole state (:mod:`livegen.control.web_state`) as JSON
whenever it changes: at every generation event and reply the daemon routes
(:attr:`livegen.replies.Replies.observers`), and a poll five times a second for what has no event
(a clip that stopped playing). The page sends what OSC would: a parameter (``/livegen/set``), a
bank, a pad hit (the pad's note-on through the session, as the controller would), a pad stop
(``/livegen/stop``), each with the origin ``web:<client>``, so the echo reaches OSC subscribers
and every page alike. A pad prompt edit is written into the mapping file
(:mod:`livegen.control.web_yaml`) only when the whole mapping still checks, then reloaded through
:meth:`Daemon.reload`. Who may connect: :mod:`livegen.control.web_security`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from livegen import preflight
from livegen.control import osc_verbs as verbs
from livegen.control.web_security import TOKEN_COOKIE, Guard, Refused, resolve_clip
from livegen.control.web_state import SurfaceState, is_done_reply
from livegen.control.web_yaml import EditError, find_bank_file, set_pad_prompt
from livegen.mapping import Mapper, MappingError, MidiEvent

log = logging.getLogger("livegen.web")

STATIC = Path(__file__).with_name("web_static")
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
POLL_SECONDS = 0.2
MAX_MESSAGE = 64 * 1024
CLIENT_QUEUE = 64
SET, STOP = verbs.PREFIX + "set", verbs.PREFIX + "stop"  # the OSC addresses the page's controls use


class Client:
    def __init__(self, ident: int, ws: web.WebSocketResponse) -> None:
        self.id = ident
        self.origin = f"web:{ident}"
        self.ws = ws
        self.queue: asyncio.Queue[str] = asyncio.Queue(CLIENT_QUEUE)

    def put(self, text: str) -> None:
        if self.queue.full():  # a slow page: the oldest message goes (the next state supersedes it)
            self.queue.get_nowait()
        self.queue.put_nowait(text)


class WebSurface:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        s = daemon.settings.web
        token = s.token or secrets.token_urlsafe(18)
        self.guard = Guard.for_bind(s.host, s.port, token, daemon.settings.osc.allow)
        self.state = SurfaceState(daemon)
        self.clients: dict[int, Client] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._poller: asyncio.Task | None = None
        self._last = ""
        self._push_pending = False
        self.url: str | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> str | None:
        """Listen; returns the URL, or None (with a warning) when the address cannot be used."""
        app = web.Application(middlewares=[self._guard_mw], client_max_size=MAX_MESSAGE)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/clip/{root}/{name:.+}", self._clip)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.guard.host, self.guard.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            sentence = (f"The control surface cannot listen on {self.guard.host}:{self.guard.port} "
                        f"({exc.strerror or exc}); the daemon runs without it (set web.port, or web.enabled: false).")
            log.warning("%s", sentence)
            print(f"livegen: {sentence}", file=sys.stderr, flush=True)
            return None
        self._runner = runner
        logging.getLogger("livegen").addHandler(self.state.log_ring)
        self.daemon.replies.observers.append(self._on_reply)
        self._poller = asyncio.ensure_future(self._poll())
        self.url = self.guard.url()
        log.info("control surface at %s", self.url)
        print(f"livegen control surface: {self.url}", flush=True)
        return self.url

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._on_reply in self.daemon.replies.observers:
            self.daemon.replies.observers.remove(self._on_reply)
        logging.getLogger("livegen").removeHandler(self.state.log_ring)
        for c in list(self.clients.values()):
            await c.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- security ------------------------------------------------------------------------
    @web.middleware
    async def _guard_mw(self, request: web.Request, handler: Any) -> web.StreamResponse:
        g = self.guard
        try:
            g.check_host(request.headers.get("Host"))
            peer = request.transport.get_extra_info("peername") if request.transport else None
            g.check_client(peer[0] if peer else None)
            g.check_origin(request.headers.get("Origin"), request.headers.get("Host", ""),
                           websocket=request.path == "/ws")
            if g.wide:
                given = request.query.get("token")
                if g.token_ok(given) and request.path == "/":
                    resp = web.HTTPFound("/")
                    resp.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="Strict")
                    return resp
                if not g.token_ok(request.cookies.get(TOKEN_COOKIE)):
                    raise Refused("This control surface listens beyond this machine: open the URL with "
                                  "?token= that `livegen serve` printed.", 401)
        except Refused as exc:
            log.info("web request %s %s refused: %s", request.method, request.path, exc)
            return web.Response(status=exc.status, text=str(exc) + "\n")
        resp = await handler(request)
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    # ---- pages and files -----------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            return web.Response(status=404, text="No such file.\n")
        return web.FileResponse(STATIC / name, headers={"Content-Type": STATIC_FILES[name] + "; charset=utf-8"})

    async def _clip(self, request: web.Request) -> web.StreamResponse:
        try:
            path = resolve_clip(self.state.roots(), request.match_info["root"], request.match_info["name"])
        except Refused as exc:
            return web.Response(status=exc.status, text=str(exc) + "\n")
        headers = {"Content-Type": "audio/wav"}
        if "download" in request.query:
            headers["Content-Disposition"] = f'attachment; filename="{path.name}"'
        return web.FileResponse(path, headers=headers)

    # ---- the WebSocket -------------------------------------------------------------------
    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=20.0)
        await ws.prepare(request)
        client = Client(next(self._ids), ws)
        self.clients[client.id] = client
        writer = asyncio.ensure_future(self._write(client))
        client.put(json.dumps({"type": "hello", "client": client.origin}))
        if self.daemon.session is not None:
            client.put(self._snapshot_text())
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                    if not isinstance(data, dict):
                        raise ValueError
                except ValueError:
                    client.put(json.dumps({"type": "error", "text": "The surface sent a message that is not JSON."}))
                    continue
                try:
                    await self._handle(client, data)
                except Exception as exc:  # noqa: BLE001 - one bad message must not end the page's connection
                    log.warning("a control surface message failed: %s", exc, exc_info=True)
                    client.put(json.dumps({"type": "error", "text": f"That could not be done: {exc}"}))
        finally:
            self.clients.pop(client.id, None)
            writer.cancel()
        return ws

    async def _write(self, client: Client) -> None:
        while True:
            text = await client.queue.get()
            try:
                await client.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def _handle(self, client: Client, data: dict[str, Any]) -> None:
        d = self.daemon
        session = d.session
        kind = data.get("type")
        if session is None:
            client.put(json.dumps({"type": "error", "text": "The daemon is still starting."}))
            return
        origin = client.origin
        if kind == "set" and isinstance(data.get("param"), str):
            value = data.get("value")
            if not isinstance(value, (int, float, str)) or isinstance(value, bool):
                client.put(json.dumps({"type": "error", "text": "A parameter value must be a number or text."}))
                return
            d.perform(session.osc(SET, (data["param"], value), origin), origin)
        elif kind == "bank" and isinstance(data.get("bank"), (int, str)):
            d.perform(session.osc(SET, ("bank", data["bank"]), origin), origin)
        elif kind == "pad" and isinstance(data.get("pad"), int):
            self._pad(client, data["pad"], data.get("action"))
        elif kind == "edit" and isinstance(data.get("pad"), int) and isinstance(data.get("prompt"), str):
            await self._edit(client, str(data.get("bank", "")), data["pad"], data["prompt"])
        else:
            client.put(json.dumps({"type": "error", "text": "The surface sent a message the daemon does not know."}))
        self.push()

    def _pad(self, client: Client, index: int, action: Any) -> None:
        d = self.daemon
        pads = self.state.pads()
        if not 0 <= index < len(pads):
            client.put(json.dumps({"type": "error", "text": f"There is no pad {index + 1} in this bank."}))
            return
        pad = pads[index]
        origin = client.origin
        if action == "stop":
            if pad.slot is None:
                client.put(json.dumps({"type": "error", "text": f"Pad {index + 1} has no slot to stop."}))
                return
            d.perform(d.session.osc(STOP, (int(pad.slot),), origin), origin)
        elif pad.note is not None:  # exactly what the controller's note does
            event = MidiEvent("note_on", pad.channel, pad.note, 100)
            d.perform(d.session.midi(event, origin), origin)
        else:
            d.perform(d.session.generate(pad.spec, origin), origin)

    async def _edit(self, client: Client, bank: str, pad: int, prompt: str) -> None:
        """Write a pad prompt into its mapping file when the whole mapping still checks, then reload."""
        d = self.daemon
        loop = asyncio.get_running_loop()
        paths = [Path(p) for p in d.settings.mappings]

        def refuse(sentence: str) -> None:
            log.warning("prompt edit refused: %s", sentence)
            client.put(json.dumps({"type": "edit", "ok": False, "text": sentence}))

        try:
            path = await loop.run_in_executor(None, find_bank_file, paths, bank)
            if path is None:
                refuse(f"There is no bank {bank!r} in the mapping files.")
                return
            texts = {p: await loop.run_in_executor(None, p.read_text, "utf-8") for p in paths}
            new, line = set_pad_prompt(texts[path], bank, pad, prompt, str(path))
            docs = [(new if p == path else texts[p], str(p)) for p in paths]
            mapper = await loop.run_in_executor(None, Mapper.from_texts, docs)
            found = preflight.check_mapping(mapper, d.settings, d.session.limits)
            if found.errors:
                raise MappingError(found.errors)
        except (EditError, OSError) as exc:
            refuse(str(exc))
            return
        except MappingError as exc:
            refuse("The edit is refused, the old mapping stays: " + "; ".join(exc.errors))
            return
        await loop.run_in_executor(None, _write_atomically, path, new)
        log.info("pad %d of bank %r set to %r in %s:%d", pad + 1, bank, prompt[:80], path, line)
        if await d.reload(client.origin):
            client.put(json.dumps({"type": "edit", "ok": True, "text": f"Saved in {path.name}:{line}."}))
        else:
            refuse(f"{path.name} was written but the reload was refused; the old mapping stays.")

    # ---- pushing state -------------------------------------------------------------------
    def _snapshot_text(self) -> str:
        return json.dumps(self.state.snapshot(), separators=(",", ":"), default=str)

    def push(self) -> None:
        """Send the state to every page if it changed."""
        if self.daemon.session is None or not self.clients:
            return
        text = self._snapshot_text()
        if text == self._last:
            return
        self._last = text
        for c in self.clients.values():
            c.put(text)

    def on_worker(self, event: Any) -> None:
        if self.state.on_worker(event):
            self.push()

    def _on_reply(self, origin: str | None, address: str, args: tuple) -> None:
        if is_done_reply(address, args):
            self.state.on_done(int(args[0]), str(args[1]), float(args[2]))
        elif address == verbs.ERROR and origin and origin.startswith("web:"):
            client = self.clients.get(int(origin[4:])) if origin[4:].isdigit() else None
            if client is not None:
                client.put(json.dumps({"type": "error", "text": str(args[-1])}))
        self.push()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                self.push()
            except Exception:  # noqa: BLE001 - the surface must never stop the daemon
                log.warning("the control surface could not build its state", exc_info=True)


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` (same permissions) so a reader never sees half a file."""
    mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
