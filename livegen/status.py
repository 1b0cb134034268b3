"""The daemon's status: the JSON of ``/livegen/status`` and its summary arguments."""

from __future__ import annotations

import json
import time
from typing import Any

EARLY_UNDERFLOW_SECONDS = 0.25  # a fresh stream may flag an underflow while it settles


def daemon_status(daemon: Any) -> dict[str, Any]:
    """The status JSON of a running :class:`livegen.daemon.Daemon` (``/livegen/status``)."""
    player = daemon.player.stats() if daemon.player is not None else {}
    early = int(EARLY_UNDERFLOW_SECONDS * daemon.settings.audio.sample_rate)
    underflows = int(player.get("underflows", 0))
    late = underflows if player.get("last_underflow_frame", -1) >= early else 0
    session = daemon.session
    return {
        "ready": daemon.ready_at is not None,
        "worker": daemon.worker.stats() if daemon.worker is not None else {},
        "audio": player,
        "underflows": underflows,
        "underflows_after_start": late,
        "bpm": session.bpm if session is not None else float(daemon.settings.tempo.bpm),
        "tempo": session.tempo_status() if session is not None else {"source": daemon.settings.tempo.source},
        "link": daemon.link.stats() if getattr(daemon, "link", None) is not None else {"enabled": False},
        "bank": session.state.bank if session is not None else 0,
        "clips_played": daemon.delivery.clips_played,
        "files_written": daemon.delivery.files_written,
        "streaming": daemon.delivery.stream_stats.as_dict(),
        "refused": daemon.refused,
        "subscribers": len(daemon.replies.subscribers),
        "osc": daemon.osc.stats() if daemon.osc is not None else {},
        "midi": {"api": daemon.midi.api, "ports": daemon.midi.port_names, "received": daemon.midi.received,
                 "server_down": daemon.midi.server_down,
                 "server_returns": daemon.midi.server_returns} if daemon.midi is not None else {},
        "feedback": daemon.feedback.stats() if getattr(daemon, "feedback", None) is not None else {},
        "prerender": daemon.prerender.stats() if daemon.prerender is not None else {},
        "watchdog": daemon.watchdog.stats() if daemon.watchdog is not None else {},
        "gc": daemon.gc_monitor.stats() if getattr(daemon, "gc_monitor", None) is not None else {},
        "uptime": time.monotonic() - daemon._t0,
    }


def status_args(st: dict[str, Any]) -> list[Any]:
    """The arguments of ``/livegen/status``: summary numbers, then the whole JSON."""
    w = st["worker"]
    running = w.get("running")
    return [int(st["ready"]), int(w.get("queued", 0)), -1 if running is None else int(running),
            int(w.get("done", 0)), int(w.get("failed", 0)), int(st["underflows_after_start"]),
            float(st["bpm"]), json.dumps(st, default=str)]
