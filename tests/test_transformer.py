"""The stage-2 predictor: the fast training path must compute what the exported graph computes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hybridflow.models.train.stage2 import random_visible
from hybridflow.models.transformer import MaskedTokenPredictor, TransformerConfig


def _model(**kw: object) -> MaskedTokenPredictor:
    torch.manual_seed(0)
    cfg = TransformerConfig(guidance_channels=8, dim=32, heads=2, enc_layers=2, dec_layers=1, **kw)
    model = MaskedTokenPredictor(cfg).eval()
    if cfg.code_dim:
        model.set_codebook(F.normalize(torch.randn(cfg.n_codes, cfg.code_dim), dim=1))
    return model


def test_compact_encoder_equals_masked_encoder() -> None:
    model = _model(code_dim=4, guidance_input=True)
    idx = torch.randint(0, 1024, (4, 16, 16))
    # different visible counts per tile, including an all-masked one (only the buffer token is visible)
    visible = torch.rand(4, 16, 16) < torch.tensor([0.0, 0.1, 0.5, 0.9])[:, None, None]
    g = torch.randn(4, 8, 16, 16)
    with torch.no_grad():
        full = model.logits(model.hidden(idx, visible, g, compact=False))
        compact = model.logits(model.hidden(idx, visible, g))
    assert torch.allclose(full, compact, atol=1e-4)


def test_prediction_keeps_sent_tokens_and_depends_on_guidance() -> None:
    model = _model(code_dim=4, guidance_input=True)
    idx = torch.randint(0, 1024, (2, 16, 16))
    visible = torch.rand(2, 16, 16) < 0.25
    g = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        a = model.predict(idx, visible, g)
        b = model.predict(idx, visible, torch.randn_like(g))
    assert torch.equal(a[visible], idx[visible])
    assert not torch.equal(a, b)


def test_codes_hand_over_sent_vectors_and_the_predicted_ones() -> None:
    """What the pixel decoder reads: sent positions carry their own code vector either way; masked
    ones the argmax's code (the index map of ``predict``) or the expectation under the softmax."""
    model = _model(code_dim=4, guidance_input=True)
    idx = torch.randint(0, 1024, (2, 16, 16))
    visible = torch.rand(2, 16, 16) < 0.25
    g = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        hard = model.codes(idx, visible, g, soft=False).permute(0, 2, 3, 1)
        soft = model.codes(idx, visible, g, soft=True).permute(0, 2, 3, 1)
        expected = model(idx, visible, g).softmax(-1).view(2, 16, 16, -1) @ model.codebook
    assert torch.equal(hard, model.codebook[model.predict(idx, visible, g)])
    assert torch.equal(soft[visible], model.codebook[idx[visible]])
    assert torch.allclose(soft[~visible], expected[~visible], atol=1e-6)
    # an expectation of unit vectors lies inside the unit ball, and differs from any single code
    assert (soft[~visible].norm(dim=-1) < 0.999).all()


def test_expected_codes_carry_gradient_to_the_predictor_only_at_masked_positions() -> None:
    """Stage 3 can fine-tune the predictor through the pixel decoder because the expectation is
    differentiable in the logits; the argmax's codes and the sent ones carry no gradient."""
    model = _model(code_dim=4, guidance_input=True)
    idx = torch.randint(0, 1024, (2, 16, 16))
    visible = torch.rand(2, 16, 16) < 0.25
    g = torch.randn(2, 8, 16, 16)
    logits = model.logits(model.hidden(idx, visible, g))
    soft = model.code_image(logits, idx, visible, soft=True)
    with torch.no_grad():
        assert torch.allclose(soft, model.codes(idx, visible, g, soft=True), atol=1e-5)  # compact path, same codes
    (grad,) = torch.autograd.grad(soft.pow(2).sum(), logits)
    per_position = grad.abs().sum(-1).view(2, 16, 16)
    assert (per_position[visible] == 0).all() and (per_position[~visible] > 0).all()
    hard = model.code_image(model.logits(model.hidden(idx, visible, g)), idx, visible, soft=False)
    assert not hard.requires_grad


def test_old_configuration_has_no_codebook_parameters() -> None:
    """Checkpoints from before the codebook option must still load into the same modules."""
    names = set(_model().state_dict())
    assert not any(n.startswith(("codebook", "code_in", "code_out", "guid_add")) for n in names)


def test_training_masks_share_their_visible_count_within_a_batch() -> None:
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(40):
        vis = random_visible(rng, 8, 16, structured_prob=0.5)
        per_tile = vis.reshape(8, -1).sum(1)
        assert (per_tile == per_tile[0]).all()
        assert per_tile[0] <= 128  # at least half of the tokens are always masked
        counts.add(int(per_tile[0]))
    assert {128, 64, 25, 16} <= counts  # the codec's own schedules are among them
    assert len(counts) > 4  # and random ratios too
