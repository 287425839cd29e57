import numpy as np
import pytest

from hybridflow.runtime.entropy import Decoder, Encoder, EntropyError, EntropyTables
from hybridflow.runtime.fixedpoint import IntegerHyperSynthesis


def tables() -> EntropyTables:
    k = np.arange(-8, 9)
    pmf = np.exp(-np.abs(k) / np.array([[0.7], [2.0]]))
    prior = np.random.default_rng(0).dirichlet(np.ones(1024) * 0.3)
    return EntropyTables(pmf / pmf.sum(1, keepdims=True), np.exp(np.linspace(np.log(0.11), np.log(64), 64)),
                         127, prior)


def test_round_trip_and_overhead_below_one_percent() -> None:
    rng = np.random.default_rng(1)
    t = tables()
    z = np.clip(np.round(rng.laplace(0, [[[0.7]], [[2.0]]], (2, 6, 8))), -8, 8).astype(np.int64)
    scale = rng.uniform(0.2, 20, (16, 24, 32))
    y = np.clip(np.round(rng.normal(0, t.stds(scale).reshape(scale.shape))), -127, 127).astype(np.int64)
    idx = rng.choice(1024, 3000, p=t.index_prior)
    enc = Encoder(t)
    enc.push_indices(idx)
    enc.push_y(y, scale)
    enc.push_z(z)
    words = enc.finish()
    dec = Decoder(t, words)
    np.testing.assert_array_equal(dec.pop_z(z.shape), z)
    np.testing.assert_array_equal(dec.pop_y(scale), y)
    np.testing.assert_array_equal(dec.pop_indices(idx.size), idx)
    dec.finish()
    # ideal information content of the same symbols under the same models
    from math import erf, sqrt

    def gauss_p(v: int, s: float) -> float:
        return 0.5 * (erf((v + 0.5) / (s * sqrt(2))) - erf((v - 0.5) / (s * sqrt(2))))

    stds = t.stds(scale)
    ideal = -np.log2(t.index_prior[idx]).sum()
    ideal += -sum(np.log2(gauss_p(int(v), float(s))) for v, s in zip(y.ravel(), stds))
    ideal += -np.log2(t.z_pmf[np.arange(2)[:, None, None], z + 8]).sum()
    actual = 32 * words.size
    assert actual <= ideal * 1.01 + 32


def test_garbage_payload_is_refused() -> None:
    """Random words are not an encoding of the declared symbols: the terminator check refuses them
    (passing needs the final ANS state to hit one exact value)."""
    t = tables()
    rng = np.random.default_rng(2)
    for _ in range(50):
        dec = Decoder(t, rng.integers(0, 2**32, rng.integers(1, 6), dtype=np.uint64).astype(np.uint32))
        with pytest.raises(EntropyError):
            dec.pop_z((2, 3, 3))
            dec.pop_y(np.full((4, 3, 3), 3.0))
            dec.pop_indices(40)
            dec.finish()


def test_words_constriction_refuses_are_an_entropy_error() -> None:
    with pytest.raises(EntropyError):
        Decoder(tables(), np.array([5, 0], np.uint32))


def encoded(t: EntropyTables, idx: np.ndarray, terminators: int = 1) -> np.ndarray:
    enc = Encoder(t, terminators)
    enc.push_indices(idx)
    return enc.finish()


@pytest.mark.parametrize("terminators", [1, 2, 5])
def test_reading_past_the_end_is_refused(terminators: int) -> None:
    """Issue 21.2: constriction yields zeros once its data is used up, so a stream relabelled to a
    larger size (more symbols than were encoded) or with no payload at all used to decode."""
    t = tables()
    idx = np.random.default_rng(3).choice(1024, 200, p=t.index_prior)
    words = encoded(t, idx, terminators)
    dec = Decoder(t, words)
    np.testing.assert_array_equal(dec.pop_indices(200), idx)
    dec.finish()
    for extra in (1, 7, 500):
        dec = Decoder(t, words)
        dec.pop_indices(200 + extra)
        with pytest.raises(EntropyError, match="does not end"):
            dec.finish()
    dec = Decoder(t, words)
    dec.pop_indices(199)
    with pytest.raises(EntropyError, match="does not end"):
        dec.finish()
    dec = Decoder(t, np.zeros(0, np.uint32))
    dec.pop_z((2, 4, 4))
    with pytest.raises(EntropyError, match="does not end"):
        dec.finish()


def test_zero_symbols_are_not_free() -> None:
    """Symbols with cumulative frequency 0 cost nothing on an empty ANS stack; on the terminator's
    state no symbol is free, so appending them changes the payload."""
    t = tables()
    t.index_prior[0] = 0.5
    t.index_prior /= t.index_prior.sum()
    base = encoded(t, np.array([5, 9], np.int64))
    more = encoded(t, np.array([5, 9, 0, 0], np.int64))
    assert not np.array_equal(base, more)
    dec = Decoder(t, base)
    dec.pop_indices(4)
    with pytest.raises(EntropyError):
        dec.finish()


def test_padding_terminators_add_24_bits_each() -> None:
    t = tables()
    idx = np.random.default_rng(4).choice(1024, 50, p=t.index_prior)
    sizes = [Encoder(t, k) for k in (1, 11)]
    for enc in sizes:
        enc.push_indices(idx)
    assert sizes[1].coder.num_valid_bits() - sizes[0].coder.num_valid_bits() == 240
    with pytest.raises(ValueError):
        Encoder(t, 0)


def test_integer_hyper_synthesis_is_exact_and_close_to_float() -> None:
    torch = pytest.importorskip("torch")
    from hybridflow.models.hyperprior import ContConfig, HyperSynthesis

    torch.manual_seed(0)
    hs = HyperSynthesis(ContConfig(channels=32, latent=24, hyper=16)).eval()
    layers = hs.layers()
    ih = IntegerHyperSynthesis.quantise([la.weight.detach().numpy() for la in layers],
                                        [la.bias.detach().numpy() for la in layers])
    z = torch.randint(-6, 7, (1, 16, 3, 5)).float()
    with torch.no_grad():
        m_ref, s_ref = hs(z)
    m1, s1 = ih(z[0].numpy())
    m2, s2 = ih(z[0].numpy().copy(order="F"))
    assert np.array_equal(m1, m2) and np.array_equal(s1, s2)
    assert np.all(m1 * 1024 == np.round(m1 * 1024))  # on the fixed-point grid
    assert np.abs(m1 - m_ref[0].numpy()).max() < 0.02
    assert np.abs(s1 - s_ref[0].numpy()).max() < 0.02
