"""LR schedules as the loop builds them from the real presets: truncated (the paper's first epochs)
or compressed (the whole decay inside the epochs run)."""
import pytest
import torch

from bnnrepro.optim import build_scheduler
from bnnrepro.config import effective_epochs, schedule_epochs
from conftest import compose


def _lrs(cfg) -> list[float]:
    """The learning rate of each epoch the run trains."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=float(cfg.optim.lr))
    sched = build_scheduler(opt, cfg.optim, schedule_epochs(cfg), protocol_epochs=int(cfg.train.epochs))
    out = []
    for _ in range(effective_epochs(cfg)):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_compressed_step_schedule_makes_the_protocols_decays():
    """BNN Torch7 MNIST: 2^-6 halved every 20 of 200 epochs; at quick scale's 20 epochs, every 2."""
    cfg = compose(["+experiment=bnn_mnist_torch7", "scale=quick"])
    assert cfg.scale.schedule == "compress" and effective_epochs(cfg) == 20
    lrs = _lrs(cfg)
    assert lrs == pytest.approx([2.0**-6 * 0.5 ** (e // 2) for e in range(20)])
    assert lrs[-1] == pytest.approx(2.0**-6 / 2**9)  # the paper's LR in its epochs 181-200


def test_truncated_step_schedule_is_the_papers_first_epochs():
    cfg = compose(["+experiment=bnn_mnist_torch7", "scale=quick", "scale.schedule=truncate"])
    assert _lrs(cfg) == pytest.approx([2.0**-6] * 20)  # no halving before the paper's epoch 21


@pytest.mark.parametrize("epochs, expected_last", [(30, 2.0**-6 * 0.5**9), (15, 2.0**-6 * 0.5**9), (5, 2.0**-6 * 0.5**8)])
def test_compression_not_a_whole_number_of_epochs_per_step(epochs, expected_last):
    """200 -> 15 epochs: a step every 1.5 epochs; 200 -> 5: 2.5 decays per epoch (floor at each epoch)."""
    cfg = compose(["+experiment=bnn_mnist_torch7", "scale=quick", f"scale.epochs={epochs}"])
    lrs = _lrs(cfg)
    step = 20 * epochs / 200
    assert lrs == pytest.approx([2.0**-6 * 0.5 ** int(e / step + 1e-9) for e in range(epochs)])
    assert lrs[-1] == pytest.approx(expected_last)


def test_compressed_exponential_schedule_reaches_lr_final():
    cfg = compose(["+paper=bnn", "scale=quick"])
    lrs = _lrs(cfg)
    gamma = (cfg.optim.lr_final / cfg.optim.lr) ** (1 / 20)
    assert lrs[0] == pytest.approx(cfg.optim.lr) and lrs[-1] == pytest.approx(cfg.optim.lr_final / gamma)
