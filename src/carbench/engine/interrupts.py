"""Clean interrupts: SIGTERM behaves like Ctrl-C, and both end with how many images are kept and how to go on.

`RunInterrupted` is a KeyboardInterrupt (so nothing between the loop and the entry point swallows
it) carrying the one-line message the entry point prints before exiting with 128 + the signal.

Inside the item loop (`stop_between_items`) the first signal does not raise where it lands: it is
recorded, a line says the run stops once the current item is kept, and the loop stops at its next
item boundary. An exception raised at an arbitrary bytecode can land between a lock's acquire and
the `with` block that would release it (a DataLoader's multiprocessing queue, for one), and the
run then hangs in its own clean-up instead of exiting; stopping between items never does. A second
signal still raises at once, for a user who will not wait for the current item.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

_received: list[int] = []  # signals seen inside the block, in case their exception was swallowed
_between_items: list[str] = []  # the loop's item noun while `stop_between_items` is active


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a scheduler, `kill`, a container stop)."""


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on a signal; `message` says what is kept and how to resume; `exit_code` = 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.message, self.exit_code = message, 128 + signum


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated(f"signal {signum}") if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)
    if _between_items and len(_received) == 1:
        noun = _between_items[-1]
        name, again = ("Ctrl-C", "press Ctrl-C again") if signum == signal.SIGINT else ("SIGTERM", "send it again")
        # os.write, not print: the handler may run while the main thread is inside a write to stderr
        os.write(2, f"\n{name}: stopping once the current {noun} is kept; {again} to stop at once\n".encode())
        return
    raise _exception(signum)


def stop_requested() -> bool:
    """True once a signal has arrived: the loop should keep what it has and stop."""
    return bool(_received)


def raise_if_received() -> None:
    """Raise for a signal that arrived but was not raised: one recorded by `stop_between_items`, or one
    whose exception was lost (raised inside a finaliser, where Python only prints it).

    Called once the item loop has returned, so a Ctrl-C or SIGTERM always stops the run."""
    if _received:
        raise _exception(_received[-1])


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises Terminated and SIGINT KeyboardInterrupt in the main thread, and both
    are remembered for `raise_if_received` (handlers restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()


@contextmanager
def stop_between_items(noun: str) -> Iterator[None]:
    """Inside the block the first Ctrl-C / SIGTERM is only recorded (and announced); the loop polls
    `stop_requested` between items and `raise_if_received` raises it once the loop has returned. A
    second signal raises where it lands, as outside the block."""
    _between_items.append(noun)
    try:
        yield
    finally:
        _between_items.pop()


def interrupted(err: KeyboardInterrupt, kept: int | None, total: int | None, run_dir: Path | None) -> RunInterrupted:
    """The RunInterrupted for `err`, with the count of finished images kept in `run_dir`."""
    signum = signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT
    if kept is None or total is None or run_dir is None:
        msg = "interrupted while starting, before any image was evaluated; rerun the same command"
    else:
        msg = f"{kept} of {total} images kept in {run_dir}; rerun with resume=true"
    return RunInterrupted(msg, int(signum))
