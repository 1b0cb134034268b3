"""livegen helpers for TouchDesigner: put this in a Text DAT named `livegen` and call
``mod.livegen.generate(...)``. It sends through an OSC Out DAT named `oscout1` (UDP,
127.0.0.1:9000). Replies arrive in an OSC In DAT after ``subscribe(port)``.

Every address of the daemon has a function here. ``send_channels(chop)`` and ``send_channel``
send CHOP channels the way an OSC Out CHOP does: one message per channel, the channel name as the
address (name the channels ``/livegen/cfg``, ``/livegen/launch``, ...) and the value as a float.
"""

OSC_OUT = "oscout1"
LAUNCH = {"now": 0.0, "beat": 1.0, "bar": 2.0}  # what a CHOP channel sends for each launch mode


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
    """Play the last clip of a slot again."""
    _send("/livegen/trigger", [int(slot)])


def stop(slot=None):
    """Fade out one slot, or every slot."""
    _send("/livegen/stop", [] if slot is None else [int(slot)])


def cancel(job=None):
    """Cancel one job (its number is in the /livegen/ack reply), or every job."""
    _send("/livegen/cancel", [] if job is None else [int(job)])


def reroll(slot=None):
    """The slot's last request again with a new seed."""
    _send("/livegen/reroll", [] if slot is None else [int(slot)])


def set_param(name, value):
    """/livegen/set name value: prompt, negative_prompt, model, sampler, seed, steps, cfg, seconds,
    bars, bpm, beats_per_bar, gain, launch, loop, priority or bank. '' or 'default' restores the
    default of model, sampler, steps, cfg, negative_prompt and seed. The answer is
    /livegen/get name <value in force>."""
    _send("/livegen/set", [str(name), value])


def get(name):
    """Ask for a parameter's value; the answer is /livegen/get name value."""
    _send("/livegen/get", [str(name)])


def single(name, value):
    """The single-value address /livegen/<name> value (what a fader or a CHOP channel sends)."""
    _send("/livegen/" + str(name), [value])


def bank(number_or_name):
    """Select a prompt bank by number or by its name in the mapping."""
    single("bank", number_or_name)


def launch(mode):
    """When new clips start: 'now', 'beat' or 'bar' (or 0, 1, 2)."""
    single("launch", mode)


def status():
    """Ask for /livegen/status (ready, queue, running job, counters, bpm and a JSON summary)."""
    _send("/livegen/status")


def reload():
    """Reload the mapping files."""
    _send("/livegen/reload")


def send_channel(name, value):
    """One CHOP channel as the OSC Out CHOP sends it: address = channel name (a leading / is
    added here if it is missing), one float value."""
    _send(name if name.startswith("/") else "/" + name, [float(value)])


def send_channels(chop):
    """Every channel of a CHOP (for a CHOP Execute DAT: ``send_channels(op('knobs'))``)."""
    for chan in chop.chans():
        send_channel(chan.name, chan.eval())
