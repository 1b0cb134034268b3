"""The browser control surface against the real daemon (JACK dummy, tiny model), driven by a real
headless Chromium (Debian's `chromium`, through Playwright for Python; no browser download).

A pad click shows queued, rendering and playing, the JACK recorder hears it (and silence after a
long press stops it) and the clip appears in the list; a CC over JACK
MIDI moves the slider; a slider moved in the page is echoed to OSC subscribers; a prompt edit
rewrites the mapping file (comments kept) and the next hit renders it; an invalid edit shows the
file:line sentence and keeps the old mapping; a foreign Host or Origin (also from a real page
elsewhere) is refused; a clip path outside the folder is refused.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_or_skip
from tests.integration.conftest import OscClient, portaudio_ports, start_daemon, stop_daemon, wait_new_ports
from tests.integration.jack_recorder import Recorder

pytestmark = pytest.mark.realtime

CHROMIUM = "/usr/bin/chromium"
MIDI_NAME = "lgweb"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]

MAPPING = """\
# The browser test's mapping: every comment here must survive a prompt edit.
name: webtest
params:
  prompt: test tone   # used when no pad prompt applies
  seconds: 0.3
  steps: 3
  launch: now

banks:
  - name: first   # the bank the page opens on
    prompts:
      - looping pad zero   # pad 1
      - pad one before the edit
  - name: second
    prompts: [second bank zero, second bank one]   # flow style stays

midi:
  # pads: notes 60-61, looping so that "playing" lasts until a long press stops it
  - note: 60-61
    action: generate
    prompt: "{pad_prompt}"
    loop: true
  - cc: 1            # steps knob
    action: set
    param: steps
    range: [1, 8]
"""

CC_SENDER = r"""
import sys, time, mido
be = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
out = be.open_output(sys.argv[1])
time.sleep(0.3)
out.send(mido.Message("control_change", channel=0, control=1, value=int(sys.argv[2])))
time.sleep(0.3)
out.close()
"""


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def web_daemon(jack_server, tiny_model, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        require_or_skip("LIVEGEN_REQUIRE_REALTIME", "Chromium is not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        require_or_skip("LIVEGEN_REQUIRE_REALTIME", f"Playwright for Python is not installed: {exc}")
    port = free_tcp_port()
    before = portaudio_ports()
    d = start_daemon(tmp_path_factory.mktemp("web"), tiny_model, midi_port=MIDI_NAME, mapping_text=MAPPING,
                     web_port=port)
    d.web_port = port  # type: ignore[attr-defined]
    d.ports = wait_new_ports(before)  # type: ignore[attr-defined]  (its audio output, for the recorder)
    d.url = f"http://127.0.0.1:{port}/"  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        stop_daemon(d)


@pytest.fixture(scope="module")
def browser(web_daemon):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser, web_daemon):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.goto(web_daemon.url)
    expect(pg.locator("#ready")).to_have_text("ready", timeout=20_000)
    expect(pg.locator("#pad-1")).to_be_visible()
    try:
        yield pg
    finally:
        context.close()


def record_states(page, pad: int) -> None:
    page.evaluate("""(pad) => {
        window.seenStates = [];
        window.seenTexts = [];
        const el = document.getElementById(`pad-${pad}`);
        window.seenStates.push(el.dataset.state);
        new MutationObserver(() => {
            const s = el.dataset.state;
            if (window.seenStates[window.seenStates.length - 1] !== s) window.seenStates.push(s);
            const t = el.querySelector(".status").textContent;
            if (window.seenTexts[window.seenTexts.length - 1] !== t) window.seenTexts.push(t);
        }).observe(el, {attributes: true, attributeFilter: ["data-state"], subtree: true, childList: true,
                        characterData: true});
    }""", pad)


def is_subsequence(wanted: list[str], seen: list[str]) -> bool:
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)


def long_press(page, selector: str, ms: int = 900) -> None:
    box = page.locator(selector).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 10)
    page.mouse.down()
    page.wait_for_timeout(ms)
    page.mouse.up()


def test_pad_click_shows_queued_rendering_playing_and_the_clip(page, web_daemon):
    from playwright.sync_api import expect

    mark = web_daemon.status.mark()
    record_states(page, 0)
    rec = Recorder(list(web_daemon.ports), 20.0, name="lgwebrec")  # records only while the page says playing
    page.locator("#pad-0 .prompt").click()
    ack = web_daemon.status.wait("/livegen/ack", mark, timeout=30, where=lambda p: p[1] == "queued: looping pad zero")
    done = web_daemon.status.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == ack.params[0])
    expect(page.locator("#pad-0")).to_have_attribute("data-state", "playing", timeout=20_000)
    seen = page.evaluate("window.seenStates")
    assert is_subsequence(["idle", "queued", "rendering", "playing"], seen), seen
    texts = page.evaluate("window.seenTexts")
    assert any(re.fullmatch(r"rendering [0-3]/3", t) for t in texts), texts  # the sampler's step progress
    # while it plays: a level meter that moves with the clip, and the place in the loop
    meter = page.locator("#pad-0 .meter")
    expect(meter).to_be_visible()
    expect(page.locator("#pad-0 .status")).to_have_text(re.compile(r"^playing \d+\.\d / 0\.3 s$"))
    levels, places = set(), set()
    rec.recording = True
    for _ in range(25):
        levels.add(float(meter.get_attribute("data-level")))
        places.add(page.locator("#pad-0 .status").text_content())
        page.wait_for_timeout(100)
    rec.recording = False
    heard = rec.close()
    assert max(levels) > 0 and len(places) >= 2, (levels, places)
    # the JACK recorder hears the clip the page shows playing: the loop sounds all through
    sounding = np.abs(heard).max(axis=0)
    assert heard.shape[1] > 0 and np.count_nonzero(sounding > 1e-6) > 0.9 * heard.shape[1], \
        f"the playing pad was not heard on the JACK graph ({np.count_nonzero(sounding > 1e-6)} of {heard.shape[1]} frames)"
    page.screenshot(path=str(Path(web_daemon.folder).parent / "surface.png"))  # docs/web-surface.png is one
    name = Path(done.params[1]).name
    clip = page.locator("#clips li").first
    expect(clip.locator(".name")).to_contain_text(name)
    expect(clip.locator("audio")).to_have_attribute("src", f"/clip/folder/{name}")
    peaks = page.evaluate("() => { const c = document.querySelector('#clips canvas');"
                          " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
                          ".some((v, i) => i % 4 === 3 && v > 0); }")
    assert peaks, "the waveform thumbnail is empty"
    href = clip.locator("a").get_attribute("href")
    conn = http.client.HTTPConnection("127.0.0.1", web_daemon.web_port, timeout=10)
    conn.request("GET", href)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200 and body[:4] == b"RIFF"
    assert body == (web_daemon.folder / name).read_bytes()
    assert "attachment" in resp.getheader("Content-Disposition", "")
    long_press(page, "#pad-0")  # a long press stops the looping pad
    expect(page.locator("#pad-0")).to_have_attribute("data-state", "idle", timeout=10_000)
    expect(meter).to_be_hidden()
    web_daemon.status.wait("/livegen/ack", mark, timeout=10, where=lambda p: p[1] == "stopped slot 0")
    page.wait_for_timeout(300)  # past the stop's fade
    after = Recorder(list(web_daemon.ports), 2.0, name="lgwebrec2", recording=True)
    page.wait_for_timeout(500)
    quiet = after.close()
    assert quiet.shape[1] > 0 and float(np.abs(quiet).max()) == 0.0, "the stopped pad is still heard"


def test_a_cc_over_jack_midi_moves_the_slider(page, web_daemon):
    from playwright.sync_api import expect

    env = dict(os.environ, JACK_NO_START_SERVER="1")
    for value, steps in ((0, "1"), (127, "8")):
        proc = subprocess.run([sys.executable, "-c", CC_SENDER, f"{MIDI_NAME}:midi_in", str(value)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        expect(page.locator("#param-steps")).to_have_value(steps, timeout=10_000)
        expect(page.locator("#value-steps")).to_have_text(steps)


@contextlib.contextmanager
def _subscriber(daemon):
    """An OSC client subscribed to the daemon's pushes, and the mark after its subscription."""
    sub = OscClient()
    try:
        mark = sub.mark()
        sub.send(daemon.port, "/livegen/subscribe")
        sub.wait("/livegen/ack", mark, timeout=10)
        yield sub, mark
    finally:
        sub.close()


def test_a_slider_in_the_page_is_echoed_to_osc_subscribers(page, web_daemon):
    with _subscriber(web_daemon) as (sub, mark):
        page.locator("#param-cfg").fill("3.5")
        sub.wait("/livegen/get", mark, timeout=10, where=lambda p: p[0] == "cfg" and abs(p[1] - 3.5) < 1e-6)
        page.select_option("#param-launch", "beat")
        sub.wait("/livegen/get", mark, timeout=10, where=lambda p: p == ["launch", "beat"])
        # and an OSC set moves the page's control
        sub.send(web_daemon.port, "/livegen/set", "launch", "now")
        from playwright.sync_api import expect

        expect(page.locator("#param-launch")).to_have_value("now", timeout=10_000)


def test_key_and_scale_menus_set_echo_and_clear(page, web_daemon):
    from playwright.sync_api import expect

    with _subscriber(web_daemon) as (sub, mark):
        page.select_option("#param-key", "F#")
        sub.wait("/livegen/get", mark, timeout=10, where=lambda p: p == ["key", "F#"])
        page.select_option("#param-scale", "dorian")
        sub.wait("/livegen/get", mark, timeout=10, where=lambda p: p == ["scale", "dorian"])
        sub.send(web_daemon.port, "/livegen/key", "bb")  # OSC moves the page's menu (the key as written)
        expect(page.locator("#param-key")).to_have_value("Bb", timeout=10_000)
        page.select_option("#param-scale", "")  # "(none)" clears it
        sub.wait("/livegen/get", mark, timeout=10, where=lambda p: p == ["scale", ""])
        expect(page.locator("#param-scale")).to_have_value("", timeout=10_000)
        assert page.locator("#param-scale option").first.inner_text() == "(none)"
        # the tempo source is shown with the bpm (this daemon's own tempo: no clock, no Link)
        expect(page.locator('label[for="param-bpm"]')).to_have_text("bpm")
        sub.send(web_daemon.port, "/livegen/key", "")


def test_health_shows_xruns_underflows_and_dropped_messages(page, web_daemon):
    from playwright.sync_api import expect

    expect(page.locator("#health-xruns")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#health-underflows")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#health-last-underflow")).to_have_text(re.compile(r"^(never|\d{1,2}:\d\d:\d\d.*)$"))
    expect(page.locator("#health-feedback")).to_have_text("no feedback section")  # MIDI on, nothing to light
    dropped = page.locator("#health-dropped-messages")
    malformed = int(re.search(r"OSC malformed (\d+)", dropped.text_content()).group(1))
    sender = OscClient()
    try:
        sender.send_raw(web_daemon.port, b"/livegen/set\x00\x00\x00\x00,i")  # cut short: does not parse
        sender.send_raw(web_daemon.port, b"not osc at all")
    finally:
        sender.close()
    expect(dropped).to_contain_text(f"OSC malformed {malformed + 2}", timeout=10_000)


def changed_lines(a: str, b: str) -> list[int]:
    la, lb = a.splitlines(), b.splitlines()
    assert len(la) == len(lb)
    return [i + 1 for i, (x, y) in enumerate(zip(la, lb, strict=True)) if x != y]


def test_editing_a_pad_prompt_rewrites_the_yaml_and_the_next_hit_uses_it(page, web_daemon):
    from playwright.sync_api import expect

    before = web_daemon.mapping.read_text()
    page.locator("#pad-1 .edit-btn").click()
    expect(page.locator("#edit-prompt")).to_have_value("pad one before the edit")
    page.locator("#edit-prompt").fill("pad one edited in the browser")
    page.locator("#edit-save").click()
    expect(page.locator("#edit-result")).to_have_text("Saved in mapping.yaml:13.", timeout=10_000)
    after = web_daemon.mapping.read_text()
    assert changed_lines(before, after) == [13]
    assert after.splitlines()[12] == "      - pad one edited in the browser"
    assert after.replace("pad one edited in the browser", "pad one before the edit") == before  # comments kept
    expect(page.locator("#pad-1 .prompt")).to_have_text("pad one edited in the browser")
    mark = web_daemon.status.mark()
    page.locator("#pad-1 .prompt").click()
    ack = web_daemon.status.wait("/livegen/ack", mark, timeout=30,
                                 where=lambda p: p[1] == "queued: pad one edited in the browser")
    web_daemon.status.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == ack.params[0])
    long_press(page, "#pad-1")


def test_an_invalid_edit_shows_file_line_and_keeps_the_old_mapping(page, web_daemon):
    from playwright.sync_api import expect

    before = web_daemon.mapping.read_text()
    page.locator("#pad-0 .edit-btn").click()
    page.locator("#edit-prompt").fill("")
    page.locator("#edit-save").click()
    result = page.locator("#edit-result")
    expect(result).to_contain_text(f"{web_daemon.mapping}:12: prompt 0 of bank 'first' must be non-empty text",
                                   timeout=10_000)
    expect(result).to_contain_text("the old mapping stays")
    expect(result).to_have_class("result bad")
    assert web_daemon.mapping.read_text() == before
    expect(page.locator("#pad-0 .prompt")).to_have_text("looping pad zero")
    mark = web_daemon.status.mark()
    page.locator("#pad-0 .prompt").click()  # the old mapping still plays
    ack = web_daemon.status.wait("/livegen/ack", mark, timeout=30, where=lambda p: p[1] == "queued: looping pad zero")
    web_daemon.status.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == ack.params[0])
    long_press(page, "#pad-0")


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    return resp.status, resp.read().decode(errors="replace")


WS_HEADERS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def test_foreign_host_and_origin_are_refused(web_daemon, browser):
    port = web_daemon.web_port
    host = f"127.0.0.1:{port}"
    log = web_daemon.log_text()  # the URL is logged and printed once at start-up
    assert f"livegen.web: control surface at http://{host}/" in log
    assert f"livegen control surface: http://{host}/" in log.splitlines()
    assert get(port, "/", {"Host": host})[0] == 200
    status, text = get(port, "/", {"Host": f"rebound.example:{port}"})  # DNS rebinding
    assert status == 403 and "is not this daemon's address" in text
    status, text = get(port, "/ws", {"Host": host, "Origin": "http://evil.example", **WS_HEADERS})
    assert status == 403 and "only this surface's own page" in text
    status, text = get(port, "/ws", {"Host": host, **WS_HEADERS})
    assert status == 403 and "without an Origin" in text
    assert get(port, "/ws", {"Host": host, "Origin": f"http://{host}", **WS_HEADERS})[0] == 101
    # a real page of another site (here: a data: URL, Origin "null") cannot open the WebSocket
    context = browser.new_context()
    try:
        pg = context.new_page()
        pg.goto("data:text/html,<title>elsewhere</title>")
        outcome = pg.evaluate("""(url) => new Promise((done) => {
            const ws = new WebSocket(url);
            ws.onopen = () => done("open");
            ws.onerror = () => done("refused");
        })""", f"ws://{host}/ws")
        assert outcome == "refused"
    finally:
        context.close()


def test_a_download_path_outside_the_folder_is_refused(web_daemon):
    port = web_daemon.web_port
    host = {"Host": f"127.0.0.1:{port}"}
    outside = web_daemon.folder.parent / "livegen.yaml"
    link = web_daemon.folder / "escape.wav"
    if not link.exists():
        os.symlink(outside, link)
    secret = web_daemon.folder.parent / "secret.wav"
    shutil.copy(outside, secret)
    try:
        # ".." left in the URL is resolved by the server before routing (no route then: 404)
        for path, codes in (("/clip/folder/../secret.wav", (400, 404)), ("/clip/folder/..%2Fsecret.wav", (400,)),
                            ("/clip/folder/%2Fetc%2Fpasswd", (400,)), ("/clip/folder/escape.wav", (403,)),
                            ("/clip/folder/sub/%2E%2E/%2E%2E/livegen.yaml", (400, 404)),
                            ("/clip/elsewhere/secret.wav", (404,)), ("/clip/cache/secret.wav", (404,))):
            status, text = get(port, path, host)
            assert status in codes, (path, status, text)
            assert "RIFF" not in text and "models:" not in text
    finally:
        link.unlink()
        secret.unlink()


# ---- a daemon listening beyond loopback (web.host 0.0.0.0), with pre-rendering ----------------
# It listens on every interface for the few seconds of these tests, as a performer's tablet
# setup would; without the token nobody gets in. (Run inside a network namespace with only `lo`
# where no wider listening is wanted: `ip netns exec`.)
TOKEN_URL = re.compile(r"livegen control surface: (http://127\.0\.0\.1:(\d+)/\?token=([\w-]+))$", re.M)


@pytest.fixture(scope="module")
def wide_daemon(jack_server, tiny_model, tmp_path_factory):
    port = free_tcp_port()
    d = start_daemon(tmp_path_factory.mktemp("web-wide"), tiny_model, midi_port="lgwebwide", mapping_text=MAPPING,
                     web_port=port, web_host="0.0.0.0", prerender=True)
    try:
        yield d
    finally:
        stop_daemon(d)


def test_a_wide_bind_takes_the_token_once_then_the_cookie(wide_daemon, browser):
    from playwright.sync_api import expect

    found = TOKEN_URL.search(wide_daemon.log_text())
    assert found, wide_daemon.log_text()
    url, port, token = found.group(1), int(found.group(2)), found.group(3)
    base = f"http://127.0.0.1:{port}/"
    context = browser.new_context()
    try:
        pg = context.new_page()
        resp = pg.goto(base)  # no token: refused
        assert resp.status == 401 and "?token=" in pg.content()
        assert pg.goto(f"{base}?token=wrong-{token}").status == 401
        resp = pg.goto(url)  # the printed URL: the token once, then a cookie and the plain address
        assert resp.status == 200 and pg.url == base
        expect(pg.locator("#ready")).to_have_text("ready", timeout=20_000)  # the WebSocket came in with it
        (cookie,) = [c for c in context.cookies() if c["name"] == "livegen_token"]
        assert cookie["value"] == token and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert token not in pg.evaluate("document.cookie")  # scripts cannot read it
        pg.reload()
        expect(pg.locator("#ready")).to_have_text("ready", timeout=20_000)
        # pre-rendered variations show on their pads, with how many are ready
        expect(pg.locator("#pad-0")).to_have_attribute("data-state", "cached", timeout=120_000)
        expect(pg.locator("#pad-0 .status")).to_have_text("cached ×1")
    finally:
        context.close()
    other = browser.new_context()  # a browser that never had the token
    try:
        pg = other.new_page()
        assert pg.goto(base).status == 401
        outcome = pg.evaluate("""(url) => new Promise((done) => {
            const ws = new WebSocket(url);
            ws.onopen = () => done("open");
            ws.onerror = () => done("refused");
        })""", f"ws://127.0.0.1:{port}/ws")
        assert outcome == "refused"
    finally:
        other.close()
