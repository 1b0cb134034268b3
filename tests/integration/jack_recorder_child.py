"""The JACK client of :class:`tests.integration.jack_recorder.Recorder`, run as its own process.

Usage: ``python jack_recorder_child.py SHM_PATH CAPACITY MAX_CYCLES NAME PORT...``. Records the ports
into the shared file (layout in jack_recorder.py) while the header's RECORDING flag is set, stamps
every recorded cycle (first recorded frame, monotonic time, JACK frame time of the cycle's start)
and counts xruns; prints one JSON line when ready and exits when its standard input closes or a
line arrives. Its process callback is the only Python that runs in this process: no garbage
collection, no other threads, so the recorder is not the late client of a cycle.
"""

from __future__ import annotations

import gc
import json
import sys
import time

import numpy as np

# header slots (float64)
READY, RECORDING, POS, XRUNS, FIRST, CYCLES, RATE, NDELAYS = range(8)
HEADER = 16
MAX_DELAYS = 256


def main() -> None:
    import jack  # here, not at the top: the test process imports this module's constants only

    path, capacity, max_cycles, name, *ports = sys.argv[1:]
    capacity, max_cycles = int(capacity), int(max_cycles)
    n = len(ports)
    mm = np.memmap(path, dtype=np.float64, mode="r+")
    header = mm[:HEADER]
    stamps = mm[HEADER:HEADER + 3 * max_cycles].reshape(max_cycles, 3)
    delays = mm[HEADER + 3 * max_cycles:HEADER + 3 * max_cycles + MAX_DELAYS]
    audio = np.memmap(path, dtype=np.float32, mode="r+",
                      offset=8 * (HEADER + 3 * max_cycles + MAX_DELAYS), shape=(n, capacity))
    client = jack.Client(name, no_start_server=True)
    inports = [client.inports.register(f"in_{i}") for i in range(n)]
    state = {"pos": 0, "cycles": 0}

    def process(frames: int) -> None:
        if header[RECORDING] == 0.0:
            return
        pos = state["pos"]
        if header[FIRST] < 0:
            header[FIRST] = client.last_frame_time
        if state["cycles"] < max_cycles:
            stamps[state["cycles"]] = (pos, time.monotonic(), client.last_frame_time)
            state["cycles"] += 1
            header[CYCLES] = state["cycles"]
        k = min(frames, capacity - pos)
        if k > 0:
            for i, port in enumerate(inports):
                audio[i, pos:pos + k] = port.get_array()[:k]
            state["pos"] = pos + k
            header[POS] = state["pos"]

    def xrun(delayed_usecs: float) -> None:
        if header[RECORDING] == 0.0:
            return
        i = int(header[NDELAYS])
        if i < MAX_DELAYS:
            delays[i] = delayed_usecs
            header[NDELAYS] = i + 1
        header[XRUNS] += 1

    client.set_process_callback(process)
    client.set_xrun_callback(xrun)
    header[RATE] = client.samplerate
    header[FIRST] = -1
    audio[:] = 0.0  # every page touched (mapped) now, none for the first time in the callback
    stamps[:] = 0.0
    gc.collect()
    gc.disable()
    client.activate()
    for src, dst in zip(ports, inports, strict=True):
        client.connect(src, dst)
    clients = sorted({p.name.split(":")[0] for p in client.get_ports()})
    header[READY] = 1
    print(json.dumps({"clients": clients}), flush=True)
    sys.stdin.readline()
    header[RECORDING] = 0
    client.deactivate()
    client.close()
    mm.flush()
    audio.flush()


if __name__ == "__main__":
    main()
