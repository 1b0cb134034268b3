import threading
import tracemalloc

import numpy as np
import pytest

from livegen.output.ringbuffer import RingBuffer


def test_wraparound_preserves_order():
    ring = RingBuffer(2, 10)
    src = np.arange(60, dtype=np.float32).reshape(2, 30)
    out = np.zeros((3, 2), np.float32)
    got = []
    w = 0
    while len(got) < 30:
        w += ring.write(src[:, w:w + 4])
        n = ring.read_into(out)
        got.extend(out[:n, 0].tolist())
    assert got == list(range(30))
    assert ring.available() == 0 and ring.space() == 10


def test_write_stops_when_full_and_validates_shape():
    ring = RingBuffer(1, 5)
    assert ring.write(np.ones((1, 8), np.float32)) == 5
    assert ring.write(np.ones((1, 1), np.float32)) == 0
    with pytest.raises(ValueError):
        ring.write(np.ones((2, 3), np.float32))


def test_underflow_counting_and_close():
    ring = RingBuffer(2, 16)
    out = np.full((8, 2), 7.0, np.float32)
    ring.write(np.ones((2, 5), np.float32))
    assert ring.read_into(out) == 5
    assert np.all(out[:5] == 1) and np.all(out[5:] == 0)
    assert (ring.underflows, ring.underflow_frames) == (1, 3)
    ring.close()
    assert ring.read_into(out) == 0 and ring.underflows == 1  # end of stream, not an underflow
    assert ring.finished
    with pytest.raises(ValueError):
        ring.write(np.ones((2, 1), np.float32))


def test_read_into_does_not_allocate():
    ring = RingBuffer(2, 4096)
    out = np.zeros((1024, 2), np.float32)
    chunk = np.ones((2, 1024), np.float32)
    for _ in range(3):  # warm up
        ring.write(chunk)
        ring.read_into(out)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            ring.read_into(out)  # empty: underflow path
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    ring.write(chunk)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        ring.read_into(out)
        peak2 = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    block = out.nbytes  # 8 KiB: any temporary copy of the block would show up
    assert peak < block // 4 and peak2 < block // 4


def test_threaded_producer_consumer():
    ring = RingBuffer(2, 257)
    n = 20000
    src = np.stack([np.arange(n), -np.arange(n)]).astype(np.float32)
    got = []

    def produce():
        ring.write_all(src, chunk_frames=100, timeout=20)
        ring.close()

    t = threading.Thread(target=produce)
    t.start()
    out = np.zeros((64, 2), np.float32)
    while not ring.finished:
        k = ring.read_into(out)
        got.append(out[:k].copy())
    t.join()
    data = np.concatenate(got)
    assert data.shape == (n, 2)
    assert np.array_equal(data.T, src)
