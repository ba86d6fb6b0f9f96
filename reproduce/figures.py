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


def epoch_axis(axis, epochs) -> None:
    """Whole epochs on the x axis: every epoch as a tick for short runs (no 0.96-1.04 for one epoch), integer
    ticks for long ones."""
    values = sorted({int(e) for e in epochs})
    if 0 < len(values) <= 20:
        axis.set_xticks(values)
        if len(values) == 1:
            axis.set_xlim(values[0] - 1, values[0] + 1)
    else:
        axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_xlabel("epoch")


def _present(values) -> bool:
    """Whether a series has a value to draw (top-5 with 5 classes or fewer has none: n/a)."""
    return any(v is not None and v == v for v in values)


def curves_figure(rows: list, title: str = ""):
    """A run's loss and error (top-1/top-5, §6) per epoch, train and validation; every series with markers."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    left.plot(epochs, [r["val_loss"] for r in rows], "s-", label="validation")
    left.set(ylabel="cross-entropy loss", title="loss")
    for key, label, style in (
        ("train_top1_err", "train top-1", "o-"),
        ("val_top1_err", "val top-1", "s-"),
        ("val_top5_err", "val top-5", "^-"),
    ):
        values = [r[key] for r in rows]
        if _present(values):
            right.plot(
                epochs,
                [100 * v if v is not None else float("nan") for v in values],
                style,
                label=label,
            )
    right.set(ylabel="error (%)", title="error", ylim=(0, 100))
    for axis in (left, right):
        epoch_axis(axis, epochs)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(rows: list, path: str, title: str = "") -> None:
    """curves.png of a run (curves_figure)."""
    save(curves_figure(rows, title), path)


def runs_figure(runs: dict):
    """Several runs on one chart: training (dashed) and validation (solid) loss, and validation top-1 error
    (§6), per epoch; one colour per run, markers on every series."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    every = []
    for (label, rows), colour in zip(
        runs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 9
    ):
        epochs = [r["epoch"] for r in rows]
        every += epochs
        left.plot(
            epochs, [r["train_loss"] for r in rows], "x--", color=colour, label=f"{label}: train"
        )
        left.plot(
            epochs, [r["val_loss"] for r in rows], "o-", color=colour, label=f"{label}: validation"
        )
        right.plot(epochs, [100 * r["val_top1_err"] for r in rows], "o-", color=colour, label=label)
    left.set(ylabel="cross-entropy loss", title="loss")
    right.set(ylabel="validation top-1 error (%)", title="validation top-1 error", ylim=(0, 100))
    for axis in (left, right):
        epoch_axis(axis, every)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    fig.tight_layout()
    return fig
