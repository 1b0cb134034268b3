"""The browser surface's checks: Host (no DNS rebinding), Origin (no cross-site use), the token
and allow-list of a wider bind, and clip paths that must stay inside the daemon's folders."""

from __future__ import annotations

import os

import pytest

from livegen.control.web_security import Guard, Refused, relative_clip, resolve_clip, split_host
from livegen.replies import Replies

LOCAL = Guard.for_bind("127.0.0.1", 8765, "t0k", ["127.0.0.1", "::1"])
WIDE = Guard("0.0.0.0", 8765, "s3cret", ("127.0.0.1", "192.168.1.0/24"), ("studio", "studio.local"))


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "[::1]:8765", "LOCALHOST:8765", "127.0.0.1"])
def test_loopback_hosts_accepted(host):
    LOCAL.check_host(host)


@pytest.mark.parametrize("host,why", [
    ("evil.example:8765", "is not this daemon's address"),  # DNS rebinding: a name re-pointed at 127.0.0.1
    ("127.0.0.1.evil.example:8765", "is not this daemon's address"),
    ("192.168.1.5:8765", "is not this daemon's address"),  # a loopback bind answers only to loopback names
    ("127.0.0.1:9999", "names port 9999"),
    ("", "no Host header"),
    ("user@127.0.0.1:8765", "not a host name"),
    ("127.0.0.1:8765/x", "not a host name"),
])
def test_foreign_hosts_refused(host, why):
    with pytest.raises(Refused, match=why):
        LOCAL.check_host(host)


def test_wide_bind_hosts():
    for ok in ("192.168.1.5:8765", "studio:8765", "studio.local:8765", "[fe80::1]:8765"):
        WIDE.check_host(ok)
    with pytest.raises(Refused):
        WIDE.check_host("attacker.example:8765")


def test_origin_checks():
    LOCAL.check_origin(None, "127.0.0.1:8765", websocket=False)  # a plain GET (no Origin) is fine
    LOCAL.check_origin("http://127.0.0.1:8765", "127.0.0.1:8765", websocket=True)
    with pytest.raises(Refused, match="without an Origin"):
        LOCAL.check_origin(None, "127.0.0.1:8765", websocket=True)
    for bad in ("http://evil.example", "http://localhost:8765", "https://127.0.0.1:8765", "null",
                "http://127.0.0.1:8766"):
        with pytest.raises(Refused, match="refused"):
            LOCAL.check_origin(bad, "127.0.0.1:8765", websocket=True)


def test_token_and_allow_list_only_on_a_wide_bind():
    assert LOCAL.token_ok(None) and not LOCAL.wide
    LOCAL.check_client("10.0.0.9")  # loopback bind: only this machine can reach it anyway
    assert WIDE.wide
    assert WIDE.token_ok("s3cret")
    for bad in (None, "", "s3cre", "s3cret2", "S3CRET"):
        assert not WIDE.token_ok(bad)
    WIDE.check_client("192.168.1.77")
    WIDE.check_client("::ffff:192.168.1.77")
    with pytest.raises(Refused, match="not in osc.allow"):
        WIDE.check_client("10.0.0.9")
    assert WIDE.url() == "http://127.0.0.1:8765/?token=s3cret"
    assert LOCAL.url() == "http://127.0.0.1:8765/"


def test_split_host():
    assert split_host("[::1]:8765") == ("::1", 8765)
    assert split_host("Example:80") == ("example", 80)


@pytest.fixture()
def folders(tmp_path):
    daw, cache, outside = tmp_path / "daw", tmp_path / "cache", tmp_path / "outside"
    for d in (daw, cache, outside, daw / "sub"):
        d.mkdir()
    (daw / "a.wav").write_bytes(b"RIFF")
    (daw / "sub" / "b.wav").write_bytes(b"RIFF")
    (daw / "a.json").write_text("{}")
    (outside / "secret.wav").write_bytes(b"RIFF")
    os.symlink(outside / "secret.wav", daw / "link.wav")
    os.symlink(daw / "a.wav", daw / "inside.wav")
    return {"folder": daw, "cache": cache, "none": None}, outside


def test_clip_inside_the_folder_is_served(folders):
    roots, _ = folders
    assert resolve_clip(roots, "folder", "a.wav") == (roots["folder"] / "a.wav").resolve()
    assert resolve_clip(roots, "folder", "sub/b.wav").name == "b.wav"
    assert resolve_clip(roots, "folder", "inside.wav").name == "a.wav"  # a symlink that stays inside


@pytest.mark.parametrize("name,status", [
    ("../outside/secret.wav", 400), ("sub/../../outside/secret.wav", 400), ("..", 400),
    ("/etc/passwd", 400), ("sub//b.wav", 400), ("a\\..\\b.wav", 400), ("a.wav\x00", 400), ("", 400),
    ("link.wav", 403),  # a symlink out of the folder
    ("a.json", 404), ("missing.wav", 404),
])
def test_clip_paths_outside_or_odd_refused(folders, name, status):
    roots, _ = folders
    with pytest.raises(Refused) as info:
        resolve_clip(roots, "folder", name)
    assert info.value.status == status


def test_unknown_or_unset_root_refused(folders):
    roots, outside = folders
    for root in ("none", "etc", str(outside)):
        with pytest.raises(Refused) as info:
            resolve_clip(roots, root, "secret.wav")
        assert info.value.status == 404


def test_relative_clip(folders):
    roots, outside = folders
    assert relative_clip(roots, roots["folder"] / "sub" / "b.wav") == ("folder", "sub/b.wav")
    assert relative_clip(roots, outside / "secret.wav") is None


def test_reply_observers_see_every_send_even_without_osc():
    seen = []
    r = Replies(None)
    r.observers.append(lambda origin, address, args: seen.append((origin, address, args)))
    r.observers.append(lambda *a: 1 / 0)  # a broken observer does not stop the others or the reply
    r.echo("web:1", "steps", (8,))
    r.ack("midi:note_on", 3, "queued: x")
    assert seen == [("web:1", "/livegen/get", ("steps", 8)), ("midi:note_on", "/livegen/ack", (3, "queued: x"))]
    sent = []
    r2 = Replies(lambda target, address, args: sent.append((target, address, args)))
    r2.observers.append(lambda *a: seen.append(a))
    r2.send("osc:127.0.0.1:9001", "/livegen/get", "cfg", 2.0)
    assert sent == [(("127.0.0.1", 9001), "/livegen/get", ("cfg", 2.0))]
    assert seen[-1] == ("osc:127.0.0.1:9001", "/livegen/get", ("cfg", 2.0))
