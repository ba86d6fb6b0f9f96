"""reproduce.bench: a smoke run with tiny settings checks the table's shape (never the timings)."""

import pandas as pd
import torch

from paper_alexnet import fused_lrn
from reproduce import bench


def test_models_section_writes_one_row_per_net(tmp_path, capsys):
    path = tmp_path / "bench.csv"
    assert bench.main(["--only", "models", "-b", "2", "--repeats", "1", "--system-malloc", "--csv", str(path)]) == 0
    table = pd.read_csv(path, keep_default_na=False)
    fused = fused_lrn.applies(torch.zeros(1, 1))
    assert list(table["what"]) == (["paper", "paper two-tower"] + (["paper, LRN in torch ops"] if fused else [])
                                   + ["torchvision", "naive faithful", "paper+no-lrn"])
    lrn = table.set_index("what")["lrn"]
    assert lrn["paper"] == ("fused kernel" if fused else "torch ops") and lrn["torchvision"] == ""
    for column in ("train_images_per_s", "infer_images_per_s", "train_gflop_per_s", "utilisation",
                   "train_memory_mb", "vs_torchvision", "vs_naive", "memory_vs_torchvision"):
        assert (table[column] > 0).all(), column
    assert table.set_index("what").loc["torchvision", "vs_torchvision"] == 1.0
    printed = capsys.readouterr()
    assert "GFLOP/s" in printed.err and "freed memory returned to the system" in printed.out


def test_naive_reference_computes_the_same_lrn():
    from paper_alexnet import build_model

    torch.manual_seed(0)
    fast = build_model("paper", num_classes=10, init="he").eval()
    naive = bench.naive_reference(10).eval()
    naive.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 227, 227)
    torch.testing.assert_close(naive(x), fast(x), rtol=1e-4, atol=1e-5)


def test_bad_settings_are_one_line_errors(capsys):
    assert bench.main(["--only", "models", "-b", "0"]) == 2
    assert bench.main(["--only", "models", "--device", "cuda:9"]) == 2
    assert capsys.readouterr().err.count("error:") == 2
