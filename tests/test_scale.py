"""Scale-out on Ray (runtime/scale.py): same bytes as the sequential path, resumable, fault tolerant.

One local Ray (2 CPUs) serves the whole module; each run starts its own actor pool on it."""

from __future__ import annotations

import csv
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from hybridflow.runtime import metrics, scale  # noqa: E402
from hybridflow.runtime.imageio import read_image  # noqa: E402

HF_RUN = [sys.executable, "-m", "hybridflow.runtime.cli"]
ENGINE = scale.Engine(workers=2)


@pytest.fixture(scope="module", autouse=True)
def ray_session():  # noqa: ANN201
    scale.start_local(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    base = np.stack([np.sin(x / rng.uniform(5, 20)), np.cos(y / rng.uniform(5, 20)), np.sin((x + y) / 23)], -1)
    return np.clip(base * 80 + 128 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def make_archive(root: Path, n: int = 5, size: tuple[int, int] = (200, 300), bad: bool = True) -> list[Path]:
    """n images (one in a subfolder, one JPEG), plus a file that is not an image when ``bad``."""
    rng = np.random.default_rng(n)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        name = root / ("sub" if i == n - 1 else "") / f"im{i:02d}{'.jpg' if i == 1 else '.png'}"
        cv2.imwrite(str(name), cv2.cvtColor(_image(rng, size[0] + 8 * i, size[1]), cv2.COLOR_RGB2BGR))
        files.append(name)
    if bad:
        (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after")
    return files


def manifest_rows(summary: scale.RunSummary) -> dict[str, dict]:
    rows = pq.read_table(summary.manifest).to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a file appears twice in the manifest"
    return {Path(r["path"]).name: r for r in rows}


def sequential(codec, files: list[Path], **kw: str) -> dict[str, bytes]:  # noqa: ANN001
    return {f.name: codec.compress(read_image(f)[0], **kw) for f in files}


def test_same_bytes_as_the_sequential_cli_and_a_rerun_redoes_nothing(tiny_model: Path, tmp_path: Path) -> None:
    src, dst, seq = tmp_path / "src", tmp_path / "dst", tmp_path / "seq"
    files = make_archive(src)
    before = datetime.datetime.now(datetime.timezone.utc)
    s = scale.compress_archive(str(src), str(dst), mask="1_4", model=tiny_model, provider="cpu", engine=ENGINE)
    after = datetime.datetime.now(datetime.timezone.utc)
    assert s.counts == {"ok": len(files), "failed": 1}
    rows = manifest_rows(s)
    for r in rows.values():  # each file on the run's clock: started, then its seconds, within the run
        assert before <= r["started"] <= r["started"] + datetime.timedelta(seconds=r["seconds"]) <= after
    assert set(rows) == {f.name for f in files} | {"broken.png"}
    assert "not an image" in rows["broken.png"]["error"] and rows["broken.png"]["bytes"] is None
    p = subprocess.run([*HF_RUN, "compress", str(src / "sub"), str(seq), "--mask", "1_4", "--model",
                        str(tiny_model)], capture_output=True, text=True, timeout=300)
    p2 = subprocess.run([*HF_RUN, "compress", str(src), str(seq), "--mask", "1_4", "--model", str(tiny_model)],
                        capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p2.returncode == 1, p.stderr + p2.stderr  # 1: broken.png, the rest are written
    for f in files:
        out = dst / f.relative_to(src).with_suffix(".hfc")
        assert out.read_bytes() == (seq / (f.stem + ".hfc")).read_bytes(), f
        r = rows[f.name]
        assert r["status"] == "ok" and r["bytes"] == out.stat().st_size and r["output"] == str(out)
        assert r["bpp"] == pytest.approx(8 * r["bytes"] / np.prod(read_image(f)[0].shape[:2]))
    assert not [p for p in dst.rglob("*.part")]

    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dst.rglob("*.hfc")}
    again = scale.compress_archive(str(src), str(dst), mask="1_4", model=tiny_model, provider="cpu", engine=ENGINE)
    assert again.counts == {"skipped": len(files), "failed": 1}  # the bad image is tried again, nothing else
    assert again.manifest != s.manifest and Path(s.manifest).exists()
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dst.rglob("*.hfc")} == stamps


def test_file_uris_and_stream_option_match_the_api(tiny_model: Path, codec, tmp_path: Path) -> None:  # noqa: ANN001
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = make_archive(src, n=3, bad=False)
    s = scale.compress_archive(src.as_uri(), dst.as_uri() + "/", mask="1_9", stream="vq", model=tiny_model,
                               provider="cpu", engine=scale.Engine(workers=1, batch_size=2))
    assert s.counts == {"ok": 3} and s.manifest.startswith("file://")
    expected = sequential(codec, files, mask="1_9", stream="vq")
    for f in files:
        assert (dst / f.relative_to(src).with_suffix(".hfc")).read_bytes() == expected[f.name]
    assert {r["status"] for r in manifest_rows(s).values()} == {"ok"}


def test_a_rerun_after_an_interruption_does_only_what_was_left(tiny_model: Path, codec, tmp_path: Path) -> None:  # noqa: ANN001
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = make_archive(src, n=4, bad=False)
    expected = sequential(codec, files, mask="auto", stream="hybrid")
    # what an interrupted run leaves: two finished outputs, a temporary file, a foreign file of a finished name
    dst.mkdir()
    (dst / "im00.hfc").write_bytes(expected["im00.png"])
    (dst / "im01.hfc").write_bytes(expected["im01.jpg"])
    (dst / ".im02.hfc.x1.part").write_bytes(b"half a stream")
    before = {p.name: p.stat().st_mtime_ns for p in dst.glob("*.hfc")}
    s = scale.compress_archive(str(src), str(dst), model=tiny_model, provider="cpu", engine=ENGINE)
    rows = manifest_rows(s)
    assert s.counts == {"skipped": 2, "ok": 2}
    assert rows["im00.png"]["status"] == rows["im01.jpg"]["status"] == "skipped"
    assert rows["im00.png"]["bytes"] == len(expected["im00.png"])
    assert {n: (dst / n).stat().st_mtime_ns for n in before} == before  # untouched
    for f in files:
        assert (dst / f.relative_to(src).with_suffix(".hfc")).read_bytes() == expected[f.name]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills the driver process")
def test_a_run_killed_mid_way_is_finished_by_a_rerun_that_redoes_nothing(tiny_model: Path, codec,  # noqa: ANN001
                                                                          tmp_path: Path) -> None:
    """A real interruption: ``hf-run compress --engine ray`` killed (SIGKILL, no clean-up) once some
    outputs exist; the rerun leaves every finished output as it is and does the rest."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = make_archive(src, n=24, size=(384, 512), bad=False)
    address = ray.get_runtime_context().gcs_address
    p = subprocess.Popen([*HF_RUN, "compress", str(src), str(dst), "--engine", "ray", "--address", address,
                          "--workers", "1", "--model", str(tiny_model), "--provider", "cpu", "--mask", "1_4"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(dst.rglob("*.hfc")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    p.kill()
    p.wait()
    finished: list[Path] = []
    while time.monotonic() < deadline:  # the dead driver's actor may finish the file it was on
        time.sleep(1.0)
        now = sorted(dst.rglob("*.hfc"))
        if now == finished:
            break
        finished = now
    assert 0 < len(finished) < len(files), f"{len(finished)} of {len(files)} done when the run was killed"
    stamps = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in finished}
    s = scale.compress_archive(str(src), str(dst), mask="1_4", model=tiny_model, provider="cpu", engine=ENGINE)
    assert s.counts == {"skipped": len(finished), "ok": len(files) - len(finished)}
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in finished} == stamps  # redone: none
    expected = sequential(codec, files, mask="1_4")
    for f in files:
        assert (dst / f.relative_to(src).with_suffix(".hfc")).read_bytes() == expected[f.name]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _ours(pid: int) -> bool:
    """Started by this test process (our Ray's raylet is its child), not by someone else's Ray."""
    while pid > 1:
        pid = _parent(pid)
        if pid == os.getpid():
            return True
    return False


def _busy_actor_pid() -> int | None:
    """One of our Compressor actors' processes while it runs a batch (Ray titles it ``….submit`` then)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if "MapBatches(_Compressor)" in title and title.endswith(".submit") and _ours(int(cmdline.parent.name)):
            return int(cmdline.parent.name)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor's process through /proc")
def test_a_worker_killed_mid_run_loses_and_repeats_nothing(tiny_model: Path, codec, tmp_path: Path) -> None:  # noqa: ANN001
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = make_archive(src, n=12, size=(384, 512), bad=False)
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["summary"] = scale.compress_archive(str(src), str(dst), mask="1_4", model=tiny_model,
                                                       provider="cpu", engine=ENGINE)
        except BaseException as e:  # noqa: BLE001  (reported by the assertion below)
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        killed = _busy_actor_pid()
        time.sleep(0.005)
    assert killed is not None, "no actor was seen running a batch"
    os.kill(killed, signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert isinstance(summary, scale.RunSummary)
    rows = manifest_rows(summary)
    assert set(rows) == {f.name for f in files}  # every file exactly once
    assert summary.counts.get("failed", 0) == 0
    workers = {r["worker"].rsplit(":", 1)[1] for r in rows.values()}
    assert len(workers - {str(killed)}) >= 2, workers  # the killed actor's batch ran again on its restart
    expected = sequential(codec, files, mask="1_4")
    for f in files:
        assert (dst / f.relative_to(src).with_suffix(".hfc")).read_bytes() == expected[f.name]
    assert not list(dst.rglob("*.part"))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_worker_loads_its_model_first_and_runs_its_threads_at_our_priority(tiny_model: Path, tmp_path: Path,
                                                                           threads: int) -> None:
    """The actor opens the encoder's graphs when it starts, so no file's seconds include the model
    load. ``--threads-per-worker T`` means T intra-op threads and one inter-op thread in each graph and T
    OpenCV threads, not the node's every core; the local Ray's workers run at our priority."""
    actor = ray.remote(num_cpus=1)(scale._Compressor).remote(
        src=str(tmp_path), dst=str(tmp_path / "out"), model=str(tiny_model), provider="cpu", threads=threads,
        mask="1_4", stream="hybrid")

    def settings(worker: scale._Compressor) -> dict[str, object]:
        import cv2

        opened = sorted(worker.codec.model._sessions)  # before any file: the constructor loaded the model
        options = worker.codec.model.session("vq_encoder").get_session_options()
        return {"intra": options.intra_op_num_threads, "inter": options.inter_op_num_threads,
                "cv2": cv2.getNumThreads(), "nice": os.nice(0), "opened": opened}

    assert ray.get(actor.__ray_call__.remote(settings), timeout=120) == {
        "intra": threads, "inter": 1, "cv2": threads, "nice": os.nice(0),
        "opened": sorted(scale.ENCODER_GRAPHS)}  # the encoder's graphs only: decoding is not its job
    ray.kill(actor)


def test_eval_aggregates_over_the_archive(tiny_model: Path, codec, tmp_path: Path) -> None:  # noqa: ANN001
    src = tmp_path / "src"
    files = make_archive(src, n=3)
    e = scale.evaluate_archive(str(src), mask="1_4", model=tiny_model, provider="cpu", engine=ENGINE)
    rows = {Path(r["path"]).name: r for r in e.rows.to_pylist()}
    assert e.failed == 1 and rows["broken.png"]["status"] == "failed"
    local = []
    for f in files:
        rgb = read_image(f)[0]
        data = codec.compress(rgb, mask="1_4")
        q = metrics.quality(rgb, len(data), codec.decompress(data))
        local.append(q)
        assert rows[f.name]["bytes"] == len(data)
        assert rows[f.name]["psnr"] == pytest.approx(q["psnr"], abs=1e-9)
    for k in ("bpp", "psnr", "ms_ssim"):
        assert e.means[k] == pytest.approx(np.mean([q[k] for q in local]), abs=1e-9)


def test_cli_engine_ray_joins_a_running_cluster(tiny_model: Path, codec, tmp_path: Path) -> None:  # noqa: ANN001
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = make_archive(src, n=2)
    address = ray.get_runtime_context().gcs_address
    common = ["--model", str(tiny_model), "--provider", "cpu", "--mask", "1_2"]
    p = subprocess.run([*HF_RUN, "compress", str(src), dst.as_uri(), "--engine", "ray", "--address", address,
                        "--workers", "1", "--threads-per-worker", "1", *common],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr  # broken.png failed: listed, the others done
    assert "2 done, 0 skipped, 1 failed" in p.stdout + p.stderr and "broken.png" in p.stderr
    assert "Traceback" not in p.stderr
    p = subprocess.run([*HF_RUN, "eval", str(src), "--engine", "ray", "--address", address, "--workers", "1",
                        "--csv", str(tmp_path / "e.csv"), *common[:4], "--target-bpp", "0.2"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "mean of 2" in p.stdout, p.stdout + p.stderr
    rows = list(csv.DictReader((tmp_path / "e.csv").open()))
    # --target-bpp reached the workers (the tiny model's smallest streams here are 0.12–0.14 bpp)
    assert len(rows) == 2 and all(float(r["bpp"]) <= 0.2 for r in rows)
    for f in files:
        assert (dst / f.relative_to(src).with_suffix(".hfc")).exists()
        want = codec.compress(read_image(f)[0], target_bpp=0.2)
        assert int(next(r for r in rows if Path(r["path"]).name == f.name)["bytes"]) == len(want)
