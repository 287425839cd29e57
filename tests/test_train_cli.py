"""``hf-train stage…`` options come from the config dataclasses: every documented command line parses
into the config it always meant, every config field is settable, and bad options fail in one line."""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("torch")
from typer.testing import CliRunner  # noqa: E402

from hybridflow.models.train import cli, options  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("stage1-vq", "stage1-cont", "stage2", "stage3", "upsampler", "fusion", "output")
FILES = {"stage2": ["--vq", "v.pt", "--cont", "c.pt"],
         "stage3": ["--vq", "v.pt", "--cont", "c.pt", "--predictor", "p.pt"], "upsampler": ["--cont", "c.pt"],
         "output": ["--vq", "v.pt", "--cont", "c.pt", "--predictor", "p.pt", "--correction", "k.pt"]}


def documented() -> list[tuple[str, list[str]]]:
    """Every ``hf-train`` training line of the code blocks in TRAINING.md and README.md (those that
    leave arguments out with "…" are sketches, not commands)."""
    out = []
    for doc in ("models/TRAINING.md", "README.md"):
        for line in (ROOT / doc).read_text().replace("\\\n", " ").splitlines():
            m = re.match(rf"hf-train ({'|'.join(STAGES)})\b([^#]*)", line.strip())
            if m and "…" not in m.group(2):
                out.append((m.group(1), shlex.split(m.group(2))))
    return out


def test_every_documented_command_parses() -> None:
    cmds = documented()
    assert set(cli.stage_specs()) == set(STAGES)
    assert len(cmds) >= 20 and {stage for stage, _ in cmds} >= set(STAGES) - {"upsampler", "fusion"}
    for stage, argv in cmds:
        cli.parse_stage(stage, argv)


def test_the_s8_stage3_command_means_what_it_meant() -> None:
    from hybridflow.models.train.stage3 import Stage3TrainConfig

    argv = shlex.split("--vq runs/release/vq.pt --cont runs/release/cont.pt --predictor runs/release/predictor.pt "
                       "--init runs/release/correction.pt --run-dir runs/s8 --steps 6000 --batch 8 --crop-tokens 8 "
                       "--lr 1e-4 --perceptual-weight 0 --lpips-weight 1.0 --train-vq-decoder --plain-share 0.2 "
                       "--decoder-norm channel --bf16 --val-every 250 --threads 2")
    assert ("stage3", argv) in documented()
    files, cfg = cli.parse_stage("stage3", argv)
    assert files == cli.Stage3Files(run_dir=Path("runs/s8"), vq=Path("runs/release/vq.pt"),
                                    cont=Path("runs/release/cont.pt"), predictor=Path("runs/release/predictor.pt"))
    assert cfg == Stage3TrainConfig(init="runs/release/correction.pt", steps=6000, batch=8, crop_tokens=8, lr=1e-4,
                                    perceptual_weight=0.0, lpips_weight=1.0, train_vq_decoder=True, plain_share=0.2,
                                    decoder_norm="channel", bf16=True, val_every=250, threads=2)


def test_the_s5_stage2_command_means_what_it_meant() -> None:
    from hybridflow.models.train.stage2 import Stage2TrainConfig
    from hybridflow.models.transformer import TransformerConfig

    argv = shlex.split("--vq runs/final4/vq.pt --cont runs/release/cont.pt --run-dir runs/s2g --tiles 12000 "
                       "--steps 3200 --batch 32 --dim 192 --layers 4 --lr 6e-4 --threads 1")
    assert ("stage2", argv) in documented()
    files, cfg, model = cli.parse_stage("stage2", argv)
    assert (files.run_dir, files.vq, files.cont, files.cache_only) == (
        Path("runs/s2g"), Path("runs/final4/vq.pt"), Path("runs/release/cont.pt"), False)
    assert cfg == Stage2TrainConfig(tiles=12000, steps=3200, batch=32, lr=6e-4, threads=1)
    # a new predictor adds the aligned guidance unless told otherwise (the dataclass default is the old models')
    assert model == TransformerConfig(dim=192, enc_layers=4, dec_layers=4, guidance_input=True)
    _, _, model = cli.parse_stage("stage2", [*FILES["stage2"], "--layers", "2", "--no-guidance-input"])
    assert (model.enc_layers, model.dec_layers, model.guidance_input) == (2, 2, False)


def test_stage2_takes_init_bf16_and_val_every() -> None:
    argv = [*FILES["stage2"], "--init", "runs/s2/last.pt", "--bf16", "--val-every", "50"]
    _, cfg, _ = cli.parse_stage("stage2", argv)
    assert (cfg.init, cfg.bf16, cfg.val_every) == ("runs/s2/last.pt", True, 50)


def _other_value(value: object, meta: dict) -> tuple[object, list[str]]:
    """A value unlike ``value`` and the option words that say it."""
    if isinstance(value, bool):
        return not value, []
    if "choices" in meta:
        new = next(c for c in meta["choices"] if c != value)
        return new, [str(new)]
    if isinstance(value, tuple):
        new = tuple(reversed(value))[:2] or ("x",)
        return new, [str(v) for v in new]
    if isinstance(value, (int, float)):
        return value + 3, [str(value + 3)]
    new = type(value)("elsewhere/x.pt")
    return new, [str(new)]


@pytest.mark.parametrize("stage", STAGES)
def test_every_config_field_is_settable(stage: str) -> None:
    """Each field of each of the stage's dataclasses, set alone to a value unlike its default, arrives."""
    base = cli.parse_stage(stage, FILES.get(stage, []))
    n = 0
    for config in base:
        for f in dataclasses.fields(config):
            if "derived" in f.metadata:
                continue
            value, words = _other_value(getattr(config, f.name), dict(f.metadata))
            flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
            if isinstance(value, bool):
                flag = flag if value else "--no-" + flag[2:]
            parsed = cli.parse_stage(stage, [*FILES.get(stage, []), flag, *words])  # (a repeated flag: the last wins)
            got = next(c for c in parsed if type(c) is type(config))
            assert getattr(got, f.name) == value, (stage, f.name)
            n += 1
    assert n >= 15


def test_derived_model_fields_are_no_options() -> None:
    with pytest.raises(SystemExit):
        cli.parse_stage("stage2", [*FILES["stage2"], "--grid", "8"])


def test_bad_options_and_missing_checkpoints_fail_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(cli.app, ["stage3", "--vq", "v.pt", "--cont", "c.pt"])  # no --predictor
    assert r.exit_code == 2 and "--predictor" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(cli.app, ["stage1-vq", "--texture-match", "phase"])
    assert r.exit_code == 2 and "phase" in r.output and len(r.output.strip().splitlines()) == 1
    gone = tmp_path / "gone.pt"
    r = runner.invoke(cli.app, ["stage2", "--vq", str(gone), "--cont", str(gone), "--run-dir", str(tmp_path / "run")])
    assert r.exit_code == 1 and r.output.strip() == f"error: {gone}: no such checkpoint"
    assert not (tmp_path / "run").exists()


@dataclass
class _Toy:
    out: Path = field(metadata={"help": "required: no default"})
    maybe: Path | None = None
    sizes: tuple[int, ...] = (1, 2)
    norm: str = field(default="a", metadata={"choices": ("a", "b")})
    on: bool = True
    derived: int = field(default=7, metadata={"derived": "set by the trainer"})


def test_option_kinds() -> None:
    p = options.parser("toy", None, _Toy)
    toy = options.build(_Toy, p.parse_args(["--out", "o", "--sizes", "3", "4", "5", "--no-on"]))
    assert toy == _Toy(out=Path("o"), maybe=None, sizes=(3, 4, 5), norm="a", on=False)
    assert options.build(_Toy, p.parse_args(["--out", "o", "--maybe", "m"])).maybe == Path("m")
    for bad in ([], ["--out", "o", "--norm", "c"], ["--out", "o", "--derived", "1"], ["--out", "o", "--on-"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    with pytest.raises(TypeError, match="another config"):
        options.parser("toy", None, _Toy, _Toy)
