"""Test-time distortion sweeps (Merolla et al.): each distortion's statistics, effective bits, the
checkpoint left untouched, the CSV / Markdown / PNG outputs, and bad input failing fast."""
import hashlib
import math

import pandas as pd
import pytest
import torch

from bnnrepro.robustness import commands
from bnnrepro.robustness.claims import write_claims
from bnnrepro.robustness.distortions import DISTORTIONS, DistortionOptions, get_distortion, layer_stat
from bnnrepro.robustness.effective_bits import capacity_bits, effective_bits, sigma_for_bits
from bnnrepro.robustness.report import tolerance_level
from bnnrepro.runs import discover
from bnnrepro.robustness.evaluation import recalibrate_bn
from bnnrepro.robustness.sweep import SweepOptions, draw_seed, sweep_run
from bnnrepro.robustness.weights import DistortableCopy
from bnnrepro.train import fit, load_model
from conftest import compose

OPTS = DistortionOptions()


def _weights(shape=(300, 400), mean=0.05, std=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * std + mean


def _gen(seed=1):
    return torch.Generator().manual_seed(seed)


# --- distortions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["std", "rms", "max", "mean_abs"])
def test_additive_noise_has_the_asked_std_relative_to_the_layer_scale(scale):
    w = _weights()
    d = DISTORTIONS["additive"].apply(w, 0.5, _gen(), DistortionOptions(sigma_scale=scale))
    noise = d - w
    assert float(noise.std()) == pytest.approx(0.5 * float(layer_stat(w, scale)), rel=0.01)
    assert abs(float(noise.mean())) < 0.01 * float(layer_stat(w, scale))


def test_multiplicative_noise_is_relative_to_each_weight():
    w = _weights()
    d = DISTORTIONS["multiplicative"].apply(w, 0.3, _gen(), OPTS)
    ratio = d / w - 1
    assert float(ratio.std()) == pytest.approx(0.3, rel=0.01) and abs(float(ratio.mean())) < 0.005


def test_binarize_replaces_the_asked_fraction_by_a_scaled_sign():
    w = _weights()
    w[0, 0] = 0.0
    full = DISTORTIONS["binarize"].apply(w, 1.0, _gen(), OPTS)
    rms = float(w.pow(2).mean().sqrt())
    assert torch.allclose(full.abs(), torch.full_like(w, rms))
    assert torch.equal(full > 0, w >= 0)  # sign(0) = +1
    mean_abs = DISTORTIONS["binarize"].apply(w, 1.0, _gen(), DistortionOptions(binary_scale="mean_abs"))
    assert torch.allclose(mean_abs.abs(), w.abs().mean().expand_as(w))
    part = DISTORTIONS["binarize"].apply(w, 0.3, _gen(), OPTS)
    changed = (part != w).float().mean()
    assert float(changed) == pytest.approx(0.3, abs=0.01)
    assert torch.equal(DISTORTIONS["binarize"].apply(w, 0.0, _gen(), OPTS), w)


def test_power_interpolates_identity_and_binarize_keeping_the_layer_scale():
    w = _weights()
    power = DISTORTIONS["power"]
    assert torch.allclose(power.apply(w, 1.0, None, OPTS), w, atol=1e-6)
    assert torch.allclose(power.apply(w, 0.0, None, OPTS), DISTORTIONS["binarize"].apply(w, 1.0, None, OPTS))
    half = power.apply(w, 0.5, None, OPTS)
    assert float(half.pow(2).mean().sqrt()) == pytest.approx(float(w.pow(2).mean().sqrt()), rel=1e-5)
    assert torch.equal(torch.sign(half), torch.sign(w))
    # closed form: sign(w) |w / max|w||^beta, times the factor that restores the rms
    v = torch.tensor([-2.0, -0.5, 0.5, 2.0])
    shape = torch.tensor([-1.0, -0.5, 0.5, 1.0])
    expected = shape * (v.pow(2).mean().sqrt() / shape.pow(2).mean().sqrt())
    assert torch.allclose(power.apply(v, 0.5, None, OPTS), expected)


def test_clip_bounds_the_layer_at_a_fraction_of_its_max():
    w = _weights()
    d = DISTORTIONS["clip"].apply(w, 0.4, None, OPTS)
    bound = 0.4 * float(w.abs().max())
    assert float(d.abs().max()) == pytest.approx(bound)
    inside = w.abs() <= bound
    assert torch.equal(d[inside], w[inside])


def test_draws_are_reproducible_and_independent():
    w = _weights()
    add = DISTORTIONS["additive"]
    a = add.apply(w, 0.5, _gen(draw_seed(0, "additive", 0.5, 0)), OPTS)
    b = add.apply(w, 0.5, _gen(draw_seed(0, "additive", 0.5, 0)), OPTS)
    c = add.apply(w, 0.5, _gen(draw_seed(0, "additive", 0.5, 1)), OPTS)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert draw_seed(0, "additive", 0.5, 0) != draw_seed(0, "multiplicative", 0.5, 0)


@pytest.mark.parametrize("noise,levels,message", [
    ("additive", [0.1, -0.2], "additive needs sigma >= 0, got -0.2"),
    ("multiplicative", [float("nan")], "multiplicative needs sigma >= 0"),
    ("binarize", [1.5], "binarize needs a fraction 0 <= p <= 1, got 1.5"),
    ("power", [-1], "power needs beta >= 0"),
    ("clip", [0], "clip needs a threshold c > 0, got 0"),
])
def test_bad_levels_name_the_noise_and_the_allowed_range(noise, levels, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        get_distortion(noise).check_levels(levels)


def test_unknown_noise_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="--noise 'gaussian' is unknown; allowed: additive, multiplicative, "
                                         "binarize, power, clip"):
        get_distortion("gaussian")


# --- effective bits -------------------------------------------------------------------------------

def test_capacity_formula():
    assert capacity_bits(1.0) == 0.5 and capacity_bits(3.0) == 1.0 and capacity_bits(0.0) == 0.0
    assert capacity_bits(math.inf) == math.inf
    assert sigma_for_bits(0.68) == pytest.approx(0.7989, abs=1e-4)  # the paper's 0.68 bits: SNR 1.567
    assert capacity_bits(1 / sigma_for_bits(0.68) ** 2) == pytest.approx(0.68)


def test_effective_bits_of_additive_and_multiplicative_noise():
    a, b = _weights((50, 60), std=0.3), _weights((10, 20), std=2.0, seed=3)
    for sigma in (0.25, 0.8, 2.0):  # sigma relative to each layer's std: the same SNR in every layer
        assert effective_bits("additive", sigma, [a, b]) == pytest.approx(0.5 * math.log2(1 + sigma ** -2))
    assert effective_bits("additive", 0.0, [a]) == math.inf
    assert effective_bits("binarize", 1.0, [a]) is None and effective_bits("power", 0.5, [a]) is None
    # max scale: the SNR differs per layer; the figure is the size-weighted mean
    per = [0.5 * math.log2(1 + float(w.var(unbiased=False)) / (0.5 * float(w.abs().max())) ** 2) for w in (a, b)]
    got = effective_bits("additive", 0.5, [a, b], DistortionOptions(sigma_scale="max"))
    assert got == pytest.approx((per[0] * a.numel() + per[1] * b.numel()) / (a.numel() + b.numel()))
    m = _weights(mean=0.0)
    snr = float(m.var(unbiased=False)) / (0.5 ** 2 * float(m.pow(2).mean()))
    assert effective_bits("multiplicative", 0.5, [m]) == pytest.approx(0.5 * math.log2(1 + snr))
    # the formula's SNR is the measured one
    d = DISTORTIONS["additive"].apply(m, 0.7, _gen(), OPTS)
    measured = float(m.var(unbiased=False)) / float((d - m).pow(2).mean())
    assert capacity_bits(measured) == pytest.approx(effective_bits("additive", 0.7, [m]), rel=0.02)


def test_tolerance_level_interpolates():
    levels = torch.tensor([0.0, 0.5, 1.0, 1.5]).numpy()
    errors = torch.tensor([2.0, 2.5, 3.5, 10.0]).numpy()
    assert tolerance_level(levels, errors, 2.0, 1.0) == pytest.approx(0.75)
    assert tolerance_level(levels, errors + 5, 2.0, 1.0) != tolerance_level(levels, errors + 5, 2.0, 1.0)  # nan
    betas = torch.tensor([1.0, 0.5, 0.0]).numpy()
    assert tolerance_level(betas, torch.tensor([1.0, 1.5, 1.8]).numpy(), 1.0, 1.0, True) == 0.0


# --- sweeps of real (tiny) trained runs -----------------------------------------------------------

TINY = ["scale=smoke", "scale.train_subset=500", "scale.epochs=1", "train.progress=false", "train.num_threads=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import data_root

    root = data_root()
    if root is None:
        pytest.skip("MNIST archives not found (set BNNREPRO_DATA or put them in ../shared/data)")
    runs = tmp_path_factory.mktemp("runs")
    out = {}
    for projection in ("none", "sign"):
        cfg = compose([f"+experiment=merolla_{projection}", *TINY, f"data.root={root}", f"runs_dir={runs}"])
        out[projection] = fit(cfg)
    (runs / "runs.txt").write_text("".join(f"{p}\n" for p in out.values()))
    return {"root": root, "runs": runs, **out}


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cli_sweep_writes_csv_md_png_and_leaves_checkpoints_untouched(trained, tmp_path, capsys):
    checkpoints = [r / name for r in (trained["none"], trained["sign"]) for name in ("best.pt", "last.pt")]
    before = {p: _md5(p) for p in checkpoints}
    out = tmp_path / "out"
    # the noise list ends at the run: `--noise a b RUN` works as written
    code = commands.main(["--noise", "additive", "binarize", str(trained["runs"]), "--draws", "3",
                          "--out", str(out), "--quiet", f"data.root={trained['root']}"])
    assert code == 0, capsys.readouterr().err
    assert {p: _md5(p) for p in checkpoints} == before
    for noise, n_levels in (("additive", 10), ("binarize", 9)):
        df = pd.read_csv(out / f"robustness_{noise}.csv")
        assert len(df) == 2 * n_levels  # one row per run x level
        assert set(df["projection"]) == {"none", "sign"}
        for column in ("run", "projection", "noise", "level", "error_mean", "error_std", "draws",
                       "effective_bits", "clean_error", "train_seed"):
            assert column in df.columns
        random = df["level"].map(DISTORTIONS[noise].random)
        assert (df.loc[random, "draws"] == 3).all() and (df.loc[~random, "draws"] == 1).all()
        assert (df.loc[~random, "error_std"] == 0).all()
        draws = pd.read_csv(out / f"robustness_{noise}_draws.csv")
        assert len(draws) == df["draws"].sum()
        md = (out / f"robustness_{noise}.md").read_text()
        assert "| level |" in md and "none" in md and "sign" in md
        assert (out / f"robustness_{noise}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    additive = pd.read_csv(out / "robustness_additive.csv")
    bits = additive[additive["level"] == 0.8]["effective_bits"]
    assert bits.to_numpy() == pytest.approx([0.5 * math.log2(1 + 0.8 ** -2)] * 2)
    # the default sweep distorts the hidden weights: the float net's undistorted level is the trained
    # net; the sign net's is its real weights, another net
    clean = additive[additive["level"] == 0.0].set_index("projection")
    assert clean.loc["none", "error_mean"] == clean.loc["none", "trained_error"] == clean.loc["none", "trained_test_error"]
    assert clean.loc["sign", "error_mean"] != clean.loc["sign", "trained_error"]
    assert clean.loc["sign", "trained_error"] == clean.loc["sign", "trained_test_error"]
    # ... and binarizing them (rms scale) gives back exactly the sign-trained net: a no-op, flagged
    binarize = pd.read_csv(out / "robustness_binarize.csv").set_index(["projection", "level"])
    assert binarize.loc[("sign", 1.0), "error_mean"] == binarize.loc[("sign", 1.0), "trained_error"]
    assert binarize.loc[("sign", 1.0), "noop"] and not binarize.loc[("none", 1.0), "noop"]
    assert commands.main(["--claims", str(out)]) == 0
    claims = (out / "claims.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6."):
        assert heading in claims
    assert "Not tested: no such sweep." in claims  # a missing sweep (power) says so
    assert "| sign | 1 | – (the trained net's own weights) | no-op by construction (not counted) |" in claims
    # the same claims wherever written; the CSVs are named relative to claims.md when beside it
    assert write_claims([out], tmp_path / "elsewhere").read_text().replace(f"{out}/", "") == claims


def test_sweep_levels_draws_and_hidden_weights(trained):
    opts = SweepOptions(levels=(0.0, 0.5), draws=2, progress=False, data_root=str(trained["root"]))
    rows = sweep_run(trained["sign"], ["multiplicative"], opts)
    assert [(r["level"], r["draw"]) for r in rows] == [(0.0, 0), (0.5, 0), (0.5, 1)]
    assert {r["weights"] for r in rows} == {"hidden"}
    # hidden weights rescaled to rms 1 and binarized with the rms scale: exactly the sign-trained net
    opts = SweepOptions(levels=(1.0,), progress=False, data_root=str(trained["root"]))
    (row,) = sweep_run(trained["sign"], ["binarize"], opts)
    assert row["error"] == row["trained_test_error"] == row["trained_error"] and row["noop"]


def test_the_default_sweep_touches_the_hidden_weights_and_flags_no_ops(trained):
    """A sign-trained net: power at beta = 1 of its hidden weights is the net computing with its
    real weights, not its clean (trained) error; binarizing its effective weights is the identity,
    flagged as a no-op by construction (and never so for the float net)."""
    base = dict(progress=False, data_root=str(trained["root"]))
    (power,) = sweep_run(trained["sign"], ["power"], SweepOptions(levels=(1.0,), **base))
    assert power["weights"] == "hidden" and not power["noop"]
    assert power["error"] != power["trained_error"]
    rows = sweep_run(trained["sign"], ["binarize"], SweepOptions(levels=(0.5, 1.0), draws=2, weights="effective",
                                                                 **base))
    assert all(r["noop"] and r["error"] == r["trained_error"] for r in rows)
    assert all(math.isinf(r["effective_bits"]) for r in rows)  # no quantization error at all
    rows = sweep_run(trained["none"], ["binarize"], SweepOptions(levels=(1.0,), weights="effective", **base))
    assert not rows[0]["noop"] and 0 < rows[0]["effective_bits"] < 5


def test_bitflip_at_zero_is_the_clean_net_and_flips_the_asked_fraction(trained):
    w = torch.randn(400, 500)
    flipped = DISTORTIONS["bitflip"].apply(w, 0.1, _gen(), OPTS)
    changed = (flipped != w)
    assert torch.equal(flipped.abs(), w.abs()) and torch.equal(flipped[changed], -w[changed])
    assert abs(changed.float().mean().item() - 0.1) < 0.005
    assert torch.equal(DISTORTIONS["bitflip"].apply(w, 0.0, _gen(), OPTS), w)
    # p = 0 on the effective weights: the trained net's predictions exactly
    opts = SweepOptions(levels=(0.0,), weights="effective", progress=False, data_root=str(trained["root"]))
    (row,) = sweep_run(trained["sign"], ["bitflip"], opts)
    assert row["error"] == row["trained_error"] and row["noop"]


def test_bn_recalibration_is_the_average_of_batch_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3, momentum=0.1)).eval()
    x = torch.randn(300, 5) * 2 + 1
    recalibrate_bn(model, x, batch_size=100)
    bn = model[1]
    with torch.no_grad():
        h = model[0](x).view(3, 100, 3)
    assert torch.allclose(bn.running_mean, h.mean(1).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, h.var(1, unbiased=True).mean(0), atol=1e-5)
    assert not bn.training and bn.momentum == 0.1


def test_sweep_with_bn_recalibration(trained):
    opts = SweepOptions(levels=(0.0, 1.0), bn_recalibrate=500, progress=False, data_root=str(trained["root"]))
    rows = sweep_run(trained["none"], ["binarize"], opts)
    assert [r["bn_recalibrate"] for r in rows] == [500, 500]
    assert 0 < rows[0]["clean_error"] < 60 and rows[1]["error"] >= 0


def test_distortion_acts_on_a_copy(trained):
    model, _ = load_model(trained["none"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = DistortableCopy(model)
    net.set(DISTORTIONS["additive"], 1.0, _gen(), OPTS)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not torch.equal(net.layers[0].weight, before["1.weight"])


def test_run_discovery(trained, tmp_path):
    both = [trained["none"], trained["sign"]]
    assert discover([trained["runs"]]) == both  # runs.txt
    assert discover([trained["runs"] / "runs.txt"]) == both
    (trained["runs"] / "runs.txt").rename(tmp_path / "runs.txt")
    try:
        assert sorted(discover([trained["runs"]])) == sorted(both)  # a folder of run directories
    finally:
        (tmp_path / "runs.txt").rename(trained["runs"] / "runs.txt")
    assert discover([trained["sign"], trained["sign"] / "best.pt", trained["sign"]]) == [
        trained["sign"], trained["sign"] / "best.pt"]


# --- bad input fails fast, with one line naming the problem ----------------------------------------

@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model or data fails the test: bad input must be caught before."""
    import bnnrepro.robustness.evaluation as evaluation
    import bnnrepro.robustness.sweep as sweep

    def boom(*a, **k):
        raise AssertionError("loaded a model or data before rejecting bad input")

    monkeypatch.setattr(sweep, "load_model", boom)
    monkeypatch.setattr(evaluation.datasets, "load", boom)


def _run_dir_without_checkpoint(tmp_path):
    run = tmp_path / "crashed"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    return run


@pytest.mark.parametrize("args,message", [
    (["--noise", "gaussian"], "--noise 'gaussian' is unknown; allowed: additive, multiplicative"),
    (["--noise", "additive", "--levels", "0.1", "-0.5"], "additive needs sigma >= 0, got -0.5"),
    (["--noise", "additive", "--levels", "0,x"], "must be numbers"),
    (["--noise", "additive", "binarize", "--levels", "0.5"], "--levels applies to one --noise"),
    (["--levels", "0.5"], "--noise is required"),
    (["--noise", "additive"], "no runs given"),
    (["--noise", "additive", "--draws", "0"], "--draws 0 must be a positive integer"),
    (["--noise", "additive", "--weights", "binary"], "--weights 'binary' is unknown; allowed: hidden, effective"),
    (["--noise", "additive", "--sigma-scale", "var"], "sigma scale 'var' is unknown; allowed: std"),
    (["--noise", "additive", "--bogus"], "unrecognized arguments: --bogus"),
    (["--noise", "additive", "/nonexistent/run"], "/nonexistent/run: no such run directory"),
    (["--noise", "additive", "CRASHED"], "has no checkpoint (best.pt or last.pt)"),
    (["--noise", "additive", "EMPTY"], "holds no runs.txt and no run directories"),
    (["--noise", "additive", "multiplicatve"], "'multiplicatve' is neither a run nor a noise; did you mean"),
    (["--noise", "additive", "data.rot=x"], "unknown config key `data.rot`; did you mean `data.root`?"),
    (["--noise", "additive", "device=tpu"], "device='tpu' is unknown; allowed: cpu, cuda, auto"),
    (["--noise", "additive", "train.num_threads=x"], "train.num_threads='x'"),
    (["--noise", "additive", "run=X"], "runs are positional"),
])
def test_bad_input_fails_fast_with_one_line(args, message, tmp_path, capsys, no_loading):
    crashed, empty = _run_dir_without_checkpoint(tmp_path), tmp_path / "e"
    empty.mkdir()
    args = [a.replace("CRASHED", str(crashed)).replace("EMPTY", str(empty)) for a in args]
    if not any(a.startswith(("/", "--runs")) for a in args) and message != "no runs given":
        args += [str(tmp_path)]  # the bad option must be caught before the runs are looked at
    code = commands.main(args + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("bnnrepro: error: robustness: ") and "\n" not in err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_fails_before_the_sweep(tmp_path, capsys, no_loading):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"not read before the output folder is checked")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    code = commands.main(["--noise", "additive", str(run), "--out", str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "is not writable" in err and str(blocker / "out") in err


def _draws(projection, run, excess, noise="additive", levels=(0.5, 1.0), trained=2.0, noop=False,
           weights="hidden"):
    return [{"run": run, "projection": projection, "dataset": "mnist", "scale": "quick", "noise": noise,
             "weights": weights, "bn_recalibrate": 0, "level": level, "draw": d, "trained_error": trained,
             "clean_error": trained, "error": trained + excess + 0.1 * d, "noop": noop, "effective_bits": 1.0,
             "source": "x.csv"}
            for level in (0.0, *levels) for d in range(1 if level == 0 else 3)]


def test_claims_verdicts_follow_the_interval_and_never_count_no_ops():
    from bnnrepro.robustness.claims import claims_markdown

    rows = []
    for seed in range(3):
        rows += _draws("none+scaled", f"b{seed}", 10.0 + seed)
        rows += _draws("sign", f"s{seed}", 4.0 + seed)                 # clearly less: holds
        rows += _draws("power", f"p{seed}", 9.0 + 2 * seed)            # overlapping: not shown
        rows += _draws("stochastic_binary", f"q{seed}", 20.0 + seed)   # clearly more: contradicted
        rows += _draws("sign", f"s{seed}", 0.0, noise="binarize", levels=(1.0,), noop=True, weights="effective")
        rows += _draws("none+scaled", f"b{seed}", 30.0, noise="binarize", levels=(1.0,), weights="effective")
    md = claims_markdown(pd.DataFrame(rows))
    section = md.split("## 1.")[1].split("## 2.")[0]
    line = {p: next(l for l in section.splitlines() if l.startswith(f"| {p} vs none+scaled"))
            for p in ("sign", "power", "stochastic_binary")}
    assert line["sign"].endswith("| **holds** |")
    assert line["power"].endswith("| not shown |")
    assert line["stochastic_binary"].endswith("| **contradicted** |")
    assert "holds for 1 of 3 comparisons, contradicted by 1" in section
    binarize = md.split("## 3.")[1].split("## 4.")[0]
    assert "| sign | 3 | – (the trained net's own weights) | no-op by construction (not counted) |" in binarize
    assert claims_markdown(pd.DataFrame(rows)) == md  # the bootstrap is seeded by its key: same file


def test_claims_need_three_nets_a_side():
    from bnnrepro.robustness.claims import claims_markdown

    rows = _draws("none+scaled", "b0", 10.0) + _draws("sign", "s0", 1.0) + _draws("sign", "s1", 1.5)
    section = claims_markdown(pd.DataFrame(rows)).split("## 1.")[1].split("## 2.")[0]
    assert "| sign vs none+scaled |" in section and "not shown (n < 3)" in section
    assert "**holds**" not in section


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_agreement():
    import numpy as np

    from bnnrepro.robustness import statistics as st

    spread = [{1.0: np.array([x, x + 1.0])} for x in (0.0, 5.0, 10.0)]
    tight = [{1.0: np.array([x, x + 0.01])} for x in (5.0, 5.01, 5.02)]
    a, b = st.curve_interval(spread, "k"), st.curve_interval(tight, "k")
    assert a.low <= a.mean <= a.high and b.low <= b.mean <= b.high
    assert (a.high - a.low) > 50 * (b.high - b.low)
    assert st.curve_interval(spread, "k") == a  # seeded by the key
    diff = st.curve_difference(tight, [{1.0: np.array([0.0, 0.01])}] * 3, "d")
    assert diff.excludes_zero() and diff.mean == pytest.approx(5.015 - 0.005)
    assert st.crossing(np.array([0.0, 0.1, 0.3]), np.array([0.0, 1.0, 3.0]), 2.0) == pytest.approx(0.2)


def test_crossing_interval_interpolates_in_log_p_and_says_when_it_is_not_reached():
    import numpy as np

    from bnnrepro.robustness import statistics as st

    levels = np.array([0.0, 0.001, 0.01, 0.1])
    # from 0.001 (excess 1) to 0.01 (excess 3): the threshold 2 is half way in log p
    assert st.crossing(levels, np.array([0.0, 1.0, 3.0, 9.0]), 2.0, log=True) == pytest.approx(10 ** -2.5)
    assert st.crossing(levels, np.array([0.0, 1.0, 3.0, 9.0]), 2.0) == pytest.approx(0.0055)
    assert st.crossing(levels, np.array([5.0, 6.0, 7.0, 8.0]), 2.0) == 0.0   # already there undistorted
    assert math.isnan(st.crossing(levels, np.array([0.0, 0.1, 0.2, 0.3]), 2.0))
    runs = [{0.0: np.array([0.0]), 0.01: np.array([1.0, 1.2]), 0.1: np.array([x, x])} for x in (1.5, 3.0, 8.0)]
    ci = st.crossing_interval(runs, 2.0, "k", log=True)
    assert 0.01 < ci.mean < 0.1 and ci.low <= ci.mean and math.isinf(ci.high)  # some replicates never double


def test_intervals_of_three_seeds_are_t_intervals_not_percentiles():
    import numpy as np
    from scipy.stats import t

    from bnnrepro.robustness import statistics as st

    values = (1.0, 2.0, 6.0)
    runs = [{1.0: np.array([x])} for x in values]   # deterministic levels: only the seeds vary
    ci = st.curve_interval(runs, "k")
    half = t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    assert ci.mean == pytest.approx(3.0) and (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.05)
    assert math.isnan(st.curve_interval(runs[:1], "k").low)  # one seed: no interval
