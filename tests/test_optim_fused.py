"""optim.fused: the fused optimizers take the same steps as the per-tensor references, to float rounding."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bnnrepro.config import OptimConfig
from bnnrepro.models import build
from bnnrepro.optim import LatentWeightClipper, build_optimizer


def _trained(name: str, fused: bool, fold_clip: bool = False, lr: float | None = None) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = build("mlp", input_shape=(1, 6, 6), num_classes=4, hidden=(32, 32))
    cfg = OmegaConf.structured(OptimConfig(name=name, fused=fused,
                                           lr=lr or (2**-6 if name == "shift_adamax" else 1e-2)))
    opt = build_optimizer(model, cfg)
    clip = LatentWeightClipper(model, optimizer=opt if fold_clip else None)
    if fold_clip:
        assert clip.weights == []  # every clipped weight is the optimizer's to clip
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        clip()
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("name", ["adam", "adamax", "sgd", "shift_adamax"])
def test_fused_steps_match_the_reference(name):
    fused, reference = _trained(name, True), _trained(name, False)
    for a, b in zip(fused, reference):
        if name == "shift_adamax":
            assert torch.equal(a, b)  # bit for bit (tests/test_shift.py)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,flag", [("adam", "fused"), ("sgd", "fused"), ("adamax", "foreach"),
                                       ("shift_adamax", "fused")])
def test_fused_is_what_the_optimizer_runs(name, flag):
    model = build("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=(8,))
    opt = build_optimizer(model, OmegaConf.structured(OptimConfig(name=name)))
    assert all(g[flag] for g in opt.param_groups)
    opt = build_optimizer(model, OmegaConf.structured(OptimConfig(name=name, fused=False)))
    assert not any(g[flag] for g in opt.param_groups)


@pytest.mark.parametrize("fused", [True, False])
def test_shift_adamax_clipping_inside_its_step_is_the_clamp_after_it(fused):
    """The latent clip folded into the step (one write per latent) leaves the weights the separate
    clamp_ leaves; a large LR drives many latents into the clip."""
    folded, separate = _trained("shift_adamax", fused, True, 2**-2), _trained("shift_adamax", fused, False, 2**-2)
    clipped = 0
    for a, b in zip(folded, separate):
        assert torch.equal(a, b)
        clipped += int((a.abs() == 1).sum())
    assert clipped > 100
