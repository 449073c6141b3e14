"""Command-line option types that refuse bad text while the command line is parsed.

A number out of range or a file that is not there is then one line naming the option, the text
given and what is allowed, before any data is loaded or anything is computed. Each type keeps what
it allows as attributes, so that the tests can generate the values each option must refuse from
the parser itself.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .validation import describe_real, describe_whole


@dataclass(frozen=True)
class Number:
    """A whole or real number in a range; finite always."""

    whole: bool
    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False
    open_high: bool = False

    @property
    def __name__(self) -> str:  # argparse names a type by it in its own messages
        return "whole number" if self.whole else "number"

    @property
    def allowed(self) -> str:
        if self.whole:
            return describe_whole(self.low, self.high)
        return describe_real(self.low, self.high, self.open_low, self.open_high)

    def __call__(self, text: str):
        try:
            value = int(text) if self.whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.allowed}") from None
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: allowed is {self.allowed}")
        return value


def whole(low: Optional[int] = None, high: Optional[int] = None) -> Number:
    return Number(True, low, high)


def real(low: Optional[float] = None, high: Optional[float] = None, *, open_low: bool = False, open_high: bool = False) -> Number:
    return Number(False, low, high, open_low, open_high)


READ = "file to read"
WRITE = "file to write"
NEW_FOLDER = "new folder"
DESTINATION = "folder to fill"
FOLDER = "folder"


@dataclass(frozen=True)
class PathOption:
    """A path the command reads, writes or creates, checked before the work starts (a file to write
    whose folder is missing would otherwise be found out only after minutes of computing)."""

    role: str

    @property
    def __name__(self) -> str:
        return self.role

    def __call__(self, text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{text!r} is not a path: give the {self.role}")
        path = Path(text).expanduser()
        if self.role == READ:
            if not path.exists():
                raise argparse.ArgumentTypeError(f"{text!r} does not exist: give an existing {self.role}")
            if not path.is_file():
                raise argparse.ArgumentTypeError(f"{text!r} is not a file: give an existing {self.role}")
            if not os.access(path, os.R_OK):
                raise argparse.ArgumentTypeError(f"{text!r} cannot be read: give a readable {self.role}")
        elif self.role == FOLDER:
            if not path.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r} does not exist or is not a folder: give an existing {self.role}")
        elif self.role == WRITE:
            if path.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r} is a folder: give the path of a {self.role}")
            parent = path.parent
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r}: the folder {str(parent)!r} does not exist; create it or give another {self.role}")
            if not os.access(parent, os.W_OK):
                raise argparse.ArgumentTypeError(f"{text!r}: the folder {str(parent)!r} is not writable; give another {self.role}")
        else:  # NEW_FOLDER or DESTINATION: created with its parents when missing
            if path.exists() and not path.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r} is a file: give the path of a {self.role}")
            if self.role == NEW_FOLDER and path.is_dir() and any(path.iterdir()):
                raise argparse.ArgumentTypeError(f"{text!r} is not empty: give a new or empty folder")
        return text


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (its usage block runs to dozens of lines here); the
    sub-command parsers it makes are of the same kind."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def run_script(main: Callable[[], Optional[int]]) -> int:
    """Run a script's `main`: an error a user can cause (no data, a bad value found late) is one
    line `error: …` and exit status 2, never a traceback."""
    from .errors import PoisonLabError

    try:
        return int(main() or 0)
    except PoisonLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
