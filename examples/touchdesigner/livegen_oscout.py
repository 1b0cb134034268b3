"""livegen helpers for TouchDesigner: put this in a Text DAT named `livegen` and call
``mod.livegen.generate(...)``. It sends through an OSC Out DAT named `oscout1` (UDP,
127.0.0.1:9000). Replies arrive in an OSC In DAT after ``subscribe(port)``.
"""

OSC_OUT = "oscout1"


def _send(address, args=()):
    op(OSC_OUT).sendOSC(address, list(args))  # noqa: F821 - `op` is TouchDesigner's global


def subscribe(port=9001):
    """Ask livegen to send replies and pushes (progress, done, errors) to this machine's `port`."""
    _send("/livegen/subscribe", [int(port)])


def generate(prompt, seed=-1, seconds=None):
    """Queue a clip; seed -1 picks a random seed; seconds None uses the current length."""
    args = [str(prompt), int(seed)]
    if seconds is not None:
        args.append(float(seconds))
    _send("/livegen/generate", args)


def trigger(slot):
    _send("/livegen/trigger", [int(slot)])


def stop(slot=None):
    _send("/livegen/stop", [] if slot is None else [int(slot)])


def set_param(name, value):
    """Any state parameter: seed, bpm, steps, cfg, seconds, bars, prompt, gain, launch, loop ..."""
    _send("/livegen/" + name, [value])


def status():
    _send("/livegen/status")
