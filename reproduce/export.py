"""A checkpoint's net as others take it: ONNX, a safetensors folder, or a checkpoint: ``python -m reproduce.export``.

    python -m reproduce.export --checkpoint bvlc_alexnet.pt --out alexnet.onnx
    python -m reproduce.export --checkpoint runs/mine/best.pt --out shared/mine          # a folder
    python -m reproduce.export --checkpoint shared/mine --out mine.pt                    # and back

A folder (``--format safetensors``, or an --out without a suffix) holds model.safetensors, mean.safetensors,
config.json and a README.md model card (paper_alexnet/shared.py): what torch.hub and Hugging Face share,
readable without running any code. The card quotes the run's result.json and the command that trained it,
found beside the checkpoint.

The graph takes the transformed crop (N x 3 x crop x crop, what the net reads after the mean image is
subtracted, §2) and returns fc8's logits. §3.3's LRN becomes ONNX's ``LRN`` operator, which (like Caffe's and
torch.nn.LocalResponseNorm) divides alpha by the window size, so the exported alpha is the paper's times n;
a per-tower LRN (§3.2) is one ``LRN`` per tower on its half of the maps. The export is checked against
onnxruntime when it is installed (``pip install onnxruntime``; the test extra has it).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from paper_alexnet import checkpoint, fused_lrn, shared
from paper_alexnet.cli import HelpFormatter
from paper_alexnet.layers import LocalResponseNorm, local_response_norm
from reproduce.common.args import (
    add_checkpoint_flag,
    named_weights,
    UsageError,
    add_format_flag,
    exit_code,
    output_format,
)
from reproduce.common.restore import restore, run_record


class _OnnxLRN(torch.autograd.Function):
    """§3.3's LRN, exported as ONNX ``LRN`` (alpha divided by size there, so given as alpha * size)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        return g.op("LRN", x, size_i=size, alpha_f=alpha * size, beta_f=beta, bias_f=k)


class OnnxLocalResponseNorm(nn.Module):
    """The same LRN as ``norm``, written for ONNX: one ``LRN`` per group of maps (tower), then joined."""

    def __init__(self, norm: LocalResponseNorm):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = (
            norm.size,
            norm.alpha,
            norm.beta,
            norm.k,
            norm.groups,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.chunk(self.groups, dim=1) if self.groups > 1 else (x,)
        out = [_OnnxLRN.apply(part, self.size, self.alpha, self.beta, self.k) for part in parts]
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]


@contextlib.contextmanager
def onnx_norms(model: nn.Module):
    """Within the block, ``model``'s LRNs are the ONNX-written ones (put back afterwards)."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LocalResponseNorm):
                setattr(parent, name, OnnxLocalResponseNorm(child))
                swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def export(model: nn.Module, crop: int, path: str, opset: int = 17) -> None:
    """Write ``model`` (on the CPU, in eval mode) to ``path`` as ONNX with a dynamic batch size."""
    example = torch.zeros(1, 3, crop, crop)
    with onnx_norms(model.cpu().eval()) as net, fused_lrn.use_eager(), torch.no_grad():
        torch.onnx.export(
            net,
            (example,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )


def check_with_onnxruntime(
    model: nn.Module, path: str, crop: int, seed: int = 0
) -> Optional[float]:
    """The largest difference between the ONNX graph's logits (onnxruntime) and the net's on random crops of
    raw-pixel scale; None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    x = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(seed)) * 60
    with torch.no_grad():
        want = model.cpu().eval()(x).numpy()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": x.numpy()})[0]
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.export",
        formatter_class=HelpFormatter,
        description=__doc__.split("\n\n")[0],
    )
    add_checkpoint_flag(parser)
    parser.add_argument(
        "--out", required=True, metavar="PATH", help="FILE.onnx, FILE.pt, or a folder (safetensors)"
    )
    add_format_flag(parser)
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    return exit_code(lambda: run(named_weights(args)))


def run(args) -> int:
    form = output_format(args.out, args.format)
    ckpt = checkpoint.load(args.checkpoint)
    if form == "safetensors":
        measured, command = run_record(args.checkpoint, ckpt.epoch)
        config = shared.write(ckpt.weights_only(), args.out, measured, command)
        meta = config["meta"]
        print(
            f"wrote {args.out}/: {ckpt.variant}, {len(ckpt.classes)} classes, {meta['num_params']:,} "
            f"parameters in {shared.WEIGHTS}, {shared.CONFIG}, {shared.CARD}"
            + (f", {shared.MEAN}" if config["mean_file"] else "")
            + (
                f"; the card quotes {len(meta['metrics'])} measured figures"
                if meta["metrics"]
                else ""
            ),
            file=sys.stderr,
        )
        return 0
    if form == "pt":
        checkpoint.save(args.out, ckpt.weights_only())
        print(
            f"wrote {args.out}: {ckpt.variant}, {len(ckpt.classes)} classes (weights only)",
            file=sys.stderr,
        )
        return 0
    args.device, args.two_gpu, args.devices = "cpu", False, None
    net = restore(args.checkpoint, args, ckpt=ckpt)
    if not hasattr(net.model, "conv1") or not hasattr(net.model, "fc8"):
        raise UsageError(f"{args.checkpoint} is a '{ckpt.variant}' net: export takes AlexNets")
    crop = net.transform.augment.crop
    export(net.model, crop, args.out, args.opset)
    error = check_with_onnxruntime(net.model, args.out, crop)
    check = (
        "onnxruntime not installed: not checked"
        if error is None
        else f"onnxruntime's logits within {error:.1e} (relative to the largest) of the net's"
    )
    print(
        f"wrote {args.out}: {ckpt.variant}, input image {crop}x{crop} after the mean is subtracted, "
        f"{len(net.classes)} logits; {check}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
