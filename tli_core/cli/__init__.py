"""Command-line interface: ``python -m tli_core scan | train | evaluate | compare | sweep | runs | info``.

One module per command group (``scan``, ``train``, ``runs``, ``sweep``), shared helpers in
``common``. Every user error prints one ``error: ...`` line on stderr and exits with status 2,
having written nothing.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import TLIError
from ..jobs.stopping import Stopped
from ..util import quiet_libraries
from . import runs, scan, sweep, train
from .common import EXIT_USER_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tli_core",
        description="TLI Studio: Targeted Lexical Injection (arXiv 2506.15415) from the command line. "
                    "Layers are numbered 0 = input embeddings, k = output of decoder block k, "
                    "L = final output after the norm.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (scan, train, sweep, runs):
        group.add_commands(sub)
    # the dashboard's worker entry points are commands too, but not ones to list
    sub._choices_actions = [a for a in sub._choices_actions if a.help != argparse.SUPPRESS]
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except TLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Stopped as exc:  # a SIGTERM during an evaluation or benchmarks run in the foreground (recorded there)
        print(f"stopped during {exc}", file=sys.stderr)
        return 143
