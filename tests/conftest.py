"""Fixtures shared by the test files."""

import shutil

import pytest


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh package cache (generated data, statistics) per test, so that no test reads another's."""
    monkeypatch.setenv("PAPER_ALEXNET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(autouse=True)
def _free_the_disk(request, tmp_path):
    """A passed test's folder goes when it ends: the training runs leave 0.5-0.7 GB checkpoints each, and a
    whole suite's would otherwise fill a small disk before pytest's own clean-up at the end. A failed test's
    folder stays, to be looked at."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.passed:
        shutil.rmtree(tmp_path, ignore_errors=True)
