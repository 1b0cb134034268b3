"""Server lives of this process's JACK clients (livegen/control/jack_graph.py): after a server
died, nobody opens a client for the next one until every client of the dead one is closed."""

from __future__ import annotations

from livegen.control.jack_graph import JackClients


def test_nobody_reopens_while_a_client_of_the_dead_server_is_open():
    life = JackClients()
    midi_in, midi_out = object(), object()
    life.opened(midi_in)
    life.opened(midi_out)
    assert life.may_open() and not life.stale(midi_in) and not life.stale(midi_out)
    life.closed(midi_in, server_died=True)  # the input saw the server die first
    assert life.stale(midi_out)  # the output learns it from here (its own check may come later)
    assert not life.may_open()  # the output still holds a client of the dead server
    life.closed(midi_out, server_died=True)  # its "death" is the same one: no second life ends
    assert life.may_open()
    life.opened(midi_in)
    assert life.may_open() and not life.stale(midi_in)
    life.opened(midi_out)
    assert not life.stale(midi_out) and life.may_open()


def test_a_plain_close_ends_no_life():
    life = JackClients()
    a, b = object(), object()
    life.opened(a)
    life.opened(b)
    life.closed(a, server_died=False)  # e.g. a mapping reload closed the feedback output
    assert not life.stale(b) and life.may_open()
