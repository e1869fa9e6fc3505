"""Stopping a job within seconds in any phase: a SIGTERM, or a STOP file (the dashboard's Stop button).

A stop is acted on in one of two ways, by the kind of work going on:

- inside an *interruptible* section (loading a model, a forward pass, a merge, a benchmark) the SIGTERM
  handler raises ``Stopped`` in the main thread at once: Python runs a signal handler between two
  bytecodes, so a model load (a Python loop over tensors) or a forward (a Python loop over blocks)
  ends within one operation, not after the whole load or the whole pass. What such a section computed
  is thrown away; nothing it would write is written there.
- everywhere else (an optimiser step, saving weights, writing files) the stop is only noted, and
  the job acts on it at its next check (``StopGuard.check``, between two steps or two files), so
  nothing is ever half-applied or half-written.

A STOP file is turned into the same signal: a watcher thread looks for it a few times a second and
sends SIGTERM to its own process, so the dashboard's Stop acts as fast as ``kill``. Where the job does
not run in the main thread (no handler can be installed), the watcher only sets the flag.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

WATCH_SECONDS = 0.2  # how often the watcher looks for a STOP file
_EARLY = {"signalled": False}  # a SIGTERM that came while the worker process was still importing


class Stopped(BaseException):
    """A stop was requested; ``str(exc)`` names the phase it arrived in.

    A BaseException (like KeyboardInterrupt), so that library code catching ``Exception`` around a
    load or a benchmark cannot swallow it."""


def early_handler() -> None:
    """Install, first thing in a worker process, a SIGTERM handler that only remembers the signal: a stop during
    the seconds of importing the libraries then ends the job at its first check instead of killing the process
    before it could record anything."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: _EARLY.update(signalled=True))


class StopGuard:
    """The stop flag of one job (``job``: a JobDir with ``stop_requested()``); use as a context manager.

    Calling it returns whether a stop was asked (the training loop's ``should_stop``)."""

    def __init__(self, job, phase: str = "starting"):
        self.job, self.phase = job, phase
        self.signalled = _EARLY["signalled"]
        self._armed = 0
        self._installed = False
        self._previous = None
        self._done = threading.Event()
        self._lock = threading.Lock()  # the watcher never signals a process whose handler was just taken out

    # ---------------------------------------------------------------- lifetime
    def __enter__(self) -> "StopGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        threading.Thread(target=self._watch, daemon=True, name="stop-watcher").start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._armed = 0
        with self._lock:
            if self._installed:
                signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
                self._installed = False

    def _handle(self, signum, frame) -> None:
        self.signalled = True
        if self._armed:
            self._armed = 0  # raised once: the cleanup that follows is not interrupted again
            raise Stopped(self.phase)

    def _watch(self) -> None:
        while not self._done.wait(WATCH_SECONDS):
            try:
                asked = self.job.stop_requested()
            except OSError:
                continue
            if asked:
                with self._lock:
                    if self._installed:
                        os.kill(os.getpid(), signal.SIGTERM)  # the main thread's handler acts on it
                    else:
                        self.signalled = True
                return

    # ---------------------------------------------------------------- use
    def __call__(self) -> bool:
        if not self.signalled:
            try:
                self.signalled = self.job.stop_requested()
            except OSError:
                pass
        return self.signalled

    def check(self, phase: str | None = None) -> None:
        """Raise ``Stopped`` if a stop was asked (a point where nothing is half-done)."""
        if phase is not None:
            self.phase = phase
        if self():
            raise Stopped(self.phase)

    @contextlib.contextmanager
    def interruptible(self, phase: str | None = None):
        """A section a stop may cut short at any point: ``Stopped`` is raised inside it as the signal comes."""
        self.check(phase)
        self._armed += 1
        try:
            if self.signalled:  # came between the check and the arming
                raise Stopped(self.phase)
            yield self
        finally:
            self._armed = max(0, self._armed - 1)


class _NoStop:
    """A guard for work that no one can stop (a direct library call): every check passes."""

    phase = ""
    signalled = False

    def __call__(self) -> bool:
        return False

    def check(self, phase: str | None = None) -> None:
        pass

    def interruptible(self, phase: str | None = None):
        return contextlib.nullcontext(self)


NO_STOP = _NoStop()
