"""The one command-line grammar: a real --help everywhere, config values as key=value with the
nearest valid key for a typo, list flags that stop at a run, --cfg job's effective values, shell
completion in bash and zsh, and report folders outside the tracked results/."""
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnnrepro import cli, commandline
from bnnrepro.compose import check_overrides
from bnnrepro.errors import ConfigError, UsageError

BIN = Path(sys.executable).parent


def _main(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------- --help

@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_has_a_real_help(command, capsys):
    code, out, err = _main([command, "--help"], capsys)
    assert code == 0, err
    assert out.startswith("usage: bnnrepro ") and command in out.splitlines()[0]
    assert len(out.splitlines()) > 5


def test_eval_help_from_the_console_script():
    out = subprocess.run([str(BIN / "bnnrepro"), "eval", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage: bnnrepro eval" in out.stdout and "--engine {torch,packed}" in out.stdout
    assert "data.root=..." in out.stdout


def test_bad_usage_is_one_line_exit_2(capsys):
    for argv, message in ((["eval"], "eval: the following arguments are required: RUN"),
                          (["pack", "x", "--bogus"], "pack: unrecognized arguments: --bogus"),
                          (["trian"], "unknown command 'trian'; did you mean 'train'?"),
                          (["completion", "fish"], "usage: bnnrepro completion bash|zsh")):
        code, _, err = _main(argv, capsys)
        assert code == 2 and err.startswith("bnnrepro: error: ") and err.count("\n") == 1, (argv, err)
        assert message in err, err


# ---------------------------------------------------------------------------------- one spelling

@pytest.mark.parametrize("argv, message", [
    (["eval", "RUN", "--data-root", "x"], "eval: --data-root is gone; write data.root=DIR"),
    (["eval", "RUN", "split=val"], "eval: split= is not a config key; write --split val"),
    (["eval", "RUN", "data.rot=x"], "unknown config key `data.rot`; did you mean `data.root`?"),
    (["eval", "RUN", "model.hidden=[1]"], "`model.hidden` cannot be set here; this command takes data.root="),
    (["eval", "RUN", "train.eval_batch_size=many"], "train.eval_batch_size='many'"),
    (["compare", "RUN", "--data-root", "x"], "--data-root is gone; write data.root=DIR"),
    (["pack", "RUN", "-o", "x.bnn"], "pack: -o is gone; write --out FILE"),
    (["bench", "--out-dir", "x"], "bench: --out-dir is gone; write --out DIR"),
    (["table", "bnn", "--runs-dir", "x"], "table: --runs-dir is gone; write runs_dir=DIR"),
    (["table", "bnn", "--threads", "2"], "table: --threads is gone; write train.num_threads=N"),
    (["robustness", "--noise", "additive", "--runs", "RUN"], "--runs is gone"),
    (["robustness", "--noise", "additive", "RUN", "--device", "cpu"], "--device is gone; write device=cpu|cuda|auto"),
    (["robustness", "--noise", "additive", "RUN", "--no-plot"], "--no-plot is gone; write --no-figures"),
])
def test_old_spellings_fail_with_the_new_one(argv, message, tmp_path, capsys):
    argv = [str(tmp_path) if a == "RUN" else a for a in argv]
    code, _, err = _main(argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


# ---------------------------------------------------------------------------------- typos

def test_train_typos_fail_before_hydra_with_the_nearest_key(capsys, runs_dir, monkeypatch):
    import bnnrepro.cli as cli_module

    monkeypatch.setattr(cli_module, "_hydra_main", lambda *a: pytest.fail("Hydra ran on a typo"))
    code, _, err = _main(["train", "+paper=bnn", "+model.hiden=[10]"], capsys)
    assert code == 2
    assert "unknown config key `model.hiden` (added with +); did you mean `model.hidden`?" in err
    code, _, err = _main(["train", "+paper=bnn", "optim.lrr=1"], capsys)
    assert code == 2 and "unknown config key `optim.lrr`; did you mean `optim.lr`?" in err
    code, _, err = _main(["train", "epochs=3"], capsys)
    assert code == 2 and "did you mean `train.epochs`?" in err
    code, _, err = _main(["train", "+paper=bnm"], capsys)
    assert code == 2 and "did you mean `+paper=bnn`?" in err
    assert not runs_dir.exists()


@pytest.mark.parametrize("override", ["+paper=bnn", "+experiment=bnn_mnist_torch7", "scale=quick",
                                      "quant.weight_kwargs.anything=1", "+quant.activation_kwargs.k=2",
                                      "model.hidden=[10,10]", "model.hidden.0=10", "seed=0,1,2",
                                      "hydra/launcher=parallel", "hydra.launcher.n_jobs=4", "~model.variant"])
def test_valid_overrides_pass_the_key_check(override):
    check_overrides([override])


def test_the_table_pipeline_composes_through_the_same_check():
    from bnnrepro.compose import hydra_composer

    with pytest.raises(ConfigError, match="did you mean `model.hidden`"):
        hydra_composer()(["+paper=bnn", "+model.hiden=[10]"])


# ---------------------------------------------------------------------------------- --cfg job

def test_cfg_job_validates_and_shows_the_effective_values(capsys):
    code, out, err = _main(["train", "+paper=bnn", "scale=smoke", "--cfg", "job"], capsys)
    assert code == 0, err
    assert out.startswith("# bnnrepro train --cfg job: validated; the effective values after scale=smoke")
    assert "train.epochs: 1000 -> 2" in out and "model.hidden: [4096, 4096, 4096] -> [256, 256, 256]" in out
    assert "  epochs: 2\n" in out and "  - 256\n" in out and "  - 4096\n" not in out
    assert "  train_subset: 5000\n" in out and "experiment: bnn_mnist_theano" in out
    code, out, _ = _main(["train", "+paper=bnn", "scale=quick", "--cfg", "job"], capsys)
    assert "model.dropout_hidden: 0.5 -> 0.2" in out and "  epochs: 20\n" in out


def test_cfg_job_rejects_invalid_values(capsys):
    code, out, err = _main(["train", "+paper=bnn", "scale=smoke", "train.epochs=0", "--cfg", "job"], capsys)
    assert code == 2 and "train.epochs=0 must be a positive (finite) number" in err and not out
    code, out, err = _main(["train", "+paper=bnn", "quant.weight=sgn", "--cfg", "job"], capsys)
    assert code == 2 and "quant.weight='sgn' is unknown" in err


def test_hydra_shell_completion_points_to_ours(capsys):
    code, _, err = _main(["train", "-sc", "install=bash"], capsys)
    assert code == 2 and "bnnrepro completion bash" in err


# ---------------------------------------------------------------------------------- robustness order

def _fake_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("seed: 0\n")
    (path / "best.pt").write_bytes(b"not read while parsing")
    return path


@pytest.mark.parametrize("words", [
    ["--noise", "multiplicative", "RUN"],
    ["--noise", "additive", "multiplicative", "RUN", "--draws", "2"],
    ["RUN", "--noise", "additive,multiplicative"],
    ["--noise=additive", "multiplicative", "RUN"],
    ["--noise", "power", "--levels", "1", "0.5", "RUN"],
])
def test_robustness_noise_list_ends_at_the_run(words, tmp_path, monkeypatch):
    from bnnrepro.robustness import commands

    monkeypatch.setenv("BNNREPRO_RUNS", str(tmp_path / "runs"))
    run = _fake_run(tmp_path / "run")
    args, runs, opts = commands.parse([str(run) if w == "RUN" else w for w in words])
    assert [Path(r.path) if hasattr(r, "path") else Path(r) for r in runs] == [run]
    assert args.noise in (["multiplicative"], ["additive", "multiplicative"], ["power"])
    if "--levels" in words:
        assert opts.levels == (1.0, 0.5)


def test_robustness_noise_multiplicative_run_end_to_end(tmp_path):
    """`bnnrepro robustness --noise multiplicative <run>` as written: the run is a run, not a noise."""
    run = tmp_path / "run"
    run.mkdir()  # a run without a checkpoint: found as a run, refused for having no checkpoint
    (run / "config.yaml").write_text("seed: 0\n")
    out = subprocess.run([str(BIN / "bnnrepro"), "robustness", "--noise", "multiplicative", str(run)],
                         capture_output=True, text=True, env={**os.environ, "BNNREPRO_RUNS": str(tmp_path / "runs")})
    assert out.returncode == 2 and "has no checkpoint" in out.stderr, out.stderr


# ---------------------------------------------------------------------------------- report folders

def test_report_commands_default_under_the_runs_root(tmp_path, monkeypatch):
    from bnnrepro.robustness import commands as robustness

    monkeypatch.setenv("BNNREPRO_RUNS", str(tmp_path / "runs"))
    assert commandline.report_dir("bench", None) == tmp_path / "runs" / "reports" / "bench"
    assert commandline.report_dir("table", None, {"runs_dir": str(tmp_path / "r2")}) == tmp_path / "r2" / "reports" / "table"
    assert commandline.report_dir("bench", "results") == Path("results")
    run = _fake_run(tmp_path / "run")
    args, _, _ = robustness.parse(["--noise", "additive", str(run)])
    assert Path(args.out) == tmp_path / "runs" / "reports" / "robustness"
    bench = commandline.parse(commandline.bench_parser(), [])
    assert bench.out is None  # bench.main writes to report_dir("bench", None)


def test_table_writes_under_the_runs_root_by_default(tmp_path, monkeypatch, capsys):
    from bnnrepro.report import commands
    from test_report import THEANO, _forbidden
    from test_report_fixtures import data_here, no_cuda, write_run

    runs = tmp_path / "runs"
    write_run(runs, "theano-s0", THEANO, 0, 1.25)
    monkeypatch.chdir(tmp_path)
    code = commands.table_main(["bnn", "--no-train", "scale=smoke", "seed=0", f"runs_dir={runs}", "--no-figures"],
                               check_data=data_here, has_cuda=no_cuda, runner=_forbidden)
    assert code == 0, capsys.readouterr().err
    assert (runs / "reports" / "table" / "bnn_table1.md").is_file()
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------- completion

def _bash_complete(line: str) -> list[str]:
    """COMPREPLY of our bash completion for ``line`` (cursor at its end), as bash calls it."""
    script = subprocess.run([str(BIN / "bnnrepro"), "completion", "bash"], capture_output=True, text=True).stdout
    words = line.split(" ")
    driver = (f'{script}\nCOMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; COMP_CWORD={len(words) - 1}; '
              f'COMP_WORDS=({" ".join(repr(w) for w in words)}); _bnnrepro; printf "%s\\n" "${{COMPREPLY[@]}}"')
    out = subprocess.run(["bash", "--norc", "-c", driver], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]


def test_bash_completion_of_subcommands_and_train_overrides():
    assert _bash_complete("bnnrepro tr") == ["train"]
    # readline completes the text after `=` (a COMP_WORDBREAKS character): the options alone
    assert _bash_complete("bnnrepro train +paper=") == ["bnn", "dorefa", "merolla", "qnn"]
    assert _bash_complete("bnnrepro train +paper=d") == ["dorefa"]
    assert "optim.lr=" in _bash_complete("bnnrepro train optim.l")
    assert _bash_complete("bnnrepro train optim.name=s") == ["sgd", "shift_adamax"]
    assert "--noise" in _bash_complete("bnnrepro robustness --no")
    assert _bash_complete("bnnrepro eval data.ro") == ["data.root="]


def _interactive(shell: list[str], setup: list[str], line: str, expect: str, timeout: float = 20) -> str:
    """Type ``line`` and TAB TAB into an interactive shell on a pty; return what it shows."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(shell[0], shell, {**os.environ, "PS1": "$ ", "PROMPT": "$ ", "TERM": "dumb",
                                     "PATH": f"{BIN}:{os.environ['PATH']}"})
    seen = b""

    def read_until(pattern: bytes, seconds: float) -> None:
        nonlocal seen
        end = time.time() + seconds
        while pattern not in seen and time.time() < end:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    return

    try:
        for command in setup + ["echo READY"]:
            os.write(fd, command.encode() + b"\n")
        read_until(b"READY\r\n", timeout)
        seen = b""
        os.write(fd, line.encode() + b"\t")
        time.sleep(0.5)
        os.write(fd, b"\t")
        read_until(expect.encode(), timeout)
        return seen.decode(errors="replace")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)


def test_bash_completion_in_an_interactive_shell():
    shell = ["bash", "--norc", "--noprofile", "-i"]
    setup = ['eval "$(bnnrepro completion bash)"']
    assert "bnnrepro train " in _interactive(shell, setup, "bnnrepro tr", "bnnrepro train ")
    shown = _interactive(shell, setup, "bnnrepro train +paper=", "qnn")
    assert all(name in shown for name in ("bnn", "dorefa", "merolla", "qnn")), shown
    assert "+paper==" not in shown


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (apt-get install zsh)")
def test_zsh_completion_in_an_interactive_shell():
    shell = ["zsh", "-f", "-i"]
    setup = ["autoload -Uz compinit && compinit -u", "source <(bnnrepro completion zsh)"]
    assert "bnnrepro train" in _interactive(shell, setup, "bnnrepro tr", "bnnrepro train")
    shown = _interactive(shell, setup, "bnnrepro train +paper=", "+paper=qnn")
    assert all(f"+paper={name}" in shown for name in ("bnn", "dorefa", "merolla", "qnn")), shown
