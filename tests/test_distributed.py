"""Data parallelism: torchrun with 2 CPU processes (gloo) computes what one process does on the same batches."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from paper_alexnet import distributed
from paper_alexnet.config import ConfigError
from paper_alexnet.data.loader import BatchLoader
from paper_alexnet.data.splits import ArraySplit
from data_fixtures import blank_tree
from trajectory import moved_alike

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Dropout off (its masks are per process) and the paper's SGD, whose step is linear in the gradient, at a rate
# that moves §5's init smoothly (at 0.001 the loss leaps to 3x ln(4) at step 5 of 12 on 48 of these images, and
# from there two trajectories that began 1 ulp apart are whole steps apart).
ARGS = [
    "--data",
    "synthetic?classes=4&train=16&val=8",
    "-b",
    "8",
    "--workers",
    "0",
    "--quiet",
    "--epochs",
    "2",
    "--variant",
    "paper+no-dropout",
    "--recipe",
    "paper",
    "--lr",
    "0.0001",
]
TIMING = ("images_per_s", "seconds", "data_wait_s")


def test_each_rank_reads_its_rows_of_the_same_global_batches():
    images = np.zeros((11, 256, 256, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(11)
    split = ArraySplit("train", images, np.arange(11) % 3)
    whole = [batch[:, 0, 0, 0].tolist() for batch, _ in BatchLoader(split, 4, seed=3, epoch=2)]
    shares = [
        list(BatchLoader(split, 4, seed=3, epoch=2, rank=r, world=3).global_batches())
        for r in range(3)
    ]
    for step, batch in enumerate(whole):
        # every rank knows the global size
        assert all(share[step][0] == len(batch) for share in shares)
        rows = [share[step][1][:, 0, 0, 0].tolist() for share in shares]
        # the ranks' rows make up the batch
        assert sum(rows, []) and sorted(sum(rows, [])) == sorted(batch)
        assert rows[0] == batch[0::3] and rows[1] == batch[1::3] and rows[2] == batch[2::3]
    with pytest.raises(ValueError):
        BatchLoader(split, 4, rank=2, world=2)


@pytest.fixture
def gloo_of_one(tmp_path):
    """A process group of this process alone: collectives run on gloo's worker threads, as under torchrun."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    distributed.stop()


def test_a_tensor_a_gloo_work_holds_is_held_elsewhere(gloo_of_one):
    tensors = [torch.zeros(2)]
    work = torch.distributed.all_reduce(tensors[0], async_op=True)
    work.wait()
    assert distributed.held_elsewhere(tensors) == tensors
    del work  # the work, with its reference, is gone
    deadline = time.monotonic() + 5
    while distributed.held_elsewhere(tensors) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert distributed.held_elsewhere(tensors) == []


def test_stop_outwaits_a_backend_thread_that_still_holds_a_summed_tensor(gloo_of_one, monkeypatch):
    """gloo's worker lets go of a collective's tensor after the collective returns, and takes the GIL to do
    so: a process already shutting down then aborts (SIGABRT, rank 1 of a torchrun job that ends at once).
    Here a thread stands for that worker and holds the tensor 0.3 s after the sum returns."""
    let_go = []
    real = torch.distributed.all_reduce

    def all_reduce_let_go_late(tensor, *args, **kwargs):
        real(tensor, *args, **kwargs)
        threading.Thread(
            target=lambda held: (time.sleep(0.3), let_go.append(held.shape)), args=(tensor,)
        ).start()

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce_let_go_late)
    assert distributed.all_sum([1.0, 2.0]) == [1.0, 2.0] and not let_go
    assert distributed.settle(0.05) is False  # a bounded wait, never a hang
    assert distributed.all_sum([3.0]) == [3.0]
    distributed.stop()
    assert len(let_go) == 2  # both holds were over before stop returned


def _run(args, env):
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _same_rows(a, b, exact, steps=None):
    """metrics.csv's rows, but for the timing columns: the same strings (the same processes, summing in the same
    order), or for runs that sum in another order, the losses as trajectory.py bounds the weights: 1% a step
    (the loss is a smooth function of the weights, which moved_alike compares). The errors count images, and
    one whose two best classes lie within float noise of each other may go either way: they are compared
    where the order is the same, and follow from the weights otherwise."""
    with open(a) as x, open(b) as y:
        rows = list(zip(csv.DictReader(x), csv.DictReader(y)))
    assert rows
    for x, y in rows:
        assert x["val_top5_err"] == y["val_top5_err"] == ""  # 4 classes: top-5 is n/a
        assert list(x) == list(y) and x["epoch"] == y["epoch"]
        for key in x:
            if key in TIMING or key == "val_top5_err":
                continue
            if exact:
                assert x[key] == y[key], key
            elif key.endswith("_loss"):
                assert float(x[key]) == pytest.approx(float(y[key]), rel=0.01 * steps), key


@pytest.mark.slow
def test_torchrun_two_cpu_processes_equal_one_process(tmp_path, shared_cache):
    env = dict(os.environ, PAPER_ALEXNET_CACHE=str(shared_cache), OMP_NUM_THREADS="1")
    torchrun = [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "reproduce.train",
        *ARGS,
    ]
    _run(["-m", "reproduce.train", *ARGS, "--out", str(tmp_path / "single")], env)
    log = _run(torchrun + ["--out", str(tmp_path / "ddp")], env)
    assert "x 2 processes" in log and log.count("epoch 2:") == 1  # rank 0 alone reports
    # each process drives its own pair of tower devices (here the CPU twice)
    _run(torchrun + ["--out", str(tmp_path / "ddp-towers"), "--two-gpu"], env)
    one = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)
    for name in ("ddp", "ddp-towers"):
        assert json.loads((tmp_path / name / "config.json").read_text())["processes"] == 2
        two = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
        assert one["epoch"] == two["epoch"] == 2
        moved_alike(two, one, ARGS, steps=4)  # 2 epochs of 2 batches
        _same_rows(
            tmp_path / "single" / "metrics.csv",
            tmp_path / name / "metrics.csv",
            exact=False,
            steps=4,
        )
        # best.pt's per-class files hold every validation image once: each rank's rows, gathered
        with open(tmp_path / name / "per_class.csv", newline="") as handle:
            images = [int(row["images"]) for row in csv.DictReader(handle)]
        with open(tmp_path / "single" / "per_class.csv", newline="") as handle:
            assert images == [int(row["images"]) for row in csv.DictReader(handle)]
        assert (
            sum(images) == json.loads((tmp_path / name / "config.json").read_text())["val_images"]
        )


VOTE = """
import json, sys
import numpy as np, torch
from paper_alexnet import distributed
from paper_alexnet.config import ConfigError
from paper_alexnet.data import Augment, DataStats, PaperTransform
from paper_alexnet.data.loader import BatchLoader
from paper_alexnet.data.splits import ArraySplit
from paper_alexnet.engine import StepPlace, train_one_epoch

process = distributed.from_env()
distributed.start(process, torch.device("cpu"))
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 3))
net = distributed.wrap(model, process, None)
split = ArraySplit("train", np.zeros((24, 256, 256, 3), dtype=np.uint8), np.arange(24) % 3)
stats = DataStats(np.zeros((3, 256, 256), np.float32), np.ones(3), np.eye(3))
loader = BatchLoader(split, 4, rank=process.rank, world=process.world)
asked = []
def stop():                      # only rank 1 is signalled, during its step 3 of 6
    asked.append(1)
    return process.rank == 1 and len(asked) >= 3
place = StepPlace(torch.device("cpu"), rank=process.rank, world=process.world, stop=stop)
progress = train_one_epoch(net, loader, PaperTransform(stats, Augment()), torch.optim.SGD(model.parameters(), 0.1),
                           torch.Generator().manual_seed(0), place)
with open(sys.argv[1] + f"/rank{process.rank}.json", "w") as handle:
    json.dump({"steps": progress.steps, "stopped": progress.stopped, "seen": progress.seen}, handle)
del net                          # DDP before its process group, as reproduce.train ends
distributed.barrier()
distributed.stop()
distributed.end(0)               # as reproduce.train ends under torchrun
"""


def test_a_rank_ends_with_its_status_and_its_output_but_without_the_teardown(tmp_path):
    """distributed.end: what was printed and logged is out, the exit status is the one given, and the
    interpreter's teardown (where gloo's leftover threads can abort a finished rank) does not run."""
    script = (
        "import atexit, logging, sys\n"
        "from paper_alexnet import distributed\n"
        "logging.basicConfig(filename=sys.argv[1], level=logging.INFO)\n"
        "atexit.register(lambda: print('teardown'))\n"
        "distributed._JOINED.append(1)  # as start() records a torchrun rank\n"
        "print('the work is done', end='')\n"
        "logging.getLogger('run').info('logged')\n"
        "distributed.end(5)\n"
    )
    log = tmp_path / "log.txt"
    done = subprocess.run(
        [sys.executable, "-c", script, str(log)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (5, "the work is done")
    assert "logged" in log.read_text()
    alone = subprocess.run(  # a process that never joined a group ends as sys.exit does
        [sys.executable, "-c", script.replace("distributed._JOINED.append(1)", "pass"), str(log)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (alone.returncode, alone.stdout) == (5, "the work is doneteardown\n")


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    script = tmp_path / "vote.py"
    script.write_text(VOTE)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    _run(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            str(tmp_path),
        ],
        env,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # 3 global batches of 4, not 6
    assert ranks[0] == ranks[1] == {"steps": 3, "stopped": True, "seen": 12}


# reproduce.train with the §2/§4.1 statistics made slower than the process group's timeout
SLOW_STATISTICS = """
import sys, time
from paper_alexnet import distributed
from paper_alexnet.config import ConfigError
from paper_alexnet.data import sources
from reproduce import train

computed = sources.split_stats


def slowly(*args, **kwargs):
    time.sleep({delay})
    return computed(*args, **kwargs)


sources.split_stats = slowly
distributed.end(train.as_program(train.main))
"""


@pytest.mark.slow
def test_a_stall_under_torchrun_stops_every_rank_with_one_message_and_a_checkpoint(
    tmp_path, shared_cache
):
    """A stall by construction (blank_tree: every input 0, --recipe quick's zero biases: uniform outputs), 6
    steps an epoch: the deadline is step 10, in epoch 2, and every rank stops there, exit 4. The same job
    first computes its data's statistics for longer (12 s) than a collective may wait (10 s): no collective
    waits on them, so it trains (before: rank 1's barrier timed out while rank 0 computed)."""
    env = dict(
        os.environ,
        PAPER_ALEXNET_CACHE=str(shared_cache),
        OMP_NUM_THREADS="1",
        PAPER_ALEXNET_GROUP_TIMEOUT_S="10",
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    root = blank_tree(str(tmp_path / "blank"), train=12, val=2)
    script = tmp_path / "slow_statistics.py"
    script.write_text(SLOW_STATISTICS.format(delay=12))
    args = ARGS[2:] + ["--data", f"folder:{root}", "--recipe", "quick"]
    out = tmp_path / "ddp"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            *args,
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0 and "exitcode  : 4" in done.stderr, done.stderr[-3000:]
    assert (
        done.stderr.count("stopped at step 10 of the run:") == 1
        and "AttributeError" not in done.stderr
    )
    # the rank that waited said for what, and the job says how long a collective may wait
    assert "which opens --data folder:" in done.stderr and "at most 10 s" in done.stderr
    # 6 steps an epoch: epoch 2, step 4+
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["step"] >= 4


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_the_job_resumes(
    tmp_path, shared_cache
):
    """Stopped and resumed, the job is the uninterrupted job exactly: the same two processes sum in the same
    order, and the checkpoint holds every state a step depends on."""
    env = dict(os.environ, PAPER_ALEXNET_CACHE=str(shared_cache), OMP_NUM_THREADS="1")
    args = [
        a if a != "synthetic?classes=4&train=16&val=8" else "synthetic?classes=4&train=32&val=8"
        for a in ARGS
    ]
    args += ["--on-stall", "warn"]  # §5's init may sit at chance here: watched, not stopped
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "reproduce.train",
        *args,
    ]
    _run(torchrun[1:] + ["--out", str(tmp_path / "whole")], env)
    out = tmp_path / "ddp"
    agent = subprocess.Popen(
        torchrun + ["--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not (out / "metrics.csv").exists() and agent.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    agent.send_signal(signal.SIGTERM)  # as SLURM or Kubernetes would; torchrun passes it on
    err = agent.communicate(timeout=300)[1]
    # rank 0 alone says so
    assert agent.returncode != 0 and err.count("stopped by SIGTERM") == 1, err[-3000:]
    stopped = [line for line in err.splitlines() if "stopped by SIGTERM" in line][0]
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] >= 1
    assert "on all 2 processes" in stopped, stopped  # each rank counted the same steps
    if saved["step"]:  # mid-epoch: at that step
        assert f"after step {saved['step']} of 4 of epoch 2 on all 2 processes" in stopped, stopped
    _run(torchrun[1:] + ["--out", str(out), "--resume"], env)
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    two = torch.load(out / "checkpoint.pt", weights_only=True)
    assert whole["epoch"] == two["epoch"] == 2
    for name, weight in whole["model"].items():
        assert torch.equal(two["model"][name], weight), name
    for key, state in whole["optimizer"]["state"].items():
        assert torch.equal(two["optimizer"]["state"][key]["velocity"], state["velocity"]), key
    _same_rows(tmp_path / "whole" / "metrics.csv", out / "metrics.csv", exact=True)


def test_the_group_timeout_is_read_from_its_variable_and_a_bad_value_is_refused(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.group_timeout() == 1800  # 30 min: gloo's default, NCCL's is 10
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7200")
    assert distributed.group_timeout() == 7200
    for bad in ("0", "-5", "ten", "inf", "nan"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=distributed.TIMEOUT_ENV):
            distributed.group_timeout()


def test_a_ranks_share_of_the_global_batch_is_said_and_a_small_gpu_share_is_named():
    """§5's batch stays global under torchrun: the run's line says each process's rows, and below 64 images a
    GPU that the GPUs may not pay."""
    from reproduce.train import share_note

    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert share_note(128, 8, gpu).startswith(
        "rows of each batch shared out: 16 images a process of the global batch 128; with under 64 images"
    )
    assert "8 GPUs may train little faster than one" in share_note(128, 8, gpu)
    assert (
        share_note(128, 3, cpu)
        == "rows of each batch shared out: 42-43 images a process of the global batch 128"
    )
    assert (
        share_note(1024, 8, gpu)
        == "rows of each batch shared out: 128 images a process of the global batch 1024"
    )
