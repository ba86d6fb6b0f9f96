"""Runnable experiments on top of paper_alexnet: ``python -m reproduce.NAME --help``.

This level holds the commands only. What they are built from lives in three subpackages:

    training/   a training run: its settings (run_config), the recipes, what it writes and what it says
    ablation/   an ablation grid's labels, tables and intervals
    common/     what every command shares: flags and exits, placement, restoring a net, figures, locks

The helpers' old import paths (``reproduce.restore``, ``reproduce.run_config``, ...) still import, as the
modules they moved to.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

# old module -> where it lives now
MOVED = {
    "run_config": "training.run_config",
    "recipes": "training.recipes",
    "run_writer": "training.run_writer",
    "run_watch": "training.alerts",
    "ablation_tables": "ablation.tables",
    "intervals": "ablation.intervals",
    "labels": "ablation.labels",
    **{
        name: f"common.{name}"
        for name in (
            "args",
            "placement",
            "restore",
            "figures",
            "npy_stream",
            "class_report",
            "run_lock",
        )
    },
}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import reproduce.OLD`` gives the module it moved to (the same object, not a copy)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module):
        pass


if not any(isinstance(finder, _Moved) for finder in sys.meta_path):
    sys.meta_path.append(_Moved())
