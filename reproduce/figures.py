"""The PNG files a person looks at: matplotlib without a display, files replaced atomically; a run's curves."""

from __future__ import annotations

from paper_alexnet.atomic import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str, dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` as PNG, whole or not at all (atomic.py); close it."""
    try:
        with atomic_write(path, "wb") as handle:
            fig.savefig(handle, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)


def plot_curves(rows: list, path: str, title: str = "") -> None:
    """A run's loss and error (top-1/top-5, §6) per epoch, train and validation (curves.png)."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    left.plot(epochs, [r["val_loss"] for r in rows], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    for key, label in (("train_top1_err", "train top-1"), ("val_top1_err", "val top-1"), ("val_top5_err", "val top-5")):
        right.plot(epochs, [100 * r[key] for r in rows], "o-", label=label)
    right.set(xlabel="epoch", ylabel="error (%)", title="error", ylim=(0, 100))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
