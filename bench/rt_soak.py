"""Issue 11's real-time target, measured: continuous streaming generation with 4 looping voices,
a CPU hog of our own on one core and a forced full garbage collection every second, for minutes.

    python bench/rt_soak.py --minutes 10 --json bench/results/rt_soak.json

The real daemon (``python -m livegen serve``, ``audio.backend: rtmixer``, streaming on) plays on
the running JACK server with the tiny test checkpoints (Stable Audio and MusicGen, random weights:
generation is quick, so requests follow each other without a pause: the worker is always busy,
the event loop always has chunks to hand over). Requests alternate between the two models and go
round four looping slots, so four voices loop all the time and each new clip chokes the previous
one of its slot (a crossfade). ``LIVEGEN_FORCE_GC_EVERY_S`` makes the daemon run ``gc.collect()``
on its event loop every second. A busy loop in a process of ours takes one core for the whole run.

Counted: the daemon's underflows (its status), every JACK xrun (a recorder in a process of its own:
tests/integration/jack_recorder.py) and, from the JACK server's time-stamped log when
``LIVEGEN_JACK_LOG`` names it, which lost cycles were the daemon's own (tests/jack_log.py) and
which the machine's; the longest collection pause of the daemon's process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOG = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end:\n    pass\n"
MAPPING = """\
name: soak
params:
  prompt: soak tone
  seconds: 0.4
  steps: 2
  launch: now
  loop: true
osc:
  - address: /soak/pad/{pad}
    action: generate
    prompt: "soak pad {pad}"
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--no-hog", action="store_true", help="without the CPU-bound process")
    ap.add_argument("--gc-every", type=float, default=1.0, help="seconds between forced collections (0: none)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/livegen-rt-soak"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from bench.daemon_latency import jack_running

    ok, why = jack_running()
    if not ok:
        print(f"not measured: {why}", file=sys.stderr)
        return 2
    from tests.integration.conftest import (
        OscClient,
        portaudio_ports,
        start_daemon,
        stop_daemon,
        wait_new_ports,
    )
    from tests.integration.jack_recorder import Recorder
    from tests.jack_log import JackLog
    from tests.models.musicgen.mg_fixtures import make_tiny_musicgen
    from tests.reference.sa_checkpoint import build_tiny_stable_audio

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "models" / "musicgen").is_dir():
        info = build_tiny_stable_audio(work / "models", "small", sample_size=22528)
        make_tiny_musicgen(work / "models" / "musicgen", "mono")
        (work / "models" / "paths.json").write_text(json.dumps({k: str(v) for k, v in info.items()
                                                                if k in ("checkpoint_dir", "t5_dir")}))
    paths = json.loads((work / "models" / "paths.json").read_text())
    model = {"model": Path(paths["checkpoint_dir"]), "t5": Path(paths["t5_dir"]),
             "musicgen": work / "models" / "musicgen", "cache": work / "cache"}
    if args.gc_every > 0:
        os.environ["LIVEGEN_FORCE_GC_EVERY_S"] = str(args.gc_every)
    jack_log = JackLog()
    seconds = args.minutes * 60.0
    before = portaudio_ports()
    daemon = start_daemon(work / "daemon", model, midi=False, folder=False, musicgen=True, mapping_text=MAPPING,
                          audio_lines=("backend: rtmixer", "stream: true"))
    client = OscClient()
    hog = None
    rec = None
    try:
        ports = wait_new_ports(before)
        # the four loops first
        done = 0
        for pad in range(4):
            mark = client.mark()
            client.send(daemon.port, "/livegen/model", "mg" if pad % 2 else "default")
            client.send(daemon.port, f"/soak/pad/{pad}")
            client.wait("/livegen/done", mark, timeout=120)
            done += 1
        time.sleep(1.0)
        st0 = daemon.query_status(client)
        if not args.no_hog:
            hog = subprocess.Popen([sys.executable, "-c", HOG, str(seconds + 60)])
        log_mark = jack_log.mark()
        rec = Recorder(ports, seconds=2.0, name="lgsoakrec", recording=True)  # counts xruns all along
        t0 = time.monotonic()
        gen_times = []
        n = 0
        while time.monotonic() - t0 < seconds:
            pad = n % 4
            mark = client.mark()
            t = time.monotonic()
            client.send(daemon.port, "/livegen/model", "mg" if n % 2 else "default")
            client.send(daemon.port, f"/soak/pad/{pad}")
            client.wait("/livegen/done", mark, timeout=120)
            gen_times.append(time.monotonic() - t)
            done += 1
            n += 1
        elapsed = time.monotonic() - t0
        st1 = daemon.query_status(client)
        # the last clip was done, not yet launched: it starts on the next bar (choking its slot's
        # loop there), so until then its slot has no sounding voice. Two bars at most (120 bpm).
        settle = time.monotonic() + 4.5
        while sorted(st1["audio"].get("slots_playing") or []) != [0, 1, 2, 3] and time.monotonic() < settle:
            time.sleep(0.1)
            st1 = daemon.query_status(client)
        xruns = jack_log.since(log_mark, ("livegen", "PortAudio", "livegen-probe"), rec.xruns)
    finally:
        if rec is not None:
            rec.close()
        if hog is not None:
            hog.kill()
            hog.wait(5)
        client.close()
        rc, exit_s = stop_daemon(daemon)
    res = {
        "minutes": round(elapsed / 60, 2),
        "cpu_hog": not args.no_hog,
        "forced_gc_every_s": args.gc_every,
        "clips_generated": n,
        "request_to_done_median_s": sorted(gen_times)[len(gen_times) // 2] if gen_times else None,
        "slots_playing": st1["audio"].get("slots_playing"),
        "daemon_underflows": st1["audio"]["underflows"] - st0["audio"]["underflows"],
        "jack_xruns": xruns.counted,
        "jack_log_known": xruns.known,
        "xruns_of_the_daemon": xruns.daemon_xruns,
        "lost_cycles_outside_the_daemon_lines": len(xruns.machine),
        "stream_misses": st1["streaming"],
        "gc": st1["gc"],
        "exit": {"code": rc, "seconds": round(exit_s, 2)},
    }
    print(json.dumps(res, indent=1))
    print(str(xruns)[:2000])
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
