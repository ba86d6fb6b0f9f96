"""What the commands share: every flag that more than one command takes, defined once with one default,
and the way a command ends (one ``error:`` line and an exit status, never a traceback).

    --data      train, prepare, evaluate, visualize neighbors (default: synthetic; the checkpoint's data
                for the commands that read a checkpoint)
    --workers   train, prepare, evaluate, bench
    --decode    train, evaluate (where a JPEG store is decoded)
    --device    train, evaluate, predict, visualize neighbors, bench (with --two-gpu/--devices: placement.py)
    --strict, --download, --quiet   train, prepare
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import signal
import sys
from typing import Any, Callable, Optional, Sequence, Tuple

import torch

from paper_alexnet import ConfigError
from paper_alexnet.atomic import NoSpaceError, WriteError, atomic_write
from paper_alexnet.cli import FLOAT_FORMAT, log_to_stderr, plural
from paper_alexnet.checkpoint import CheckpointError
from paper_alexnet.cpu_memory import keep_freed_memory
from paper_alexnet.data import BadImageError, DataError
from paper_alexnet.data.loader import DECODE_CHOICES
from paper_alexnet.data.passes import usable_cores
from paper_alexnet.data.sources import SOURCES


# Loader / decoder processes beside a net on the CPU: a few, the net's threads need the cores.
DEFAULT_WORKERS = min(4, usable_cores())
DATA_HELP = (
    " | ".join(kind + (":ROOT" if source.needs_root else "") for kind, source in SOURCES.items())
    + "; options after '?', e.g. synthetic?classes=10&train=1000 or folder:ROOT?val=0.2"
)


class Exit(enum.IntEnum):
    """Every exit status of the commands: what a shell script or a scheduler reads."""

    OK = 0
    FAILED = 1  # an unreadable image under --strict, a file that could not be written
    USAGE = 2  # bad input: a flag, a data spec, a checkpoint; nothing was written
    DIVERGED = (
        3  # train: the loss became NaN or infinite (a result: the last good checkpoint stays)
    )
    STALLED = 4  # train: stuck at chance, stopped by --on-stall stop (checkpoint kept)
    SIGINT = 128 + signal.SIGINT  # Ctrl-C: stopped at a step, with its checkpoint
    SIGTERM = 128 + signal.SIGTERM  # a scheduler's stop: the same

    @classmethod
    def ended(cls, code: int) -> bool:
        """A training run that ran to its end: done, or diverged (both are results to tabulate)."""
        return code in (cls.OK, cls.DIVERGED)

    @classmethod
    def interrupted(cls, code: int) -> bool:
        """Stopped by a signal at a step, with a checkpoint to resume from."""
        return code in (cls.SIGINT, cls.SIGTERM)


# What mends a DataError (its ``remedy``), as the command to run; ``{...}``: the error's facts.
REMEDIES = {
    "make-store": "make it with python -m reproduce.prepare --data SPEC --out {out}",
    "finish-store": "finish it with python -m reproduce.prepare --data {data} --out {out}",
    "sort-val": "sort them with python -m reproduce.prepare --sort-imagenet-val {val} --devkit "
    "ILSVRC2012_devkit_t12.tar.gz",
    "install": "python -m pip install {package}",
}


def explain(err: Exception) -> str:
    """An error's line for the user: the fault, and for a DataError with a remedy, the command that mends it."""
    remedy = getattr(err, "remedy", "")
    return f"{err}: {REMEDIES[remedy].format(**err.facts)}" if remedy in REMEDIES else str(err)


class UsageError(ValueError):
    """Bad command-line input: one line, exit code 2, nothing written."""


def as_program(main: Callable[[], int], keep_memory: bool = True) -> int:
    """``python -m reproduce.X``: the process is the command's own, so it takes the process-wide setting the
    commands want (glibc keeps freed memory: no page faults on conv1's 37 MB maps every step, cpu_memory.py).
    A command called in a process that is not its own (a notebook, the tests) leaves malloc as it found it."""
    if keep_memory:
        keep_freed_memory()
    return main()


def exit_code(action: Callable[[], int]) -> int:
    """Run a command; bad input becomes one ``error:`` line and exit 2, an unreadable file under --strict or a
    file that could not be written exit 1, never a traceback. The library's log lines go to stderr."""
    log_to_stderr()
    try:
        return action()
    except BadImageError as err:
        print(
            f"error: unreadable image {err.path}: {err.reason} (--strict; without it such files are skipped)",
            file=sys.stderr,
        )
        return Exit.FAILED
    except NoSpaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return Exit.USAGE
    except WriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return Exit.FAILED
    except (UsageError, DataError, ConfigError, CheckpointError) as err:
        print(f"error: {explain(err)}", file=sys.stderr)
        return Exit.USAGE


def say_skipped(skipped, where: str, listed: Optional[str] = None) -> None:
    """One line for the unreadable files a command left out: how many, the first few with why, and the rule
    that applied (skipped, as without --strict)."""
    unique = list(dict.fromkeys(tuple(item) for item in skipped))
    if not unique:
        return
    first = "; ".join(f"{path} ({reason})" for path, reason in unique[:3])
    more = f"; and {len(unique) - 3} more" if len(unique) > 3 else ""
    print(
        f"warning: {plural(len(unique), 'unreadable file')} skipped in {where} (--strict stops at the "
        f"first instead): {first}{more}" + (f"; all of them in {listed}" if listed else ""),
        file=sys.stderr,
    )


def write_csv(rows: list, path: str, say: bool = True) -> None:
    """A command's table as CSV, whole or not at all (atomic.py), and (``say``) the line that says where it
    went."""
    import pandas as pd

    with atomic_write(path, newline="") as handle:
        pd.DataFrame(rows).to_csv(handle, index=False, float_format=FLOAT_FORMAT)
    if say:
        print(f"wrote {path}", file=sys.stderr)


MISSING = object()  # a Flag.add default not given


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag, declared once: what argparse, ``--help``, a grid cell's ``@key=value``, the argv
    made from a config (run_config.to_argv) and the check on its value all read. ``default`` is the flag's own
    (None for a value filled from the data kind or the recipe); a switch is a flag whose default is False."""

    help: str
    default: Any = None
    type: Optional[Callable[[str], Any]] = None
    choices: Optional[Sequence[Any]] = None
    metavar: Optional[str] = None
    short: Optional[str] = None  # "-b"
    nargs: Optional[str] = None
    const: Any = None
    # the check on a given value: (ok(value), message with {} for the value); None: any value of its type
    check: Optional[Tuple[Callable[[Any], bool], str]] = None
    # a default that depends on the device: the rule (a function) that decides it, beside the flag
    by_device: Optional[Callable[..., Any]] = None

    @property
    def switch(self) -> bool:
        return self.default is False

    def option(self, dest: str) -> str:
        """The long flag of the setting ``dest`` (``batch_size`` -> ``--batch-size``)."""
        return "--" + dest.replace("_", "-")

    def add(self, parser, dest: str, default: Any = MISSING) -> None:
        """Add the flag to an argparse parser or group (``default``: SUPPRESS, to see what was given)."""
        names = ([self.short] if self.short else []) + [self.option(dest)]
        given = {"default": self.default if default is MISSING else default, "help": self.help}
        if self.switch:
            parser.add_argument(*names, dest=dest, action="store_true", **given)
            return
        extra = {
            k: getattr(self, k) for k in ("type", "choices", "metavar", "nargs") if getattr(self, k)
        }
        if self.nargs:
            extra["const"] = self.const
        parser.add_argument(*names, dest=dest, **extra, **given)

    def checked(self, dest: str, value: Any, error: type = None) -> Any:
        """``value`` when the check passes, else the check's message as ``error`` (UsageError)."""
        if value is not None and self.check is not None and not self.check[0](value):
            raise (error or UsageError)(self.check[1].format(value, option=self.option(dest)))
        return value


# --- the flags more than one command takes -------------------------------------------------------------

DATA = Flag(DATA_HELP, default="synthetic", metavar="SPEC")
DATA_OF_CHECKPOINT = Flag(
    f"default: the data the checkpoint was trained on. {DATA_HELP}", default=None, metavar="SPEC"
)
DECODE = Flag(
    "where a JPEG store's images are decoded: in the --workers on the CPU, or on the "
    "net's device, a batch at a time (nvjpeg on a GPU); auto: the device on a GPU, "
    "the workers elsewhere. Other data is decoded by the workers",
    default="auto",
    choices=DECODE_CHOICES,
)
DEVICE = Flag("auto (cuda if available), cpu, cuda, cuda:1, ...", default="auto")
STRICT = Flag(
    "stop at the first unreadable image instead of skipping it (skipped files are named)",
    default=False,
)
DOWNLOAD = Flag("download cifar10/cifar100/caltech101 if absent", default=False)
QUIET = Flag(
    "no progress bars; what the run says (splits, notes, warnings, results) is still printed",
    default=False,
)
_WORKERS = "processes that read and decode images (0: in the main process); default: "
_AT_LEAST_0 = (lambda n: n >= 0, "{option} must be 0 or more, not {}")
# a command that reads a data set to write it (prepare): every core decodes, the main process only writes
WORKERS = Flag(
    _WORKERS + f"the usable cores, {usable_cores()} here",
    default=usable_cores(),
    type=int,
    check=_AT_LEAST_0,
)


def add_data_flag(parser, from_checkpoint: bool = False) -> None:
    """--data SPEC: synthetic by default, or (``from_checkpoint``) the data the checkpoint was trained on."""
    (DATA_OF_CHECKPOINT if from_checkpoint else DATA).add(parser, "data")


def add_checkpoint_flag(
    parser, required: bool = True, what: str = "a checkpoint.pt / best.pt"
) -> None:
    """--checkpoint: a file or a shared folder of this package, or the name of published weights."""
    from paper_alexnet import published

    parser.add_argument(
        "--checkpoint",
        required=required,
        default=None,
        metavar="PATH",
        help=f"{what} or a shared folder; or published weights by name, downloaded and converted once: "
        f"{', '.join(published.names())} (a file or folder of that name comes first; "
        "python -m reproduce.evaluate --list-weights)",
    )


class ListWeights(argparse.Action):
    """--list-weights: every name of published weights, with what its publisher states; then exit 0."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(weights_table())
        parser.exit(0)


def weights_table() -> str:
    """The published weights, one paragraph a name (--list-weights, and the epilog of train's and evaluate's
    --help)."""
    import textwrap

    from paper_alexnet import published

    return "published weights (--pretrained NAME, --checkpoint NAME):\n" + "\n".join(
        textwrap.fill(
            entry.line(),
            width=110,
            initial_indent="  ",
            subsequent_indent="      ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        for entry in published.registry().values()
    )


def add_list_weights_flag(parser) -> None:
    parser.add_argument(
        "--list-weights",
        action=ListWeights,
        help="list the published weights that go by name (source, size, checksum, licence, accuracy) and exit",
    )


def named_weights(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with a --checkpoint that names published weights (and is no file) turned into their cached
    shared folder, downloaded and converted first where needed (published.resolve; its errors: exit 2)."""
    from paper_alexnet import published

    if getattr(args, "checkpoint", None):
        args.checkpoint = published.resolve(
            args.checkpoint, progress=not getattr(args, "quiet", False)
        )
    return args


def gpu_feeders(local_world: int = 1) -> int:
    """Loader processes for each GPU process: this node's cores shared by its ``local_world`` GPU processes,
    less one each for the process that drives its GPU. At 20,000 images/s every core counts: a JPEG folder
    decodes on them, and even a store decoded by nvjpeg reads and slices its bytes there."""
    return max(1, usable_cores() // max(local_world, 1) - 1)


def loader_processes(workers: Optional[int], device, local_world: int = 1) -> int:
    """A training run's loader processes: as given, else :func:`gpu_feeders` on a GPU and DEFAULT_WORKERS on
    the CPU."""
    if workers is not None:
        return workers
    return gpu_feeders(local_world) if torch.device(device).type == "cuda" else DEFAULT_WORKERS


def reader_processes(workers: Optional[int], device) -> int:
    """The readers of an inference command: as given, else none on the CPU (measured with the features bench:
    0 readers ran the paper net at 1.01x its bare inference rate from a raw store, 1 reader at 0.80x) and
    :func:`gpu_feeders` on a GPU, which they keep fed while it computes."""
    if workers is not None:
        return workers
    return 0 if torch.device(device).type == "cpu" else gpu_feeders()


# a command that trains (or measures training): by device and cores (loader_processes)
TRAIN_WORKERS = Flag(
    _WORKERS
    + f"on the CPU min(4, cores) = {DEFAULT_WORKERS} here; on a GPU the node's cores shared by its "
    "GPU processes, less one each for the process itself",
    type=int,
    check=_AT_LEAST_0,
    by_device=loader_processes,
)
# a command that only runs the net forward (reader_processes)
READ_WORKERS = Flag(
    _WORKERS
    + "0 on the CPU, where the net's threads use every core and a reader process takes them away "
    "(docs/features.md); on a GPU the cores less one",
    type=int,
    check=_AT_LEAST_0,
    by_device=reader_processes,
)


def add_workers_flag(parser, inference: bool = False, train: bool = False) -> None:
    """--workers; ``inference``: a command that only runs the net forward (READ_WORKERS); ``train``: a command
    that trains or measures training (TRAIN_WORKERS); otherwise WORKERS."""
    (READ_WORKERS if inference else TRAIN_WORKERS if train else WORKERS).add(parser, "workers")


def add_decode_flag(parser) -> None:
    DECODE.add(parser, "decode")


def add_device_flag(parser) -> None:
    DEVICE.add(parser, "device")


def add_strict_flag(parser) -> None:
    """--strict: the one rule for unreadable images in every command that reads a data set."""
    STRICT.add(parser, "strict")


def add_reading_flags(parser) -> None:
    """--strict, --download and --quiet: how a command that reads a whole data set treats files and output."""
    for dest, flag in (("strict", STRICT), ("download", DOWNLOAD), ("quiet", QUIET)):
        flag.add(parser, dest)


def check_workers(workers: Optional[int]) -> None:
    WORKERS.checked("workers", workers, DataError)


# what --format writes, and the --out it implies
FORMATS = {
    "pt": ".pt",
    "onnx": ".onnx",
    "safetensors": "",
}


def add_format_flag(parser, formats=tuple(FORMATS)) -> None:
    parser.add_argument(
        "--format",
        choices=formats,
        default=None,
        help="pt: a checkpoint of this package (pickled); onnx: the graph for any runtime; safetensors: a "
        "folder of safetensors, config.json and a model card, as torch.hub and Hugging Face share nets "
        "(no pickle). Default: from --out's suffix (.pt, .onnx; none: a folder)",
    )


def output_format(out: str, given: Optional[str], formats=tuple(FORMATS)) -> str:
    """--format, or the one --out's suffix implies (.pt, .onnx; no suffix: a safetensors folder)."""
    if given is not None:
        return given
    suffix = os.path.splitext(out.rstrip("/"))[1].lower()
    for name in formats:
        if FORMATS[name] == suffix:
            return name
    raise UsageError(
        f"--out {out}: its suffix {suffix!r} names none of the formats written here ("
        + ", ".join(f"{FORMATS[n] or 'no suffix'} for {n}" for n in formats)
        + "); give --format"
    )
