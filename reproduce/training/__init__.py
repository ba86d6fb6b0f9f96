"""A training run of reproduce.train: its settings, recipes, what it writes, and what it says."""
