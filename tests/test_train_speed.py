"""bnnrepro bench --train: the training-step benchmark (its speed goals live in its report, not here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bnnrepro.train import speed

REPO = Path(__file__).resolve().parents[1]
TINY = speed.Protocol("tiny-mlp", ("+paper=bnn", "scale=smoke", "scale.width_mult=1", "model.hidden=[64,64]"),
                      "a tiny BNN MLP")


def test_a_protocol_is_timed_against_its_float_twin_and_split_into_phases():
    result = speed.run((TINY,), repeats=3, profile=True)
    (row,) = result["rows"]
    assert row["bnn_ms"] > 0 and row["float_fp32_ms"] > 0
    floats = [v for v in (row["float_fp32_ms"], row["float_bf16_ms"]) if v is not None]
    bnns = [v for v in (row["bnn_ms"], row["bnn_bf16_ms"]) if v is not None]
    assert row["ratio_to_fastest_float"] == pytest.approx(min(bnns) / min(floats))
    # the BNN's bf16 path is timed exactly where the float's is, on its two +-1 layers (not the first)
    assert (row["bnn_bf16_ms"] is None) == (row["float_bf16_ms"] is None)
    assert row["bnn_bf16_layers"] is None or len(row["bnn_bf16_layers"]) == 2
    assert set(row["phases_ms"]) == {"forward", "backward", "optimizer", "clipping"}
    assert row["steps_per_epoch"] == 500 and row["bnn_epoch_s"] == pytest.approx(min(bnns) * 500 / 1e3)
    # 784 -> 64 -> 64 -> 10 at batch 100: forward + weight gradient everywhere, input gradient past layer 1
    macs = 784 * 64 * 2 + 64 * 64 * 3 + 64 * 10 * 3
    assert row["bnn_gflops"] == pytest.approx(2 * 100 * macs / row["bnn_ms"] / 1e6)
    assert 0 < row["gemm_floor_ms"] and row["precision"]["used"] in ("fp32", "bf16")
    assert "GEMM/conv" in row["profile_ms"] and "quantizers" in row["profile_ms"]
    md = speed.render({**result, "command": "bnnrepro bench --train"})
    assert "| tiny-mlp | 100 |" in md and result["environment"]["cpu"] in md


def test_the_float_twin_has_no_quantizers():
    import torch

    from bnnrepro.nn import QuantLinear

    twin = speed.Stepper(TINY.overrides + speed.FLOAT_OVERRIDES, torch.device("cpu"))
    layers = [m for m in twin.model.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.weight_quantizer.kind == "identity" for m in layers)
    assert not any(m.kind == "sign" for m in twin.model.modules() if hasattr(m, "kind"))


def test_cli_rejects_an_unknown_protocol_before_timing_anything(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "bnnrepro", "bench", "--train", "--protocols", "nosuch",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown protocol(s) nosuch; allowed: quick-mlp" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "train_speed.md").exists()


def test_the_report_files_are_written(tmp_path):
    result = speed.run((TINY,), repeats=2, profile=False)
    md, js = speed.write({**result, "command": "bnnrepro bench --train"}, tmp_path)
    assert md.read_text().startswith("# Training speed") and json.loads(js.read_text())["rows"][0]["protocol"] == "tiny-mlp"
