"""Runnable experiments on top of paper_alexnet: ``python -m reproduce.NAME --help``."""
