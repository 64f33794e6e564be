"""The end of a multirun (``bnnrepro train -m ... seed=0,1,2``): its seed aggregate, printed once
by the launching process after every job has ended, whichever launcher ran them (basic, joblib,
submitit). A Hydra callback, registered in conf/config.yaml under ``hydra.callbacks``."""
from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback

from .files import RUNS_LIST
from .frame import frame, group_lines, groups, label_keys, sweep_keys


def aggregate_lines(sweep_dir: str | Path) -> list[str]:
    """The sweep's runs (its ``runs.txt``) grouped by every config key that differs between them but
    the seed: per group, n, mean ± sample std of the test error, and the seeds."""
    listing = Path(sweep_dir) / RUNS_LIST
    if not listing.is_file():
        return []
    df = frame([listing])
    counts = df["status"].value_counts()
    by = label_keys(df, sweep_keys(df))
    head = (f"sweep {sweep_dir}: {len(df)} runs ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
            f"test error over the seeds" + (f", by {', '.join(by)}" if by else ""))
    shown = by or ["experiment", "scale"]  # one group: named by what it is
    return [head] + ["  " + line for line in group_lines(groups(df, shown), shown)]


class SeedAggregate(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        lines = aggregate_lines(config.hydra.sweep.dir)
        if lines:
            print("\n".join(lines), flush=True)
