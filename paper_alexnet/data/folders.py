"""ImageFolder trees: ``ROOT/<class>/**/<image>``, listed in one order, with what zips and file managers
leave in them counted and left out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .images import DataError, is_image_file
from .splits import FileSplit


# What zips, file managers and notebooks leave in a photo folder: never a class, never data, never counted
# as unreadable; only said, once.
# macOS's zip resource forks (and every hidden folder: .ipynb_checkpoints, ...)
JUNK_FOLDERS = ("__MACOSX",)
# Windows' (and every hidden file: ._x.jpg, .DS_Store, ...)
JUNK_FILES = (
    "Thumbs.db",
    "desktop.ini",
)


def junk_kind(name: str, folder: bool) -> Optional[str]:
    """Which kind of junk ``name`` is ("__MACOSX/", "hidden folder", "hidden file", "Thumbs.db"), or None."""
    if folder:
        return (
            f"{name}/"
            if name in JUNK_FOLDERS
            else "hidden folder"
            if name.startswith(".")
            else None
        )
    return name if name in JUNK_FILES else "hidden file" if name.startswith(".") else None


@dataclass
class Scan:
    """An ImageFolder tree: its classes, image paths and labels, its classes with no images, and the junk
    left out (kind -> count)."""

    classes: list
    paths: list
    labels: list
    empty: list
    junk: dict

    def junk_note(self, root: str) -> Optional[str]:
        if not self.junk:
            return None
        kinds = ", ".join(f"{count} x {kind}" for kind, count in sorted(self.junk.items()))
        return f"{root}: left out what is not data ({kinds})"


def folder_images(folder: str, keep=lambda name, folder: junk_kind(name, folder) is None) -> list:
    """The image files under one class folder, sorted as os.walk finds them, junk left out (``keep``)."""
    found = []
    for where, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if keep(d, True))
        found += [
            os.path.join(where, f) for f in sorted(files) if keep(f, False) and is_image_file(f)
        ]
    return found


def scan(root: str) -> Scan:
    """``root/<class>/**/<image>``, with the junk of zips and file managers left out and counted."""
    if not os.path.isdir(root):
        raise DataError(f"data folder {root} does not exist")
    junk: dict = {}

    def keep(name: str, folder: bool) -> bool:
        kind = junk_kind(name, folder)
        if kind is not None:
            junk[kind] = junk.get(kind, 0) + 1
        return kind is None

    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and keep(e.name, True))
    paths, labels, empty = [], [], []
    for label, name in enumerate(classes):
        found = folder_images(os.path.join(root, name), keep)
        if not found:
            empty.append(name)
        paths += found
        labels += [label] * len(found)
    return Scan(classes, paths, labels, empty, junk)


def scan_tree(root: str) -> tuple[list, list, list, list]:
    """ImageFolder layout: (classes, paths, labels, empty classes) of ``root/<class>/**/<image>``."""
    found = scan(root)
    return found.classes, found.paths, found.labels, found.empty


def tree_split(
    name: str, root: str, classes: list | None = None
) -> tuple[list, FileSplit, list, list]:
    """(classes found, the split, notes, classes with no image files) of one ImageFolder tree."""
    found = scan(root)
    labels = found.labels
    if classes is not None:
        extra = sorted(set(found.classes) - set(classes))
        if extra:
            raise DataError(
                f"{root} has classes that the training folder lacks: {', '.join(extra[:5])}"
            )
        labels = [classes.index(found.classes[label]) for label in labels]
    notes = [
        f"warning: class {c!r} has no images in {os.path.join(root, c)}" for c in found.empty
    ] + [note for note in [found.junk_note(root)] if note]
    return found.classes, FileSplit(name, found.paths, labels), notes, found.empty
