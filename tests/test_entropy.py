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


def test_channel_context_in_integers_walks_like_the_float_one() -> None:
    """The runtime's slice walk (integer context) and the training module (float) code the same
    symbols with the same scale steps, up to the integer grid's rounding; encoder and decoder walks agree."""
    torch = pytest.importorskip("torch")
    from hybridflow.models.context import ChannelContext
    from hybridflow.runtime import slices
    from hybridflow.runtime.entropy import EntropyTables
    from hybridflow.runtime.fixedpoint import IntegerContext
    from hybridflow.runtime.rates import BASE, RatePoint

    torch.manual_seed(0)
    ctx = ChannelContext(latent=12, slices=3, hidden=16).eval()
    for net in ctx.nets:
        torch.nn.init.normal_(net[-1].weight, std=0.3)
        torch.nn.init.normal_(net[-1].bias, std=0.5)
    ictx = IntegerContext.quantise([([c.weight.detach().numpy() for c in ctx.convolutions(s)],
                                     [c.bias.detach().numpy() for c in ctx.convolutions(s)]) for s in (1, 2)])
    assert ictx.slices == 3
    rng = np.random.default_rng(0)
    y = rng.normal(0, 4, (12, 5, 7))
    mean = np.round(rng.normal(0, 2, y.shape) * 1024) / 1024  # the hyper synthesis' grid
    scale = np.round(rng.uniform(0.2, 6, y.shape) * 1024) / 1024
    t = EntropyTables(np.full((1, 3), 1 / 3), ctx.table.double().numpy(), 255, np.ones(4) / 4)
    gain = rng.integers(2048, 8192, 12) / 4096.0
    for point in (BASE, RatePoint(gain, 1 / gain)):
        coded = slices.encode(ictx, t, point, y, mean, scale)
        with torch.no_grad():
            g = None if point.gain is None else (torch.tensor(gain)[None].float(), torch.tensor(1 / gain)[None].float())
            y_hat, lik = ctx(*(torch.tensor(a)[None].float() for a in (y, mean, scale)), g, noisy=False)
        assert np.abs(coded.y_hat - y_hat[0].numpy()).max() < 0.05
        from hybridflow.models.entropy_models import gaussian_likelihood

        runtime_bits = -np.log2(gaussian_likelihood(torch.tensor(coded.residual), torch.tensor(0.0),
                                                    torch.tensor(coded.std)).numpy()).sum()
        assert abs(-np.log2(lik[0].numpy()).sum() / runtime_bits - 1) < 0.02
        # the table steps really moved away from the hyperprior's own for the later slices
        plain = slices.encode(None, t, point, y, mean, scale)
        assert np.array_equal(coded.std[:4], plain.std[:4]) and not np.array_equal(coded.std[4:], plain.std[4:])
        # the decoder's walk, fed the encoder's symbols slice by slice, rebuilds the same ŷ and stds
        def pop(part: slice, here: RatePoint, mu: np.ndarray, std: np.ndarray, q: np.ndarray = coded.residual
                ) -> np.ndarray:
            return q[part]

        back = slices.walk(ictx, t, point, mean, scale, pop)
        assert np.array_equal(back.y_hat, coded.y_hat) and np.array_equal(back.std, coded.std)
        assert np.array_equal(slices.walk(ictx, t, point, mean, scale.copy(order="F"), pop).std, coded.std)
