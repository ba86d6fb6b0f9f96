"""Fixtures shared by the test files, and how the suite spreads over the cores."""

import importlib.util
import os
import shutil

import pytest

try:
    # A paper net's checkpoint is 0.5-0.7 GB, and torch.save's CRC-32 of it is most of the write (2.2 s against
    # 0.2 s a file on this CPU); the suite's in-process runs write a few hundred. The files load alike: what
    # the tests check of a bad file (truncated, not a zip, another format) does not rest on the CRC.
    from torch.utils.serialization import config as _serialization

    _serialization.save.compute_crc32 = False
except (ImportError, AttributeError):  # a torch without the setting: the files as torch writes them
    pass

WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # set in each of pytest-xdist's worker processes


def _scratch_in_memory(path: str = "/dev/shm", room: int = 12 * 2**30) -> bool:
    """Whether the tests' folders can live in ``path``, a tmpfs (memory), with ``room`` bytes free there and in
    the machine's available memory. The suite writes about three hundred paper-net checkpoints (0.45-0.65 GB
    each) that it deletes within seconds; on disk they went through the page cache to a 0.4 GB/s disk, the
    writers held back by the kernel's dirty-page limits: 0.65-0.8 s a checkpoint against 0.19 s in memory,
    measured on the project's CPU, about 3 of the suite's 10 minutes. A passed test's folder goes when it
    ends (``_free_the_disk`` below), and a passing session's whole folder when it ends (setup.cfg's
    ``tmp_path_retention_policy = failed``); a failing session's stays to be looked at, pytest keeping the
    last three."""
    try:
        with open("/proc/mounts") as mounts:
            if not any(line.split()[1:3] == [path, "tmpfs"] for line in mounts):
                return False
        with open("/proc/meminfo") as meminfo:
            available = next(
                int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")
            )
        stat = os.statvfs(path)
    except (OSError, StopIteration, IndexError, ValueError):
        return False
    return os.access(path, os.W_OK) and min(stat.f_bavail * stat.f_frsize, available) >= room


# pytest's own setting for where its session folders go (read when the first tmp_path is made; the workers get
# theirs from the controller); one given by the user, or --basetemp, stands
if not WORKER and "PYTEST_DEBUG_TEMPROOT" not in os.environ and _scratch_in_memory():
    os.environ["PYTEST_DEBUG_TEMPROOT"] = "/dev/shm"
if WORKER:
    # Each worker has a core: one thread each, the commands the tests start as processes too. Two threads
    # per worker on two cores would each wait for the other's.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """The README's `python -m pytest -q` runs on every core where pytest-xdist is installed (the [test] extra):
    one worker a core (at most 4: each may hold a paper net's run, about 2 GB), the long tests first stolen by
    an idle worker. Without the plugin (the GPU machine's bare pytest), or with `-n`/`-p no:xdist` given, the
    suite runs as asked, in one process; so does `--cov` without `-n` (pytest-cov settles how it collects
    before this hook runs: `pytest -n 2 --cov=...` measures the workers)."""
    if WORKER or importlib.util.find_spec("xdist") is None:
        return
    if not config.pluginmanager.hasplugin("xdist") or config.getoption("numprocesses") is not None:
        return
    if config.getoption("collectonly") or config.getoption("usepdb"):
        return
    # pytest-cov picks its mode before this hook: give -n yourself
    if config.getoption("cov_source", None):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if (cores or 1) > 1:
        config.option.numprocesses = min(cores, 4)
        config.option.dist = "worksteal"


def pytest_collection_modifyitems(config, items):
    """The tests marked slow (15-60 s each on one core, measured) run first: pytest-xdist's workers then end
    on short tests, together, instead of one waiting for the other's minute-long test at the end. None of them
    takes a module-scoped fixture, whose module would be set up twice if its tests were split up."""
    # stable: the rest as collected
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def shared_cache(tmp_path_factory, monkeypatch):
    """One package cache for the tests that only use what it holds (the generated data sets and their
    statistics, the compiled LRN kernel): the built-in set is generated once a session, not once a test (14 s).
    A set is written beside and renamed into place whole (data/sources.py), so pytest-xdist's workers share
    it too. The tests of the cache itself take ``isolated_cache``."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if WORKER else base) / "shared-cache"
    monkeypatch.setenv("PAPER_ALEXNET_CACHE", str(folder))
    return folder


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh package cache (generated data, statistics) per test, so that no test reads another's."""
    monkeypatch.setenv("PAPER_ALEXNET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


# The test processes keep freed memory as the commands do when they run as programs (cpu_memory.py: a run's
# steps reuse their maps instead of faulting in fresh pages; 14% off a 3-epoch paper-net run, measured), and
# hand it back after each test (_return_freed_memory below), so that a test starts from what is in use, not
# from the peak of the tests before it. PAPER_ALEXNET_KEEP_MEMORY=0 turns both off, as for the commands.
from paper_alexnet import cpu_memory  # noqa: E402 - after the thread settings above

KEEPS_MEMORY = cpu_memory.keep_freed_memory()


@pytest.fixture(autouse=True)
def _return_freed_memory():
    yield
    if KEEPS_MEMORY:
        cpu_memory.return_freed_memory()


@pytest.fixture(autouse=True)
def _free_the_disk(request, tmp_path):
    """A passed test's folder goes when it ends: the training runs leave 0.5-0.7 GB checkpoints each, and a
    whole suite's would otherwise fill a small disk before pytest's own clean-up at the end. A failed test's
    folder stays, to be looked at."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.passed:
        shutil.rmtree(tmp_path, ignore_errors=True)
