"""Fixtures shared by the test files."""

import pytest


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh package cache (generated data, statistics) per test, so that no test reads another's."""
    monkeypatch.setenv("PAPER_ALEXNET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
