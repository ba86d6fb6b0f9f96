"""A grid cell's label, ``NET[+switch...][@flag=value...]``, parsed once for ablate and its tables.

``paper+no-lrn@lr=0.001``: the net ``paper``, the switch ``no-lrn`` (a net switch or a data switch such as
``no-pca``), and the setting ``lr=0.001``, which ablate hands to reproduce.train as ``--lr 0.001``.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class Label:
    text: str  # as written in the grid or in --variants
    net: str  # paper, torchvision, figure1, resnet18, ...
    switches: Tuple[str, ...]  # after '+', in order
    settings: Tuple[str, ...]  # after '@', as written (name=value)

    @classmethod
    def parse(cls, text: str) -> "Label":
        head, *settings = text.split("@")
        net, *switches = head.split("+")
        return cls(text, net, tuple(switches), tuple(settings))

    @property
    def head(self) -> str:
        """The net and its switches without the settings: figure1+tanh@lr=0.02 -> figure1+tanh."""
        return "+".join((self.net, *self.switches))
