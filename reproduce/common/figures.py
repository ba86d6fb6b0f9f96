"""The PNG files a person looks at: matplotlib without a display, files replaced atomically; a run's curves."""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Iterable, List, Optional, Sequence

from paper_alexnet.atomic import atomic_write

# Fonts that draw Chinese, Japanese and Korean, as Linux, Windows and macOS ship them: each one installed is
# a fallback after DejaVu Sans (matplotlib's), so that a class name in any script is drawn, not boxes.
CJK_FONTS = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Noto Sans CJK TC", "Source Han Sans SC",
    "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Droid Sans Fallback", "Microsoft YaHei", "SimHei",
    "Microsoft JhengHei", "Yu Gothic", "Meiryo", "MS Gothic", "Malgun Gothic", "PingFang SC",
    "Hiragino Sans GB", "Hiragino Sans", "Heiti SC", "Apple SD Gothic Neo", "AppleGothic", "Arial Unicode MS",
)  # fmt: skip
INSTALL_HINT = (
    "install a CJK font (Debian/Ubuntu: apt install fonts-noto-cjk or fonts-wqy-microhei; Windows and "
    "macOS ship Microsoft YaHei and PingFang)"
)
_said: set = set()


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), with the installed CJK fonts as fallbacks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fonts = font_chain()
    # matplotlib falls back along font.family's list (a generic name is one font)
    if len(fonts) > 1:
        matplotlib.rcParams["font.family"] = fonts
    # a glyph no font has is said once, by drawable(), not once per glyph per figure
    warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
    return plt


def font_chain(installed: Optional[Iterable[str]] = None) -> List[str]:
    """DejaVu Sans, then every font of CJK_FONTS that is ``installed`` (default: matplotlib's list)."""
    installed = set(_installed() if installed is None else installed)
    return ["DejaVu Sans"] + [name for name in CJK_FONTS if name in installed]


@functools.lru_cache(maxsize=None)
def _installed() -> frozenset:
    """The font names matplotlib knows, and, when it knows no CJK font, those of the system's font files it
    has not read: its cache lists the fonts there were when it was built, not one installed since."""
    from matplotlib import font_manager

    manager = font_manager.fontManager
    names = {font.name for font in manager.ttflist}
    if not names & set(CJK_FONTS):
        known = {font.fname for font in manager.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in known:
                try:
                    manager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        names = {font.name for font in manager.ttflist}
    return frozenset(names)


def missing_glyphs(names: Sequence[str], fonts: Optional[Sequence[str]] = None) -> str:
    """The characters of ``names`` that none of ``fonts`` (default: font_chain()) can draw."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    charmaps = []
    for name in fonts or font_chain():
        path = font_manager.findfont(
            font_manager.FontProperties(family=name), fallback_to_default=False
        )
        charmaps.append(set(FT2Font(path).get_charmap()))
    wanted = {ch for text in names for ch in str(text) if not ch.isspace()}
    return "".join(sorted(ch for ch in wanted if not any(ord(ch) in cmap for cmap in charmaps)))


def drawable(names: Sequence[str]) -> None:
    """One warning, once per set of characters, when no installed font draws some of ``names``."""
    missing = missing_glyphs(names)
    if missing and missing not in _said:
        _said.add(missing)
        shown = [str(n) for n in names if any(ch in missing for ch in str(n))]
        print(
            f"warning: no installed font draws {len(missing)} characters of the class names "
            f"({', '.join(shown[:3])}{', ...' if len(shown) > 3 else ''}): they show as boxes; "
            f"{INSTALL_HINT}",
            file=sys.stderr,
        )


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
