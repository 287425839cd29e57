"""Pieces of the training code that a wrong edit would break silently: the detail losses and the
save-on-stop guard that makes background runs resumable."""

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hybridflow.models.losses import gan_ramp, texture_energy_loss
from hybridflow.models.train.loop import Run, RunConfig, compiled, save_on_interrupt


def _textured(seed: int = 0) -> torch.Tensor:
    """A flat left half and a noisy right half, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(2, 3, 64, 64)
    x[..., 32:] = torch.rand(2, 3, 64, 32, generator=g) * 2 - 1
    return x


@pytest.mark.parametrize("match", ["rms", "energy", "oriented", "oriented_total"])
def test_texture_loss_zero_for_same_detail_and_positive_for_blur(match: str) -> None:
    x = _textured()
    other_noise = _textured(seed=1)  # different pixels, statistically the same amount of detail
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1)
    assert texture_energy_loss(x, x, match).item() == pytest.approx(0.0, abs=1e-6)
    assert texture_energy_loss(other_noise, x, match) < 0.5 * texture_energy_loss(blurred, x, match)


def test_energy_match_asks_most_where_the_detail_is() -> None:
    """Missing half the detail of the busy half costs more than inventing the same amount on the flat half."""
    x = _textured()
    damped = x.clone()
    damped[..., 32:] *= 0.5
    noisy_flat = x.clone()
    noisy_flat[..., :32] = 0.5 * _textured(seed=2)[..., 32:]
    assert texture_energy_loss(damped, x, "energy") > texture_energy_loss(noisy_flat, x, "energy")
    with pytest.raises(ValueError):
        texture_energy_loss(x, x, "phase")


def test_total_energy_term_asks_for_the_crop_mean() -> None:
    """Halving every pixel's detail quarters each crop's energy: |log 0.25| per crop, whatever the layout."""
    from hybridflow.models.losses import oriented_energy_loss

    x = _textured()
    halved = 0.5 * x
    assert oriented_energy_loss(halved, x, total=True).item() == pytest.approx(abs(np.log(0.25)), rel=1e-3)
    swapped = torch.cat([x[..., 32:], x[..., :32]], dim=-1)  # same detail, other places: blocks differ, totals not
    assert oriented_energy_loss(swapped, x, total=True) < 0.05 * oriented_energy_loss(swapped, x)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_a_run_saves_a_checkpoint(sig: int) -> None:
    saved = []
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        with save_on_interrupt(lambda: saved.append(True)):
            os.kill(os.getpid(), sig)
    assert exc.value.code == 130 and saved == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def test_oriented_loss_is_not_met_by_line_artefacts() -> None:
    """One-pixel horizontal lines on a blurred image satisfy the isotropic terms, not the oriented one."""
    g = torch.Generator().manual_seed(0)
    coarse = F.interpolate(F.avg_pool2d(torch.rand(2, 3, 128, 128, generator=g) * 2 - 1, 2), scale_factor=2)
    x = coarse + 0.3 * (torch.rand(2, 3, 128, 128, generator=g) * 2 - 1)
    blurred = F.avg_pool2d(x, 5, stride=1, padding=2)
    lined = blurred.clone()
    lined[..., ::2, :] += 0.3
    for match in ("rms", "energy"):
        assert texture_energy_loss(lined, x, match) < 0.5 * texture_energy_loss(blurred, x, match)
    assert texture_energy_loss(lined, x, "oriented") > 0.9 * texture_energy_loss(blurred, x, "oriented")
    assert texture_energy_loss(x, x, "oriented").item() == pytest.approx(0.0, abs=1e-6)


def test_a_decaying_learning_rate_is_a_function_of_the_step_so_a_resumed_run_keeps_its_schedule(tmp_path: Path) -> None:
    run = Run(tmp_path / "run", RunConfig())
    shares = []
    for step in (0, 250, 1000, 1200):
        run.state.step = step
        shares.append((run.lr_share(True, 1000), run.lr_share(False, 1000)))
    assert shares == [(1.0, 1.0), (0.75, 1.0), (0.0, 1.0), (0.0, 1.0)]  # never below zero past the end


def test_gan_ramp_rises_linearly_and_accepts_no_warmup() -> None:
    assert [gan_ramp(s, 100) for s in (0, 50, 100, 400)] == [0.0, 0.5, 1.0, 1.0]
    assert gan_ramp(0, 0) == 1.0  # --disc-warmup 0 divided by zero before


def test_a_compiled_network_trains_the_plain_modules_parameters() -> None:
    """``--compile``: the step runs torch.compile's wrapper, the stage saves the plain module, so the
    wrapper must compute the same thing and its gradients must land on the plain module's parameters.
    (Real code generation here; tests/test_burst.py runs every stage through it traced only.)"""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 3, 3, padding=1))
    x = torch.randn(2, 3, 16, 16)
    assert compiled(RunConfig(), net) is net
    run_net = compiled(RunConfig(compile=True), net)
    assert run_net is not net
    out = run_net(x)
    assert torch.allclose(out, net(x), atol=1e-5)
    out.square().mean().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net(x).square().mean().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(grads, net.parameters()))


def test_a_run_with_ema_saves_the_average_and_resumes_its_raw_weights(tmp_path: Path) -> None:
    """--ema: the saved network is the moving average of the weights the steps produced (computed here by
    hand), the module keeps training on the raw weights, and a resumed run gets both back."""
    from hybridflow.models import checkpoint
    from hybridflow.models.train.loop import RAW_KEY

    def make(steps_seen: list[torch.Tensor]) -> tuple[Run, torch.nn.Linear, torch.optim.Optimizer]:
        run = Run(tmp_path / "run", RunConfig(ema=0.9))
        net = torch.nn.Linear(2, 1)
        with torch.no_grad():
            net.weight.fill_(1.0)
            net.bias.zero_()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        run.resume(model=net, opt=opt, averaged=("model",))
        return run, net, opt

    seen: list[torch.Tensor] = []
    run, net, opt = make(seen)
    x = torch.tensor([[1.0, 2.0]])

    def step() -> dict[str, float]:
        loss = (net(x) - 10.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(net.weight.detach().clone())
        return {"loss": loss.item()}

    def save() -> None:
        run.save(model=net.state_dict(), opt=opt.state_dict())

    run.loop("t", 5, step, save, validate=lambda: {"w": net.weight.detach().sum().item()}, val_every=5)
    expected = torch.ones(1, 2)
    for k, w in enumerate(seen, start=1):
        d = min(0.9, (1 + k) / (10 + k))
        expected = d * expected + (1 - d) * w
    ck = checkpoint.load(run.state.last)
    assert torch.allclose(ck["model"]["weight"], expected)
    assert torch.equal(ck[RAW_KEY]["model"]["weight"], seen[-1])
    assert torch.equal(net.weight, seen[-1])  # training goes on from the raw weights
    assert not torch.allclose(expected, seen[-1])
    record = [r for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"w"' in r][-1]
    assert '"ema_w"' in record
    again, net2, _ = make([])
    assert again.state.step == 5 and torch.equal(net2.weight, seen[-1])
    assert again.average is not None and torch.allclose(again.average.shadow["model"]["weight"], expected)


def test_ema_needs_a_stage_that_names_its_networks(tmp_path: Path) -> None:
    run = Run(tmp_path / "run", RunConfig(ema=0.99))
    with pytest.raises(ValueError, match="ema"):
        run.resume(model=torch.nn.Linear(1, 1))
