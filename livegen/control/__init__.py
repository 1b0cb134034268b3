"""Control inputs of the daemon: OSC (``osc``) and MIDI (``midi``)."""
