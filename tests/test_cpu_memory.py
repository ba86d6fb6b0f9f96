"""cpu_memory.keep_freed_memory: after it, a step that makes a new 37 MB map (conv1's at batch 32) faults in no
page it had before; without it, glibc returns the block and every page faults again. Measured in a fresh process.

What is counted is the re-faults: page faults less the pages the resident set grew by. With the setting nothing
goes back to the system, so a fault can only add a page (the heap still growing to what a step needs: where
glibc's heap settles depends on the process's layout, and in some runs it takes a few steps more), and the
re-faults are zero by construction; without it, each step faults the returned block's pages in again."""

import os
import subprocess
import sys

import pytest

resource = pytest.importorskip("resource")

SCRIPT = """
import resource, sys, torch
from paper_alexnet.cpu_memory import keep_freed_memory, return_freed_memory
kept = keep_freed_memory() if sys.argv[1] in ("keep", "trim") else False
torch.set_num_threads(1)
x = torch.randn(32, 96, 55, 55)

def step():             # a new 37 MB map each time, as conv1's output is, then a smaller one
    return torch.nn.functional.max_pool2d(torch.relu(x), 3, 2).sum()

for _ in range(3):      # the heap grows to what a step needs
    step()
def resident_pages():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1])

before, resident = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, resident_pages()
for _ in range(10):
    if sys.argv[1] == "trim":
        return_freed_memory()   # as the suite does between two tests
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(kept, (faults - (resident_pages() - resident)) / 10)   # re-faults a step
"""


def faults_per_step(mode, **env):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    kept, faults = done.stdout.split()
    return kept == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_memory_is_reused_without_page_faults():
    kept, refaults = faults_per_step("keep")
    _, default_refaults = faults_per_step("default")
    assert default_refaults > 37 * 2**20 / 4096 / 2  # about one per 4 KB page: the block went back
    assert kept and refaults < default_refaults / 100


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_what_was_kept_goes_back_when_asked():
    """return_freed_memory (the suite calls it after each test) hands the kept block back: the next step faults
    its pages in again, as without the setting, which stays on."""
    kept, refaults = faults_per_step("trim")
    assert kept and refaults > 37 * 2**20 / 4096 / 2


def test_it_can_be_turned_off():
    kept, _ = faults_per_step("keep", PAPER_ALEXNET_KEEP_MEMORY="0")
    assert not kept


def test_the_setting_asks_glibc_for_what_it_says_and_a_program_takes_it(monkeypatch):
    """In this process, with glibc's mallopt stood in for (the real one is the subprocess tests' above): the
    two thresholds at 1 GiB, kept() after, and as_program calls it unless told not to."""
    from paper_alexnet import cpu_memory
    from reproduce.common.args import as_program

    calls = []

    def mallopt(param, value):  # a function: ctypes' argtypes and restype are set on it
        calls.append((param, value))
        return 1

    class Libc:
        pass

    Libc.mallopt = staticmethod(mallopt)

    monkeypatch.setattr(cpu_memory, "_kept", False)
    monkeypatch.setattr(cpu_memory.ctypes, "CDLL", lambda name: Libc())
    monkeypatch.delenv("PAPER_ALEXNET_KEEP_MEMORY", raising=False)
    assert as_program(lambda: 7, keep_memory=False) == 7 and not calls and not cpu_memory.kept()
    assert as_program(lambda: 0) == 0 and cpu_memory.kept()
    # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (<malloc.h>)
    assert calls == [
        (-3, 1 << 30),
        (-1, 1 << 30),
    ]
    monkeypatch.setenv("PAPER_ALEXNET_KEEP_MEMORY", "0")
    assert cpu_memory.keep_freed_memory() is False
