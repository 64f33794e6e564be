"""Reports from run directories: paper-vs-reproduced tables, training curves, bit-aware summaries.

Reads run directories only (``config.yaml``, ``summary.json``, ``metrics.jsonl``, checkpoints) and
knows nothing of training internals; ``bnnrepro table`` launches missing runs through the
``bnnrepro train`` command line.

  targets   the papers' tables as data (targets/<paper>.yaml)
  collect   run directories -> completed / interrupted runs and problems
  plan      which runs reproduce a row; whether a row can run here
  launch    Hydra multiruns for missing seeds, resume of interrupted runs
  tables    per-row aggregation (pandas); render: .md / .csv / .tex; compact: paper-ready .md / .tex
  curves    training-curve PNGs; summary: bit-aware model summary
  pipeline  make_tables: scan, launch, rebuild; commands: the CLI
"""
