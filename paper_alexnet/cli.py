"""What every command of the package (``python -m paper_alexnet.shapes``, ``python -m reproduce.*``) shares in
how it talks: its --help, counted words, and where the library's log lines go."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import shlex
import sys
import unicodedata
from typing import Sequence


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default after its help, once: not when the help already says what the default is, and not
    for a flag with no value by default (a switch that is off, a required or derived value). Descriptions
    and epilogs (tables) are kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.default in (None, False, argparse.SUPPRESS)
            or action.required
        ):
            return text
        return super()._get_help_string(action)


def plural(count: int, word: str, many: str = "") -> str:
    """'1 epoch', '3 epochs' (``many`` for an irregular plural)."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


def percent(fraction, digits: int = 1) -> str:
    """An error kept as a fraction (0.125), as the console shows it ("12.5%"); None (top-5 with 5 classes or
    fewer) as "n/a"."""
    return "n/a" if fraction is None else f"{100 * fraction:.{digits}f}%"


# Numbers in files (CSV, JSON): errors as fractions (val_top1_err 0.45 = 45%), every float to 6 significant
# digits, enough for any count of images up to a million and free of binary noise (0.44999999999999996).
FLOAT_FORMAT = "%.6g"


def for_file(value):
    """``value`` as files hold it: a float to 6 significant digits, anything else as it is."""
    return float(FLOAT_FORMAT % value) if isinstance(value, float) else value


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: 2 for a wide (CJK) character, 0 for a combining mark."""
    return sum(
        2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1
        for ch in str(text)
    )


def pad(text: str, width: int) -> str:
    """``text`` left-aligned in ``width`` terminal columns (str.ljust counts characters, not columns)."""
    return f"{text}{' ' * max(0, width - display_width(text))}"


def closest(name: str, names: Sequence[str]) -> str:
    """ " (did you mean 'vgg11'?)" for a misspelt name, or "" when nothing is close."""
    match = difflib.get_close_matches(str(name).lower(), list(names), n=1, cutoff=0.65)
    return f" (did you mean {match[0]!r}?)" if match else ""


def command_line(
    module: str, argv: Sequence[str], drop: Sequence[str] = (), add: Sequence[str] = ()
) -> str:
    """``python -m module ARGV`` as a shell line, without the flags in ``drop`` (and their values: the next
    word unless it is a flag, or ``--flag=value``), with ``add`` at the end."""
    kept, skip = [], False
    for word in argv:
        if skip and not word.startswith("-"):
            skip = False
            continue
        skip = word in drop
        if not skip and word.split("=", 1)[0] not in drop:
            kept.append(word)
    return shlex.join(["python", "-m", module, *kept, *add])


class _Stderr(logging.Handler):
    """Each record as one line on the sys.stderr of the moment (a test's captured one too)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def log_to_stderr(main: bool = True) -> None:
    """The library logs (``logging.getLogger(__name__)``) what it does on its own (a data set generated, the
    statistics computed, a store continued); a command shows those lines as its own on stderr. ``main``: this
    process speaks (under torchrun only rank 0 does; the others keep their warnings)."""
    logger = logging.getLogger("paper_alexnet")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if main else logging.WARNING)


@contextlib.contextmanager
def library_quiet():
    """The library's info lines held back for a while (warnings still show): a benchmark's own data."""
    logger = logging.getLogger("paper_alexnet")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
