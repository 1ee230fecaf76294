"""Stop requests: a signal asks a long loop to stop at its next safe point (after a training step, with a
checkpoint) instead of killing it in the middle of one. Plain Python, no torch: the sweep CLI imports it."""
import contextlib
import logging
import os
import signal

log = logging.getLogger(__name__)


class StopRequest:
    """A flag that a signal handler sets and the training loop reads between steps, so that training stops at the
    end of a step with a checkpoint instead of dying inside one. Calling it says whether a stop was asked."""

    def __init__(self):
        self.signal: int | None = None
        self.owner = os.getpid()

    def in_owner(self) -> bool:
        """False in processes forked after it was made (DataLoader workers, which get the same signals): they
        must leave the stop to the process that owns the loop."""
        return os.getpid() == self.owner

    def __call__(self) -> bool:
        return self.signal is not None

    def set(self, signum: int) -> None:
        self.signal = signum


@contextlib.contextmanager
def stop_on_signals(*signums: int):
    """Within the block, the first of `signums` (e.g. Ctrl-C, SIGTERM) requests a stop (yields the StopRequest);
    a second Ctrl-C interrupts at once. Previous handlers come back on exit. Processes forked inside the block
    (DataLoader workers, which get Ctrl-C too) ignore these signals: the loop that owns them shuts them down."""
    request = StopRequest()
    previous = {s: signal.getsignal(s) for s in signums}

    def on_signal(signum, frame):
        if not request.in_owner():
            return
        if request():
            raise KeyboardInterrupt
        request.set(signum)
        again = " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""
        log.warning("%s: finishing this iteration and saving a checkpoint%s", signal.Signals(signum).name, again)

    for s in signums:
        signal.signal(s, on_signal)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
