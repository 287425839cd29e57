import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hybridflow.runtime import Codec
from hybridflow.runtime.bitstream import BitstreamError
from hybridflow.runtime.entropy import Decoder
from hybridflow.runtime.masking import SCHEDULES
from hybridflow.runtime.streams import stream_kind


@pytest.fixture(scope="module")
def reference(tiny_model) -> Codec:  # noqa: ANN001
    """A second decoder of the same model under another execution configuration."""
    return Codec.load(tiny_model, provider="cpu", threads=1, optimise=False)


@pytest.mark.parametrize("mask", [*SCHEDULES, "auto"])
def test_hybrid_round_trip_every_schedule(codec: Codec, reference: Codec, photo: np.ndarray, mask: str) -> None:
    sym = codec.analyse(photo, mask=mask)
    data = codec.entropy_code(sym)
    out = codec.decompress(data)
    assert out.shape == photo.shape and out.dtype == np.uint8
    # the entropy path returns exactly the symbols that were coded …
    header, words, _ = codec.read_header(data)
    dec = Decoder(codec.model.tables, words)
    np.testing.assert_array_equal(dec.pop_z(sym.z_hat.shape), sym.z_hat)
    np.testing.assert_array_equal(dec.pop_y(sym.y_scale), sym.y_residual)
    np.testing.assert_array_equal(dec.pop_indices(sym.indices.size), sym.indices)
    dec.finish()
    # … and the pixels are those of a reference decode, up to float noise between kernels
    diff = np.abs(out.astype(int) - reference.decompress(data).astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.01
    info = codec.info(data)
    assert (info.width, info.height) == (photo.shape[1], photo.shape[0])
    if mask != "auto":
        assert info.schedules == {mask: 4}


@pytest.mark.parametrize("stream", ["vq", "continuous"])
def test_single_stream_modes(codec: Codec, reference: Codec, photo: np.ndarray, stream: str) -> None:
    data = codec.compress(photo, mask="none", stream=stream)
    assert codec.info(data).stream == stream
    out = codec.decompress(data)
    diff = np.abs(out.astype(int) - reference.decompress(data).astype(int))
    assert out.shape == photo.shape and diff.max() <= 2 and diff.mean() < 0.01


def test_vq_stream_decodes_to_the_vq_autoencoder_output(codec: Codec, photo: np.ndarray) -> None:
    """Reference decode computed straight from the graphs: every index sent, so the decoder's
    output is vq_decoder(vq_encoder(image)) of the whole (edge-padded) image."""
    from hybridflow.runtime.tiling import TileGrid, pad

    img = photo[:256, :256]
    out = codec.decompress(codec.compress(img, mask="none", stream="vq"))
    x = np.ascontiguousarray(pad(img, TileGrid(256, 256)).transpose(2, 0, 1)[None], np.float32) / 255
    (idx,) = codec.model.run("vq_encoder", image=x)
    (rgb,) = codec.model.run("vq_decoder", codes=codec.model.codes(idx))
    expected = (np.clip(rgb[0], 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_latent_windows_match_whole_image(codec: Codec, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Big images run analysis/synthesis in windows (bounded memory); the stream must not depend
    on it beyond float rounding."""
    from hybridflow.runtime import codec as codec_module

    big = codec.analyse(photo, mask="1_4")
    monkeypatch.setattr(codec_module, "LATENT_WINDOW", 1)
    small = codec.analyse(photo, mask="1_4")
    assert np.array_equal(big.z_hat, small.z_hat)
    assert np.array_equal(big.y_residual, small.y_residual)
    assert codec.entropy_code(big) == codec.entropy_code(small)
    a = codec.decompress(codec.entropy_code(small))
    monkeypatch.setattr(codec_module, "LATENT_WINDOW", 32)
    assert np.array_equal(a, codec.decompress(codec.entropy_code(small)))


def test_masking_saves_bits(codec: Codec, photo: np.ndarray) -> None:
    sizes = [len(codec.compress(photo, mask=m, stream="vq")) for m in ("none", "1_2", "1_4", "1_16", "all")]
    assert sizes[0] > sizes[1] > max(sizes[2:]) and sizes[0] > 2 * sizes[2]
    # sparse schedules of the tiny model fall below the format's minimum payload and are padded to it
    floor = 4 * stream_kind("vq").min_payload_per_tile
    assert all(floor < s <= floor + 20 for s in sizes[3:])


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 5000), (300, 1), (17, 300), (513, 257)])
def test_odd_sizes(codec: Codec, h: int, w: int) -> None:
    img = np.random.default_rng(h + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for stream in ("hybrid", "continuous"):
        assert codec.decompress(codec.compress(img, mask="1_4", stream=stream)).shape == (h, w, 3)


def test_padding_tokens_cost_nothing(codec: Codec) -> None:
    """Edge tiles only send indices inside the image: a 257-wide image sends ~1 extra column."""
    img = np.random.default_rng(0).integers(0, 256, (256, 257, 3), dtype=np.uint8)
    full = len(codec.compress(img[:, :256], mask="none", stream="vq"))
    extra = len(codec.compress(img, mask="none", stream="vq"))
    assert extra - full < 0.15 * full  # 16 of 256 extra tokens, not a whole tile


def test_rejects_bad_arrays(codec: Codec) -> None:
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError):
            codec.compress(bad)
    with pytest.raises(ValueError, match="unknown mask"):
        codec.compress(np.zeros((4, 4, 3), np.uint8), mask="1_5")


def test_refuses_stream_of_another_model(codec: Codec, photo: np.ndarray, tmp_path) -> None:  # noqa: ANN001
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(codec.model.directory, other)
    man = json.loads((other / "manifest.json").read_text())
    man["model_id"] = "00" * 32
    (other / "manifest.json").write_text(json.dumps(man))
    data = Codec.load(other, provider="cpu").compress(photo, mask="1_4")
    with pytest.raises(BitstreamError, match="made by model 00000000"):
        codec.decompress(data)


def test_determinism_across_execution_configs(tiny_model, photo: np.ndarray) -> None:  # noqa: ANN001
    a = Codec.load(tiny_model, provider="cpu", threads=2, optimise=True)
    b = Codec.load(tiny_model, provider="cpu", threads=1, optimise=False)
    for mask, rate in (("1_4", None), ("auto", None), ("1_4", 0), ("auto", a.model.rate_points - 1)):
        da, db = a.compress(photo, mask=mask, rate=rate), b.compress(photo, mask=mask, rate=rate)
        assert da == db  # the entropy path (and here every VQ index) agrees exactly
        # pixels come from float graphs: different kernels may differ in the last bit before rounding
        diff = np.abs(a.decompress(da).astype(int) - b.decompress(da).astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.01


def test_determinism_benchmark_counts_what_ran(tmp_path) -> None:  # noqa: ANN001
    """Issue 21: benchmarks/determinism.py printed a hard-coded "86/86 decoded" and compared a codec
    with itself. Its report is computed from what its processes left behind: here one stream of two
    is refused, one encoder wrote other bytes for one image, and one decode differs by 3."""
    import json

    from benchmarks.determinism import report

    img = np.zeros((4, 4, 3), np.uint8)
    files = {"streams/ort-2t-opt/a.hfc": b"A", "streams/ort-2t-opt/b.hfc": b"B",
             "streams/ort-1t-noopt/a.hfc": b"A", "streams/ort-1t-noopt/b.hfc": b"other"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    decodes = {"ort-2t-opt/ort-2t-opt/a": img, "ort-2t-opt/ort-2t-opt/b": img, "ort-1t-noopt/ort-1t-noopt/a": img,
               "ort-1t-noopt/ort-1t-noopt/b": img, "ort-1t-noopt/ort-2t-opt/a": img + 3,
               "ort-2t-opt/ort-1t-noopt/a": img, "ort-2t-opt/ort-1t-noopt/b": img}
    for name, arr in decodes.items():
        (tmp_path / "decoded" / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "decoded" / f"{name}.npy", arr)
    for dec, enc, refused in (("ort-1t-noopt", "ort-2t-opt", {"b": "corrupt"}), ("ort-2t-opt", "ort-1t-noopt", {})):
        (tmp_path / "refused" / dec).mkdir(parents=True, exist_ok=True)
        (tmp_path / "refused" / dec / f"{enc}.json").write_text(json.dumps(refused))
    lines = report(tmp_path, ["ort-2t-opt", "ort-1t-noopt"], 2)
    assert "encoder ort-1t-noopt: 2/2 images encoded; bytes identical to ort-2t-opt's for 1/2" in lines
    assert any(line.startswith("ort-2t-opt → ort-1t-noopt: 1/2 streams decoded, 1 refused; max pixel difference"
                               " from ort-2t-opt's own decode 3") for line in lines)
    assert any(line.startswith("ort-1t-noopt → ort-2t-opt: 2/2 streams decoded, 0 refused; max pixel difference"
                               " from ort-1t-noopt's own decode 0") for line in lines)


def test_concurrent_use_matches_sequential(codec: Codec, photo: np.ndarray) -> None:
    images = [np.roll(photo, 13 * k, axis=1) for k in range(4)]
    sequential = [codec.compress(im, mask="1_4") for im in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda im: codec.compress(im, mask="1_4"), images))
        decoded = list(pool.map(codec.decompress, parallel))
    assert parallel == sequential
    for d, s in zip(decoded, sequential):
        np.testing.assert_array_equal(d, codec.decompress(s))


def test_forged_headers_are_refused_before_any_work(codec: Codec) -> None:
    """Issue 21.1: a 17-byte vq stream declaring 65535×4096, every tile at `all`, kept the decoder
    busy for 35 minutes. Every stream kind must be refused at once when its payload cannot pay for
    the declared tiles."""
    import zlib

    from hybridflow.runtime.bitstream import FORMAT_VERSION, _varint

    for flags in (1 | 0x4 | 5 << 3, 0 | 0x4 | 5 << 3, 2):
        body = (b"HF" + bytes([FORMAT_VERSION]) + codec.model.model_id + bytes([flags, codec.model.base_rate])
                + _varint(65535) + _varint(4096) + b"\xff\xff\xff")
        t0 = time.perf_counter()
        with pytest.raises(BitstreamError, match="cannot pay for 4096"):
            codec.decompress(body + zlib.crc32(body).to_bytes(4, "little"))
        assert time.perf_counter() - t0 < 0.5


def _relabel(data: bytes, width: int, height: int) -> bytes:
    """The same payload under a header declaring another size (uniform schedule), CRC recomputed."""
    import zlib

    from hybridflow.runtime import bitstream

    _, _, header_bytes = bitstream.read(data)
    body = data[:9] + bitstream._varint(width) + bitstream._varint(height) + data[header_bytes - 4 : -4]
    return body + zlib.crc32(body).to_bytes(4, "little")


@pytest.mark.parametrize("stream", ["hybrid", "vq", "continuous"])
def test_reading_past_the_payload_is_refused(codec: Codec, photo: np.ndarray, stream: str) -> None:
    """Issue 21.2: a stream relabelled to a larger size, or a continuous stream with no payload,
    decoded to an image (the ANS decoder yields zeros past its data). A size with the same tiles
    and sent tokens (240×200 → 241×200 at 1_4) carries the same symbols and stays valid."""
    img = photo[:200, :240]
    data = codec.compress(img, mask="1_4", stream=stream)
    assert codec.decompress(_relabel(data, 241, 200)).shape == (200, 241, 3)
    sizes = [(240, 260), (520, 200)] + ([] if stream == "continuous" else [(240, 232), (240, 256)])
    for w, h in sizes:
        with pytest.raises(BitstreamError):
            codec.decompress(_relabel(data, w, h))


@pytest.mark.parametrize("stream", ["hybrid", "vq", "continuous"])
def test_no_graph_runs_before_the_payload_is_verified(codec: Codec, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch,
                                                      stream: str) -> None:
    """Issue 21.1, the class behind session 8's slowest fuzz cases (6.7 s and 4.7 s to refuse a forged
    continuous stream): the continuous synthesis ran before ``Decoder.finish`` found that the payload
    did not end where the header says. A payload that decodes to symbols but is not whole must be
    refused with no graph run at all, so its cost is its entropy decoding, which its size bounds."""
    import zlib

    from hybridflow.runtime import bitstream

    data = codec.compress(photo[:200, :240], mask="1_4", stream=stream)
    header_bytes = bitstream.read(data)[2]
    corrupt = [_relabel(data, w, h) for w, h in [(240, 260), (520, 200), (240, 232), (240, 256)]
               if stream != "continuous" or w * h > 256 * 256]
    for pos in range(header_bytes - 4, len(data) - 4, 3):  # one bit flipped in the payload, re-signed
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        corrupt.append(bytes(flipped[:-4]) + zlib.crc32(bytes(flipped[:-4])).to_bytes(4, "little"))
    runs: list[str] = []
    model_run = codec.model.run
    monkeypatch.setattr(codec.model, "run", lambda name, **kw: runs.append(name) or model_run(name, **kw))
    at_finish = 0
    for case in corrupt:
        try:
            codec.decompress(case)
        except BitstreamError as e:
            at_finish += "does not end where the header says" in str(e)
            assert runs == [], f"{runs} ran before the refusal ({e})"
        runs.clear()  # a flip the format cannot see decodes (and runs graphs): not this test's concern
    assert at_finish, "no case reached Decoder.finish: the test would not see graphs run before it"
    codec.decompress(data)
    assert runs, "the valid stream must run graphs (the patch must see them)"


def test_empty_payload_is_refused(codec: Codec) -> None:
    import zlib

    from hybridflow.runtime.bitstream import FORMAT_VERSION

    body = (b"HF" + bytes([FORMAT_VERSION]) + codec.model.model_id + bytes([2, codec.model.base_rate])
            + b"\x80\x02\x80\x02")
    with pytest.raises(BitstreamError):
        codec.decompress(body + zlib.crc32(body).to_bytes(4, "little"))
    padded = body + b"\x01" * 16  # long enough for one tile, but not an encoding of anything
    with pytest.raises(BitstreamError):
        codec.decompress(padded + zlib.crc32(padded).to_bytes(4, "little"))


class Cancelled(Exception):
    pass


def test_progress_can_cancel_compress_and_decompress(codec: Codec) -> None:
    """Issue 21.11: an embedder abandons work for a client that went away by raising from the
    progress callback; the call stops there and the Codec stays usable."""
    img = np.random.default_rng(5).integers(0, 256, (300, 600, 3), dtype=np.uint8)  # 2×3 tiles
    seen: list[tuple[int, int]] = []
    data = codec.compress(img, mask="1_4", progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    calls = []

    def stop(done: int, total: int) -> None:
        calls.append(done)
        raise Cancelled

    with pytest.raises(Cancelled):
        codec.compress(img, mask="1_4", progress=stop)
    assert calls == [1]
    seen.clear()
    out = codec.decompress(data, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    with pytest.raises(Cancelled):
        codec.decompress(data, progress=stop)
    np.testing.assert_array_equal(codec.decompress(data), out)


@pytest.mark.parametrize("stream", ["hybrid", "vq", "continuous"])
def test_progress_reaches_the_end_for_every_stream(codec: Codec, stream: str) -> None:
    """What a progress bar needs from every stream kind: calls that only go forward and end at
    done == total (the continuous-only reconstruction reports its windows too)."""
    img = np.random.default_rng(7).integers(0, 256, (300, 600, 3), dtype=np.uint8)
    encoded: list[tuple[int, int]] = []
    decoded: list[tuple[int, int]] = []
    data = codec.compress(img, mask="1_4", stream=stream, progress=lambda d, t: encoded.append((d, t)))
    codec.decompress(data, progress=lambda d, t: decoded.append((d, t)))
    for seen in (encoded, decoded):
        assert seen and seen[-1][0] == seen[-1][1] > 0, seen
        assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len({t for _, t in seen}) == 1, seen


def test_concurrent_graph_runs_are_capped(tiny_model) -> None:  # noqa: ANN001
    """Issue 21.11: memory under concurrency is bounded by the Model's caps — on simultaneous graph
    runs, and on window-decoder runs (hundreds of MB each) — not by the number of calling threads;
    the runs happen on the Model's own threads (one heap arena each, not one per caller), and no run
    on the request path shrinks onnxruntime's CPU arena (that waits until the Model is idle: below)."""
    import threading

    from hybridflow.runtime.model import WINDOW_GRAPHS
    from hybridflow.runtime.session import ARENA_SHRINK_ENTRY

    c = Codec.load(tiny_model, provider="cpu")
    c.model.max_concurrent_runs, c.model.max_concurrent_windows = 2, 1
    img = np.random.default_rng(6).integers(0, 256, (256, 512, 3), dtype=np.uint8)
    data = c.compress(img, mask="1_4")
    lock, state = threading.Lock(), {"now": 0, "max": 0, "windows": 0, "max_windows": 0}
    threads, shrink = set(), set()
    real_session = c.model.session

    class Counting:
        def __init__(self, sess, graph: str) -> None:  # noqa: ANN001
            self.sess, self.window = sess, graph in WINDOW_GRAPHS

        def run(self, output_names, inputs, run_options):  # noqa: ANN001, ANN201
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
                state["windows"] += self.window
                state["max_windows"] = max(state["max_windows"], state["windows"])
                threads.add(threading.current_thread().name)
                try:
                    shrink.add(run_options.get_run_config_entry(ARENA_SHRINK_ENTRY[0]))
                except RuntimeError:  # onnxruntime's answer for an entry that is not set
                    shrink.add("")
            try:
                time.sleep(0.01)  # so that runs of different calls really overlap where the caps allow
                return self.sess.run(output_names, inputs, run_options)
            finally:
                with lock:
                    state["now"] -= 1
                    state["windows"] -= self.window

    c.model.session = lambda graph: Counting(real_session(graph), graph)
    with ThreadPoolExecutor(8, thread_name_prefix="caller") as pool:
        outs = list(pool.map(lambda _: c.decompress(data), range(8)))
    assert state["max"] == 2 and state["max_windows"] == 1
    assert threads and not any(name.startswith("caller") for name in threads)
    assert len(threads) <= 2 + 1  # two graph threads, one window thread
    assert shrink == {""}
    assert all(np.array_equal(o, outs[0]) for o in outs)


def test_sessions_use_the_cpu_arena(codec: Codec) -> None:
    """Issue 21.11: the arena is on (without it a Kodak-size decode spends a third of its CPU time in
    page faults) — which is only safe because an idle Model shrinks it (test below)."""
    assert codec.model.session("predictor").get_session_options().enable_cpu_mem_arena


def test_sessions_do_not_spin_between_runs(codec: Codec) -> None:
    """Issue 17: a decode runs its graphs one after another, each in its own session; threads that spin
    after a run took the next graph's two cores (Kodak decode 0.52 → 0.43 s once they stopped)."""
    for graph in ("predictor", "pixel_tail", "vq_encoder"):
        opts = codec.model.session(graph).get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_sent_indices_reach_the_decoder_as_the_same_numbers_either_way(codec: Codec) -> None:
    """A tile whose indices were all sent skips the predictor (the runtime looks its codes up in the
    manifest's codebook); one with masked tokens takes its codes from the predictor graph. Sent
    positions must carry identical vectors on both routes, or a tile's look would depend on its
    neighbours' schedules."""
    g = codec.geometry.grid
    rng = np.random.default_rng(0)
    idx = rng.integers(0, codec.model.codebook.shape[0], (2, g, g))
    visible = rng.random((2, g, g)) < 0.5
    guidance = rng.standard_normal((2, int(codec.model.manifest["guidance_channels"]), g, g)).astype(np.float32)
    (codes,) = codec.model.run("predictor", indices=idx, visible=visible, guidance=guidance)
    looked_up = codec.model.codes(idx)
    mask = np.broadcast_to(visible[:, None], codes.shape)
    assert np.array_equal(codes[mask], looked_up[mask])
    assert not np.allclose(codes[~mask], looked_up[~mask])  # masked positions are the predictor's own


def test_freed_memory_is_trimmed_once_the_model_is_idle(codec: Codec, photo: np.ndarray,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """malloc_trim walks the heap (ms per call): a whole compress triggers it once, after the last
    graph run has been idle for TRIM_AFTER_IDLE_S, not once per graph run."""
    from hybridflow.runtime import model as model_module

    model_module._finish_idle_releases()  # an earlier test's pending release would count as this one's
    calls = []
    monkeypatch.setattr(model_module, "TRIM_AFTER_IDLE_S", 1.0)
    monkeypatch.setattr(model_module, "release_free_memory", lambda: calls.append(time.monotonic()))
    start = time.monotonic()
    codec.compress(photo, mask="1_4")
    codec.compress(photo, mask="1_4")  # several graph runs each, back to back
    assert calls == [] or calls[0] - start >= 1.0
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.2)
    assert len(calls) <= 2 and calls  # trimmed once idle (at most once per compress here), not per graph run


_EXIT_SCRIPT = """
import sys, time
from pathlib import Path
import numpy as np
from hybridflow.runtime import Codec
from hybridflow.runtime import model as m

m.TRIM_AFTER_IDLE_S = float(sys.argv[3])
marker = Path(sys.argv[2])

def slow_release(self):
    time.sleep(2.0)  # still releasing when the main thread reaches the end of the script
    marker.write_text("released")

m.Model.release_idle_memory = slow_release
codec = Codec.load(Path(sys.argv[1]), provider="cpu")
codec.compress(np.full((64, 64, 3), 100, np.uint8), mask="1_4")
time.sleep(0.1)
"""


@pytest.mark.parametrize("idle_s, released", [(0.0, True), (60.0, False)])
def test_exit_waits_for_a_running_idle_release_and_cancels_a_pending_one(tiny_model: Path, tmp_path: Path,
                                                                        idle_s: float, released: bool) -> None:
    """The idle release runs on a daemon timer thread inside onnxruntime; a process that ended while it
    ran could abort in onnxruntime's teardown (exit 134 after the work was done). At exit a running
    release is waited for; a pending one is cancelled, so exit is not delayed by the idle time."""
    script, marker = tmp_path / "exit.py", tmp_path / "marker"
    script.write_text(_EXIT_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tiny_model), str(marker), str(idle_s)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker.exists() == released


def test_an_idle_model_shrinks_the_arenas_of_the_graphs_it_ran(codec: Codec, photo: np.ndarray,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrinking onnxruntime's arena after every run cost a Kodak decode 0.18 s of page faults; now
    the arenas are kept while the Model works and shrunk once it is idle: every graph that ran since
    the last release gets one shrink run (on a minimal input, which must work for each of them), and
    a release with nothing run since shrinks nothing."""
    from hybridflow.runtime import model as model_module
    from hybridflow.runtime.session import ARENA_SHRINK_ENTRY

    monkeypatch.setattr(model_module, "TRIM_AFTER_IDLE_S", 60.0)  # the test releases, not the timer
    lanes = codec.model.lanes()
    codec.model.release_idle_memory()
    codec.decompress(codec.compress(photo, mask="1_4"))
    ran = set(codec.model._used)
    assert {"pixel_head", "pixel_tail"} <= ran
    assert {"vq_encoder", "predictor"} <= (lanes._used if lanes is not None else ran)  # several tiles: on the
    if lanes is not None:                                                              # lanes, if any
        assert sorted(lanes.release_idle_memory()) == ["predictor", "vq_encoder"]
    assert set(codec.model.release_idle_memory()) == ran
    assert codec.model.release_idle_memory() == []

    seen = []
    real = codec.model.session("predictor")

    class Spy:
        def get_inputs(self):  # noqa: ANN201
            return real.get_inputs()

        def run(self, names, inputs, options):  # noqa: ANN001, ANN201
            seen.append(options.get_run_config_entry(ARENA_SHRINK_ENTRY[0]))
            return real.run(names, inputs, options)

    monkeypatch.setitem(codec.model._sessions, "predictor", Spy())
    codec.model._used.add("predictor")
    assert codec.model.release_idle_memory() == ["predictor"]
    assert seen == [ARENA_SHRINK_ENTRY[1]]


def test_a_pass_over_several_windows_hands_its_arena_back_at_once(codec: Codec,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept arenas speed up the next call, but on a large picture every pass's arena (the pixel
    decoder's: hundreds of MB) kept through the next pass raised the 8000×6000 decode's peak from 1.4 to
    2.0 GB: a pass over more than one window shrinks its graph's arena when it ends; a one-window
    picture keeps it until the Model is idle."""
    from hybridflow.runtime import codec as codec_module
    from hybridflow.runtime import model as model_module

    monkeypatch.setattr(model_module, "TRIM_AFTER_IDLE_S", 60.0)
    rng = np.random.default_rng(3)
    shrunk: list[str] = []
    real = codec.model.shrink
    monkeypatch.setattr(codec.model, "shrink", lambda graph: shrunk.append(graph) or real(graph))
    small = codec.compress(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), mask="1_4")
    codec.model.release_idle_memory()
    codec.decompress(small)
    assert shrunk == [] and "pixel_tail" in codec.model._used
    monkeypatch.setattr(codec_module, "TAIL_WINDOW", 2)  # 32-px windows: a 256² picture has several
    monkeypatch.setattr(codec.model, "lanes", lambda: None)  # (windows one at a time here; lanes: below)
    codec.decompress(small)
    assert {"pixel_head", "pixel_tail"} <= set(shrunk) and "pixel_tail" not in codec.model._used


def test_the_tiles_of_a_picture_are_encoded_on_the_lanes_to_the_same_stream(codec: Codec, photo: np.ndarray,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The VQ encoder runs per tile, so a picture of several tiles is encoded LANES tiles at a time on
    the Model's lanes (one thread each): the same indices, so the same bytes, as one tile at a time."""
    lanes = codec.model.lanes()
    if lanes is None:
        pytest.skip("fewer than two threads here: no lanes")
    lanes.release_idle_memory()
    on_lanes = codec.compress(photo, mask="1_4")
    assert "vq_encoder" in lanes._used
    monkeypatch.setattr(codec.model, "lanes", lambda: None)
    assert codec.compress(photo, mask="1_4") == on_lanes


def test_a_large_picture_is_drawn_two_windows_at_a_time_on_one_thread_each(codec: Codec, photo: np.ndarray,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Model.lanes: windows of a picture of several are drawn LANES at a time, each on 1/LANES of the
    threads (onnxruntime uses one thread better than two), by a sibling with caps of its own (LANES
    windows of half the area) whose arenas each pass hands back; the same picture as one at a time."""
    import threading

    from hybridflow.runtime import codec as codec_module
    from hybridflow.runtime.model import LANES

    lanes = codec.model.lanes()
    if lanes is None:
        pytest.skip("fewer than two threads here: no lanes")
    assert lanes is codec.model.lanes() and lanes.lanes() is None
    for name, cells in (("TAIL_WINDOW", 5), ("TAIL_LANE_WINDOW", 3), ("FUSION_WINDOW", 5), ("FUSION_LANE_WINDOW", 3)):
        monkeypatch.setattr(codec_module, name, cells)  # a picture of several windows
    data = codec.compress(photo, mask="1_4")
    seen, now, peak, lock = set(), [0], [0], threading.Lock()
    real_run = lanes.run

    def run(graph: str, **inputs: np.ndarray) -> list[np.ndarray]:
        with lock:
            seen.add(graph)
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        try:
            time.sleep(0.005)  # so that lanes really overlap
            return real_run(graph, **inputs)
        finally:
            with lock:
                now[0] -= 1

    shrunk: list[str] = []
    real_shrink = lanes.shrink
    monkeypatch.setattr(lanes, "run", run)
    monkeypatch.setattr(lanes, "shrink", lambda graph: shrunk.append(graph) or real_shrink(graph))
    drawn = codec.decompress(data)
    assert {"predictor", "pixel_head", "pixel_tail"} <= seen and {"pixel_head", "pixel_tail"} <= set(shrunk)
    assert peak[0] == LANES  # two lane windows at once, never more
    assert lanes.session("pixel_tail").get_session_options().intra_op_num_threads == lanes.threads >= 1
    monkeypatch.setattr(codec.model, "lanes", lambda: None)  # the same windows one at a time: the same picture
    assert np.abs(codec.decompress(data).astype(int) - drawn).max() <= 1
