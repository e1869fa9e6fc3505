"""The one progress-callback shape used by every long operation (load, embed, train, evaluate).

``progress(phase, done, total, detail)``: ``phase`` names what is happening ("loading model",
"embedding before", "training" ...), ``done`` of ``total`` units are finished (``total`` may be
None when unknown), ``detail`` is a short free text (a loss, a message from a library).
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, phase: str, done: float, total: float | None, detail: str = "") -> None: ...


def no_progress(phase: str, done: float, total: float | None, detail: str = "") -> None:
    """The default: report nothing."""


def in_phase(progress: Progress, phase: str) -> Progress:
    """The same callback, with every report renamed to ``phase`` (e.g. embedding -> 'embedding after')."""
    def report(_phase: str, done: float, total: float | None, detail: str = "") -> None:
        progress(phase, done, total, detail)
    return report
