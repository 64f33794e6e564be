"""The language-model loop (bnnrepro/train/lm.py) and the RNN / GRU / LSTM language models, on a
generated corpus written in the exact PTB format (one sentence per line, a leading space, ``<unk>``
tokens, lines ending in `` \\n``)."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from bnnrepro import data as datasets
from bnnrepro import models
from bnnrepro.config import ConfigError, validate
from bnnrepro.train import fit, lm
from conftest import compose

CELLS = ("lstm", "gru", "rnn")
SUBJECTS = ("the cat", "a dog", "the bird", "my <unk>")
VERBS = ("sat on", "ran to", "looked at")
OBJECTS = ("the mat", "a tree", "the house", "<unk>")


def sentence(rng: random.Random) -> str:
    # a small grammar: every sentence is subject verb object, so the next word is often predictable
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"


def write_corpus(root, sentences=(400, 40, 40), seed=0):
    folder = root / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, n in zip(("train", "valid", "test"), sentences):
        (folder / f"ptb.{split}.txt").write_text("".join(f" {sentence(rng)} \n" for _ in range(n)))
    return root


@pytest.fixture
def corpus_root(tmp_path):
    return write_corpus(tmp_path / "data")


def tiny(cell: str, root, runs_dir, *more: str) -> list[str]:
    return [f"+experiment=qnn_ptb_{cell}", f"data.root={root}", f"runs_dir={runs_dir}", "model.hidden=[32]",
            "train.bptt=12", "train.batch_size=8", "train.epochs=2", "optim.lr=0.01", "model.dropout_hidden=0.0",
            "train.progress=false", "train.num_threads=1", *more]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ data

def test_generated_corpus_reads_through_the_registry(corpus_root):
    spec = datasets.registry.get("ptb")
    assert spec.kind == "text"
    located = spec.locate(corpus_root, False)
    text = spec.read(located)
    assert {"<eos>", "<unk>", "cat", "mat"} <= set(text.vocab)
    lines = (corpus_root / "ptb" / "ptb.train.txt").read_text().splitlines()
    assert text.train.numel() == sum(len(line.split()) + 1 for line in lines)  # + <eos> per line
    eos = text.vocab.index("<eos>")
    assert int((text.valid == eos).sum()) == 40  # one <eos> per line
    assert all(len(f.md5) == 32 for f in located.values())  # each file's md5 goes into the record
    # the missing-data message names the files and is a DataError (tables say "data not available")
    with pytest.raises(datasets.DataError, match=r"ptb\.\{train,valid,test\}\.txt not found"):
        datasets.check("ptb", corpus_root / "elsewhere", download=False)


# ------------------------------------------------------------------ models

@pytest.mark.parametrize("cell", CELLS)
def test_cells_quantize_weights_and_hidden_state(cell):
    from bnnrepro.models.language_model import DEFAULT_QUANT
    from bnnrepro.quant import QuantScheme

    model = models.build(f"{cell}_lm", input_shape=(5,), num_classes=11, hidden=(16,), dropout_hidden=0.0,
                         quant=QuantScheme.from_config({**DEFAULT_QUANT, "w_bits": 4, "a_bits": 2}))
    layer = model.layers[0]
    assert layer.weight_quantizer.scale == 0.25  # AP2(1 / sqrt(16))
    for w in (layer.weight_ih, layer.weight_hh):
        q = layer.weight_quantizer(w)
        assert torch.equal(q * 32, (q * 32).round()) and q.unique().numel() <= 16
    out, state = layer(torch.randn(6, 3, 16))
    assert set(out.unique().tolist()) <= {-1.0, -0.5, 0.0, 0.5}  # 2-bit hidden state
    assert torch.equal(out[-1], state[0])
    logits, _ = model(torch.randint(0, 11, (5, 3)))
    assert logits.shape == (5, 3, 11)


def test_gru_and_rnn_float_paths_equal_torch():
    from bnnrepro.models.language_model import DEFAULT_QUANT
    from bnnrepro.quant import QuantScheme

    float_quant = QuantScheme.from_config({**DEFAULT_QUANT, "w_bits": 32, "a_bits": 32})
    x = torch.randn(4, 2, 6)
    for cell, ref in (("gru", torch.nn.GRU(6, 5)), ("rnn", torch.nn.RNN(6, 5))):
        ours = models.build(f"{cell}_lm", input_shape=(4,), num_classes=9, hidden=(5,), embed_dim=6,
                            quant=float_quant).layers[0]
        with torch.no_grad():
            ref.weight_ih_l0.copy_(ours.weight_ih)
            ref.weight_hh_l0.copy_(ours.weight_hh)
            ref.bias_ih_l0.copy_(ours.bias)
            ref.bias_hh_l0.zero_()
        out, (h,) = ours(x)
        out_ref, h_ref = ref(x)
        assert torch.allclose(out, out_ref, atol=1e-6) and torch.allclose(h, h_ref[0], atol=1e-6), cell


# ------------------------------------------------------------------ the loop's parts

class Spy(torch.nn.Module):
    """Records the state each segment starts from and the state it ends with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.given, self.returned = model, [], []

    def forward(self, tokens, state=None):
        self.given.append(state)
        logits, new = self.model(tokens, state)
        self.returned.append(new)
        return logits, new


@pytest.mark.parametrize("cell", CELLS)
def test_bptt_carries_the_detached_state_across_segments(cell):
    torch.manual_seed(0)
    spy = Spy(models.build(f"{cell}_lm", input_shape=(5,), num_classes=20, hidden=(8, 8), dropout_hidden=0.0))
    data = torch.randint(0, 20, (23, 3))  # 22 targets: segments of 5, 5, 5, 5, 2
    opt = torch.optim.SGD(spy.parameters(), lr=0.1)
    _, tokens = lm.train_epoch(spy, data, 5, opt)
    assert tokens == 22 * 3 and len(spy.given) == 5
    assert spy.given[0] is None  # each epoch starts from zeros
    for before, after in zip(spy.returned, spy.given[1:]):
        assert len(after) == 2  # one state per layer
        for layer_before, layer_after in zip(before, after):
            for t_before, t_after in zip(layer_before, layer_after):
                assert torch.equal(t_before, t_after)  # the values carry over ...
                assert t_after.grad_fn is None and not t_after.requires_grad  # ... cut from the graph
                assert t_before.grad_fn is not None


def test_gradient_norm_clipping():
    torch.manual_seed(0)
    model = models.build("lstm_lm", input_shape=(5,), num_classes=20, hidden=(8,), dropout_hidden=0.0)
    data = torch.randint(0, 20, (11, 2))
    norms = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
            norms.append(float(torch.stack(grads).norm()))
            return super().step(closure)

    lm.train_epoch(model, data, 5, Recorder(model.parameters(), lr=0.0))
    unclipped = list(norms)
    assert min(unclipped) > 0.01
    norms.clear()
    lm.train_epoch(model, data, 5, Recorder(model.parameters(), lr=0.0), clip_grad_norm=0.01)
    assert all(n <= 0.01 * (1 + 1e-4) for n in norms)


def test_evaluate_is_exp_of_mean_cross_entropy():
    torch.manual_seed(0)
    model = models.build("rnn_lm", input_shape=(4,), num_classes=7, hidden=(6,))
    data = datasets.ptb.batchify(torch.randint(0, 7, (30,)), 1)
    result = lm.evaluate(model, data, 4)
    model.eval()
    with torch.no_grad():
        logits, _ = model(data[:-1])  # one pass over the whole stream: the same as segment by segment
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), data[1:].reshape(-1))
    assert result["loss"] == pytest.approx(float(ce), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(float(ce)), rel=1e-5)
    assert result["error"] == pytest.approx(100.0 * float((logits.argmax(-1) != data[1:]).float().mean()))


# ------------------------------------------------------------------ whole runs

@pytest.mark.parametrize("cell", CELLS)
def test_smoke_run_learns(cell, corpus_root, tmp_path):
    run = fit(compose(tiny(cell, corpus_root, tmp_path / "runs", "train.epochs=2")))
    history = rows(run)
    assert [r["epoch"] for r in history] == [1, 2]
    for r in history:
        assert all(math.isfinite(r[k]) for k in ("train_perplexity", "val_perplexity", "test_perplexity"))
    vocab = len(datasets.registry.get("ptb").read(datasets.registry.get("ptb").locate(corpus_root, False)).vocab)
    assert history[-1]["val_perplexity"] < history[0]["val_perplexity"] < vocab
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["model"] == f"{cell}_lm"
    best = min(history, key=lambda r: (r["val_perplexity"], -r["epoch"]))
    assert summary["best_epoch"] == best["epoch"]
    assert summary["test_perplexity"] == best["test_perplexity"]
    assert summary["val_perplexity"] == best["val_perplexity"]
    assert summary["test_error"] == best["test_error"]  # next-word error, at the same epoch
    assert summary["effective"]["bptt"] == 12 and summary["effective"]["clip_grad_norm"] == 0.25
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    from bnnrepro import runs

    assert isinstance(runs.read_run(run), runs.Run)  # a completed record the tables can count


def test_resume_matches_the_uninterrupted_run(corpus_root, tmp_path, monkeypatch):
    args = tiny("lstm", corpus_root, tmp_path / "runs", "train.epochs=3", "model.dropout_hidden=0.3")
    full = fit(compose(args + ["run_name=full"]))
    real = lm.train_epoch
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during epoch 2
        return real(*a, **k)

    monkeypatch.setattr(lm, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(compose(args + ["run_name=cut"]))
    cut = tmp_path / "runs" / "cut"
    assert not (cut / "summary.json").exists() and len(rows(cut)) == 1
    monkeypatch.setattr(lm, "train_epoch", real)
    fit(compose([f"resume={cut}", f"data.root={corpus_root}"]))
    strip = lambda rs: [{k: v for k, v in r.items() if not k.endswith(("_s", "per_s"))} for r in rs]  # noqa: E731
    assert strip(rows(cut)) == strip(rows(full))
    a, b = (json.loads((r / "summary.json").read_text()) for r in (full, cut))
    for key in ("test_perplexity", "val_perplexity", "best_epoch", "final_test_perplexity", "epochs_done"):
        assert a[key] == b[key], key
    assert b["resumes"][0]["after_epoch"] == 1


def test_diverged_run_stops_and_says_so(corpus_root, tmp_path, monkeypatch):
    from bnnrepro.errors import TrainingDiverged

    real, calls = lm.segment_loss, []

    def nan_at_step_3(*a):
        calls.append(1)
        loss, logits, state = real(*a)
        return (loss * math.nan if len(calls) == 3 else loss), logits, state

    monkeypatch.setattr(lm, "segment_loss", nan_at_step_3)
    with pytest.raises(TrainingDiverged, match="epoch 1, step 3"):
        fit(compose(tiny("rnn", corpus_root, tmp_path / "runs", "run_name=nan")))
    summary = json.loads((tmp_path / "runs" / "nan" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["step"] == 3


# ------------------------------------------------------------------ configs

BAD = [
    (["+paper=bnn", "model.name=lstm_lm"], r"data\.name='mnist' is not a text corpus.*allowed: ptb"),
    (["+paper=bnn", "data=ptb"], r"model\.name='mlp' is a classifier.*allowed: lstm_lm, gru_lm, rnn_lm"),
    (["+experiment=qnn_ptb_lstm", "train.bptt=0"], r"train\.bptt=0 must be a positive integer"),
    (["+experiment=qnn_ptb_lstm", "train.clip_grad_norm=-1"], r"train\.clip_grad_norm=-1"),
    (["+experiment=qnn_ptb_gru", "train.loss=squared_hinge"], r"train\.loss='squared_hinge'.*allowed: cross_entropy"),
    (["+experiment=qnn_ptb_rnn", "data.val_size=100"], r"data\.val_size=100 is not used.*allowed: null"),
    (["+experiment=qnn_ptb_rnn", "train.amp=bf16"], r"train\.amp='bf16' is not used.*allowed: none"),
    (["+experiment=qnn_ptb_lstm", "model.hidden=[]"], r"model\.hidden is empty"),
    (["+experiment=qnn_ptb_lstm", "model.embed_dim=0"], r"model\.embed_dim=0 must be a positive integer"),
    (["+paper=bnn", "train.clip_grad_norm=1.0"], r"train\.clip_grad_norm=1\.0 is used by the language-model loop only"),
    (["+paper=bnn", "model.embed_dim=8"], r"model\.embed_dim=8 is not used by model 'mlp'"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_are_rejected_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(overrides))


@pytest.mark.parametrize("cell", CELLS)
def test_presets_validate_and_summary_runs(cell, capsys):
    from bnnrepro.report.commands import summary_main

    cfg = compose([f"+experiment=qnn_ptb_{cell}", "scale=smoke"])
    validate(cfg)
    assert (cfg.model.name, cfg.data.name, cfg.data.val_size, cfg.train.bptt) == (f"{cell}_lm", "ptb", None, 35)
    assert summary_main([f"+experiment=qnn_ptb_{cell}", "scale=smoke", "--no-pack"]) == 0
    assert f"{cell}_lm on ptb" in capsys.readouterr().out


def test_ptb_rows_run_their_presets_and_say_the_data_is_missing(tmp_path):
    from bnnrepro.compose import hydra_composer
    from bnnrepro.report import targets
    from bnnrepro.report.plan import compose_row, data_check

    table = next(t for t in targets.load("qnn").tables if t.id == "ptb")
    runnable = [r for r in table.rows if not r.not_reproduced]
    assert {r.id for r in runnable} == {"lstm-w2a3", "lstm-w4a4", "lstm-float", "gru", "rnn"}
    composer = hydra_composer()
    for row in runnable:
        cfg, why = compose_row(row, "smoke", composer)
        assert why is None, (row.id, why)
        cfg.data.root = str(tmp_path)  # no PTB there, as on this machine
        assert data_check(cfg).startswith("ptb: ptb.{train,valid,test}.txt not found"), row.id
    bits = {r.id: (compose_row(r, "smoke", composer)[0].quant.w_bits, compose_row(r, "smoke", composer)[0].quant.a_bits)
            for r in runnable}
    assert bits["lstm-w2a3"] == (2, 3) and bits["lstm-w4a4"] == (4, 4) and bits["lstm-float"] == (32, 32)


def test_eval_and_summary_of_a_trained_language_model(corpus_root, tmp_path, capsys):
    from bnnrepro import evaluate
    from bnnrepro.report.commands import summary_main

    run = fit(compose(tiny("gru", corpus_root, tmp_path / "runs", "train.epochs=1")))
    summary = json.loads((run / "summary.json").read_text())
    result = evaluate.run(str(run), {"data.root": str(corpus_root)})
    assert lm.eval_columns(10**6) == 10 and lm.eval_columns(7) == 3
    assert result["perplexity"] == pytest.approx(summary["test_perplexity"], rel=1e-6)
    assert result["error"] == pytest.approx(summary["test_error"])
    assert evaluate.main([str(run), f"data.root={corpus_root}", "--split", "val"]) == 0
    assert f"val perplexity {summary['val_perplexity']:.2f}" in capsys.readouterr().out
    assert summary_main([str(run), "--no-pack"]) == 0


# ------------------------------------------------------------------ real text (scripts/lm_real_text.py)

def _real_text_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "lm_real_text.py"
    spec = importlib.util.spec_from_file_location("lm_real_text", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_text_corpus_is_ptb_format_split_by_lines(tmp_path):
    script = _real_text_script()
    text = "Hello, World 42!\n\n" + "".join(f"line {i} of the text, again the text.\n" for i in range(30))
    splits = script.write_corpus(text, tmp_path / "ptb")
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [25, 3, 3]  # 31 lines: 8 / 1 / 1 of every 10
    train = (tmp_path / "ptb" / "ptb.train.txt").read_text()
    assert train.startswith(" <unk> <unk> N \n line N of the text again the text \n")  # once-seen words -> <unk>
    assert all(line.startswith(" ") and line.endswith(" ") for line in train.split("\n")[:-1])
    corpus = datasets.ptb.load_ptb(tmp_path)  # the loop's reader takes it
    assert "<unk>" in corpus.vocab and "hello" not in corpus.vocab
    # the unigram perplexity by hand: train counts over the test tokens the loop predicts (in
    # columns of `steps` tokens, each column's first token not predicted)
    from collections import Counter

    stream = lambda name: [w for ws in splits[name] for w in ws + ["<eos>"]]  # noqa: E731
    counts = Counter(stream("train"))
    full = stream("test")
    cols = lm.eval_columns(len(full))
    steps = len(full) // cols
    test = [full[c * steps + t] for c in range(cols) for t in range(1, steps)]
    assert script.scored(full) == test
    expected = math.exp(-sum(math.log(counts[w] / sum(counts.values())) for w in test) / len(test))
    assert script.unigram_perplexity(splits) == pytest.approx(expected)


@pytest.mark.slow
def test_real_text_lstm_beats_the_unigram(tmp_path, capsys):
    script = _real_text_script()
    if not script.TEXT.is_file():
        pytest.skip(f"{script.TEXT} is not here (Debian's base-files package)")
    assert script.main(["--out", str(tmp_path)]) == 0  # its defaults: 12 epochs, ~1 min a model on one thread
    out = capsys.readouterr().out
    unigram = float(out.split("unigram test perplexity ")[1].split()[0])
    for label in script.MODELS:
        ppl = float(out.split(f"{label}: test perplexity ")[1].split()[0])
        assert ppl < 0.8 * unigram, (label, ppl, unigram)  # measured: ~53 (float), ~57 (4/4) vs ~92.5
