"""Published weights by name (paper_alexnet/published.py): downloaded once from a server on 127.0.0.1 inside the
test (never the network), checked, converted, cached; refused whole when anything is wrong."""

import dataclasses
import hashlib
import os
import subprocess
import sys

import pytest
import torch

from paper_alexnet import published
from paper_alexnet.checkpoint import CheckpointError
from paper_alexnet.published import Published, WeightsError
from local_server import Server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYLOAD = bytes(range(256)) * 4096  # 1 MB


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's cache in the test's folder (torch.hub.get_dir honours $TORCH_HOME), no mirror."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(published.MIRROR_ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def served():
    servers = []

    def start(files, **kwargs):
        servers.append(Server(files, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def entry(url, data=PAYLOAD, kind="sha1", name="tiny-test"):
    digest = getattr(hashlib, kind)(data).hexdigest()
    return Published(
        name=name,
        url=url,
        checksum=f"{kind}:{digest if kind == 'sha1' else digest[:8]}",
        size_mb=len(data) / 2**20,
        variant="paper",
        input="raw",
        what="a test file",
        licence="test",
        accuracy="none",
    )


def leftovers(folder):
    return (
        sorted(name for name in os.listdir(folder) if not name.endswith(".lock"))
        if folder.exists()
        else []
    )


def test_a_download_is_checked_kept_and_then_read_without_the_server(hub, served):
    server = served({"/tiny.bin": PAYLOAD})
    weights = entry(server.url + "/tiny.bin")
    path = published.fetch(weights, progress=False)
    assert path == str(hub / "tiny.bin") and open(path, "rb").read() == PAYLOAD
    server.stop()
    assert published.fetch(weights, progress=False) == path  # the cache, no network
    assert server.gets == {"/tiny.bin": 1} and leftovers(hub) == ["tiny.bin"]


def test_a_sha256_prefix_is_checked_as_torch_hub_checks_it(hub, served):
    server = served({"/tiny.bin": PAYLOAD})
    assert (
        open(published.fetch(entry(server.url + "/tiny.bin", kind="sha256"), False), "rb").read()
        == PAYLOAD
    )


def test_a_wrong_checksum_is_refused_and_nothing_is_left(hub, served):
    server = served({"/tiny.bin": PAYLOAD})
    wrong = entry(server.url + "/tiny.bin", data=b"something else")
    with pytest.raises(WeightsError) as refused:
        published.fetch(wrong, progress=False)
    message = str(refused.value)
    assert wrong.checksum.split(":")[1] in message and hashlib.sha1(PAYLOAD).hexdigest() in message
    assert "\n" not in message and leftovers(hub) == []


def test_a_transfer_cut_halfway_leaves_no_file_that_looks_whole(hub, served):
    server = served({"/tiny.bin": PAYLOAD}, cut=True)
    with pytest.raises(WeightsError, match="could not download the tiny-test weights"):
        published.fetch(entry(server.url + "/tiny.bin"), progress=False)
    assert leftovers(hub) == []


def test_without_a_server_one_line_says_what_to_fetch_where_to_put_it_and_what_then_works(
    hub, served, capsys
):
    from reproduce import evaluate

    server = served({})
    weights = entry(server.url + "/tiny.bin")
    server.stop()
    published.register(weights)
    try:
        assert evaluate.main(["--checkpoint", "tiny-test", "--data", "synthetic"]) == 2
    finally:
        published.unregister("tiny-test")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not download the tiny-test weights")
    for part in (
        weights.url,
        weights.checksum.split(":")[1],
        str(hub / "tiny.bin"),
        "run the same command",
    ):
        assert part in err[0]
    assert leftovers(hub) == []


@pytest.mark.parametrize(
    "command, argv",
    [
        ("predict", ["cat.jpg", "--checkpoint", "tiny-test"]),
        ("features", ["--data", "synthetic", "--layers", "fc7", "--checkpoint", "tiny-test"]),
        ("visualize", ["filters", "--checkpoint", "tiny-test"]),
        ("export", ["--out", "net.onnx", "--checkpoint", "tiny-test"]),
    ],
)
def test_every_command_that_takes_a_checkpoint_takes_a_name(hub, served, command, argv, capsys):
    """Each of them asks published.resolve first: with the server gone, its one line, exit 2."""
    import importlib

    server = served({})
    server.stop()
    published.register(entry(server.url + "/tiny.bin"))
    try:
        code = importlib.import_module(f"reproduce.{command}").main(argv)
    finally:
        published.unregister("tiny-test")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "could not download the tiny-test weights" in err[0], err


def test_a_file_put_into_the_cache_by_hand_is_used_when_its_checksum_matches(hub, served):
    server = served({"/tiny.bin": PAYLOAD})
    hub.mkdir(parents=True)
    (hub / "tiny.bin").write_bytes(PAYLOAD)
    assert published.fetch(entry(server.url + "/tiny.bin"), progress=False) == str(hub / "tiny.bin")
    (hub / "tiny.bin").write_bytes(b"a broken copy")
    with pytest.raises(WeightsError, match="delete it and run the same command again"):
        published.fetch(entry(server.url + "/tiny.bin"), progress=False)
    assert server.gets == {}


def test_a_mirror_serves_every_name_under_its_published_file_name(hub, served, monkeypatch):
    mirror = served({"/weights/tiny.bin": PAYLOAD})
    monkeypatch.setenv(published.MIRROR_ENV, mirror.url + "/weights/")
    weights = entry("http://the-publisher.invalid/models/tiny.bin")
    assert published.mirrored(weights) == mirror.url + "/weights/tiny.bin"
    assert open(published.fetch(weights, progress=False), "rb").read() == PAYLOAD


FETCH_IN_A_PROCESS = """
import sys
from paper_alexnet import published
from paper_alexnet.published import Published
published.fetch(Published(name="tiny-test", url=sys.argv[1], checksum=sys.argv[2], size_mb=1, variant="paper",
                          input="raw", what="", licence="", accuracy=""), progress=False)
"""


def test_two_processes_at_once_download_once(hub, served, tmp_path):
    # the first still downloading when the second asks
    server = served({"/tiny.bin": PAYLOAD}, delay=1.0)
    weights = entry(server.url + "/tiny.bin")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-c", FETCH_IN_A_PROCESS, weights.url, weights.checksum]
    both = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [process.communicate(timeout=120)[1] for process in both]
    assert [process.returncode for process in both] == [0, 0], errors
    assert server.gets == {"/tiny.bin": 1} and leftovers(hub) == ["tiny.bin"]
    assert (
        sum(
            "waiting for another process, which downloads the tiny-test weights" in e
            for e in errors
        )
        <= 1
    )


@pytest.mark.slow
def test_torchvision_weights_by_name_equal_convert_then_load_by_path(
    hub, served, tmp_path, monkeypatch
):
    """The name path end to end, in torchvision's layout at full size (the only small thing about AlexNet is
    not its fc6), under the name "torchvision" pointed at a server here: served, sha256-checked as torch.hub
    checks it, converted once into a shared folder; then from_pretrained and torch.hub's entry (by weights= and
    by pretrained=True) give the logits reproduce.convert + loading by path give, and train --pretrained
    fine-tunes from it with the variant and input the name brings."""
    from paper_alexnet import from_pretrained
    from reproduce import convert, train
    from reproduce.training import run_config

    torch.manual_seed(0)
    source = tmp_path / "alexnet-owt.pth"
    torch.save(__import__("torchvision").models.alexnet().state_dict(), source)
    prefix = published.digest(str(source), "sha256:")[:8]
    name = f"alexnet-owt-{prefix}.pth"
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    assert convert.main([str(source), "--out", str(tmp_path / "by_path.pt")]) == 0
    net = from_pretrained(str(tmp_path / "by_path.pt"))
    want = net(net.transform.center(x))
    server = served({f"/models/{name}": str(source)})
    real = published.lookup("torchvision")
    monkeypatch.setitem(
        published._MAKERS,
        "torchvision",
        lambda: dataclasses.replace(
            real, url=f"{server.url}/models/{name}", checksum=f"sha256:{prefix}"
        ),
    )
    loads = [
        lambda: from_pretrained("torchvision"),
        lambda: from_pretrained("torchvision"),  # the cached folder: no network
        lambda: torch.hub.load(ROOT, "alexnet_torchvision", source="local", weights="torchvision"),
        lambda: torch.hub.load(ROOT, "alexnet_torchvision", source="local", pretrained=True),
    ]
    for k, load in enumerate(loads):  # one net held at a time
        net = load()
        assert torch.equal(net(net.transform.center(x)), want)
        if k == 0:
            server.stop()
    del net
    assert server.gets == {f"/models/{name}": 1}
    assert sorted(os.listdir(hub / "paper_alexnet")) == ["torchvision"]
    # the input the name states (a run settles by it before any download) is the converted weights' own
    folder = run_config.RunConfig(pretrained=str(hub / "paper_alexnet" / "torchvision"))
    assert run_config.weights_input(folder) == published.lookup("torchvision").input
    monkeypatch.setenv("PAPER_ALEXNET_CACHE", str(tmp_path / "data"))
    out = tmp_path / "tuned"
    argv = [
        "--data",
        "synthetic?classes=3&train=8&val=4",
        "--pretrained",
        "torchvision",
        "--epochs",
        "1",
    ]
    assert train.main(argv + ["-b", "4", "--workers", "0", "--quiet", "--out", str(out)]) == 0
    record = run_config.read_record(str(out))
    assert record["variant"] == "torchvision" and record["mean"] == "torchvision"
    assert record["pretrained"] == "torchvision" and record["model"]["num_classes"] == 3


def test_a_name_brings_its_variant_and_a_variant_that_contradicts_it_is_refused(
    tmp_path, monkeypatch
):
    from reproduce import train
    from reproduce.training import run_config
    from reproduce.common.args import UsageError

    def settled(*flags):
        argv = ["--data", "synthetic", "--out", str(tmp_path / "run"), *flags]
        return run_config.from_args(train.get_args_parser().parse_args(argv), argv)

    assert settled("--pretrained", "bvlc").variant == "caffe"
    assert settled("--pretrained", "torchvision").variant == "torchvision"
    assert settled("--pretrained", "bvlc", "--variant", "caffe").variant == "caffe"
    assert settled().variant == "paper"
    with pytest.raises(UsageError, match="holds a 'caffe' net, not 'paper': leave --variant out"):
        settled("--pretrained", "bvlc", "--variant", "paper")
    (tmp_path / "bvlc").mkdir()  # a folder of that name comes first: no name, the variant as given
    monkeypatch.chdir(tmp_path)
    given = run_config.RunConfig(pretrained="bvlc", defaulted=run_config.DEFAULTABLE)
    assert run_config._variant(given) == "paper"
    # read, not fetched
    with pytest.raises(CheckpointError, match="bvlc is a folder without config.json"):
        settled("--pretrained", "bvlc")


def test_list_weights_shows_every_name_with_its_source_size_checksum_licence_and_accuracy(capsys):
    from reproduce import evaluate, train

    for command in (train, evaluate):
        with pytest.raises(SystemExit) as done:
            command.main(["--list-weights"])
        assert done.value.code == 0
        listed = " ".join(capsys.readouterr().out.split())
        for weights in published.registry().values():
            for part in (
                f"{weights.name}:",
                weights.url,
                weights.checksum,
                weights.licence,
                weights.accuracy,
            ):
                assert " ".join(part.split()) in listed
        assert (
            "sha1:9116a64c0fbe4459d18f4bb6b56d647b63920377" in listed
            and "alexnet-owt-7be5be79" in listed
        )
        helped = " ".join(command.get_args_parser().format_help().split())  # --help shows them too
        assert (
            all(f"{name}:" in helped for name in published.names()) and "sha256:7be5be79" in helped
        )
