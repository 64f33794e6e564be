"""Shared fixtures: compose the real Hydra configs, find MNIST, isolate run directories."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def data_root() -> Path | None:
    """The MNIST root for tests: $BNNREPRO_DATA, else ../shared/data; None when neither has MNIST."""
    for candidate in (os.environ.get("BNNREPRO_DATA"), SHARED_DATA):
        if candidate and (Path(candidate) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


def fit_briefly(tmp_path_factory, overrides: list[str]) -> tuple[Path, Path]:
    """Train ``overrides`` on MNIST with the project's own loop, its runs in a fresh folder (for a
    module-scoped fixture of a trained run); (run directory, data root). Skips without MNIST."""
    root = data_root()
    if root is None:
        pytest.skip("MNIST archives not found")
    from bnnrepro.train import fit

    old = os.environ.get("BNNREPRO_RUNS")
    os.environ["BNNREPRO_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    try:
        return fit(compose(list(overrides) + ["train.progress=false", f"data.root={root}"])), root
    finally:
        if old is None:
            os.environ.pop("BNNREPRO_RUNS", None)
        else:
            os.environ["BNNREPRO_RUNS"] = old


@pytest.fixture
def mnist_root() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("MNIST archives not found (set BNNREPRO_DATA or put them in ../shared/data)")
    return root


def compose(overrides: list[str] | None = None):
    """The config `bnnrepro train <overrides>` would run with (composition only, no job)."""
    from bnnrepro.compose import compose as compose_config

    return compose_config(list(overrides or []))


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setenv("BNNREPRO_RUNS", str(path))
    return path


# --- the tally of faults and bad inputs, printed at the end of a session (`make test-faults`) ----------

# tests of other files that inject one fault each (they cannot record properties themselves)
ONE_FAULT_TESTS = ("test_truncated_last_checkpoint_falls_back_to_previous", "test_nan_loss_stops_naming_epoch_and_step")
TALLY_KEYS = ("faults", "survived", "bad_inputs", "rejected", "wrong", "runs_lost", "code_executed")


class FaultTally:
    """Adds up the properties tests record (``record_property``): ``faults`` injected, ``bad_inputs``
    tried, and the failures a hostile input may cause: ``wrong`` (accepted, or refused without a clear
    message), ``runs_lost`` (a finished run's files changed or gone), ``code_executed`` (a crafted file
    ran code). A passed test survived all its faults and clearly rejected all its bad inputs."""

    def pytest_terminal_summary(self, terminalreporter):
        totals = dict.fromkeys(TALLY_KEYS, 0)
        seen = set()
        for outcome in ("passed", "failed", "error"):
            for rep in terminalreporter.stats.get(outcome, []):
                if getattr(rep, "when", None) not in ("call", "setup") or rep.nodeid in seen:
                    continue
                props: dict = {}
                for key, value in getattr(rep, "user_properties", []):
                    props[key] = props.get(key, 0) + value
                if rep.nodeid.split("::")[-1].split("[")[0] in ONE_FAULT_TESTS:
                    props["faults"] = 1
                if not props:
                    continue
                seen.add(rep.nodeid)
                ok = outcome == "passed"
                totals["faults"] += props.get("faults", 0)
                totals["survived"] += props.get("faults", 0) if ok else props.get("faults_survived", 0)
                totals["bad_inputs"] += props.get("bad_inputs", 0)
                totals["rejected"] += props.get("bad_inputs", 0) if ok else 0
                totals["wrong"] += props.get("wrong", 0) if "wrong" in props else (
                    0 if ok else props.get("bad_inputs", 0))
                for key in ("runs_lost", "code_executed"):
                    totals[key] += props.get(key, 0)
        if not any(totals.values()):
            return
        terminalreporter.section("faults and bad inputs")
        terminalreporter.write_line(
            f"faults injected {totals['faults']}, survived {totals['survived']}; "
            f"bad inputs tried {totals['bad_inputs']}, clearly rejected {totals['rejected']}, "
            f"wrong {totals['wrong']}; runs lost {totals['runs_lost']}; code executed {totals['code_executed']}")


def pytest_configure(config):
    config.pluginmanager.register(FaultTally(), "bnnrepro-fault-tally")
