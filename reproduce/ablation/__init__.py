"""An ablation grid (reproduce.ablate): its cells' labels, tables, charts and intervals over seeds."""
