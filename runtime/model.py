"""A model directory as the runtime sees it: ``manifest.json`` + ONNX graphs + integer hyper synthesis.

The manifest is written by ``hf-export`` (see ``export/manifest.py``); its keys are listed in
FORMAT.md. Sessions are opened lazily, so a CLI call that only needs some graphs opens only those."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .complexity import ComplexityModel
from .entropy import EntropyTables
from .fixedpoint import IntegerHyperSynthesis
from .session import open_session, providers_for

MODEL_FORMAT_VERSION = 2  # 2: cont_analysis → y only, hyper_analysis y → z
DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default"


class ModelError(ValueError):
    pass


@dataclass
class Model:
    directory: Path
    manifest: dict[str, Any]
    provider: str = "auto"
    threads: int | None = None
    optimise: bool = True
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, directory: Path | None = None, provider: str = "auto", threads: int | None = None,
             optimise: bool = True) -> Model:
        directory = Path(directory) if directory is not None else DEFAULT_MODEL_DIR
        path = directory / "manifest.json"
        if not path.is_file():
            raise ModelError(f"no model at {directory} (manifest.json missing)")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{path}: invalid JSON ({e.msg})") from None
        if manifest.get("format_version") != MODEL_FORMAT_VERSION:
            raise ModelError(f"{path}: model format {manifest.get('format_version')} is not supported "
                             f"(this runtime reads {MODEL_FORMAT_VERSION})")
        model = cls(directory, manifest, provider, threads, optimise)
        model.tables  # noqa: B018  (validate the tables now, not in the middle of a decode)
        return model

    # --- static parts -------------------------------------------------------------------------
    @property
    def model_id(self) -> bytes:
        return bytes.fromhex(self.manifest["model_id"])[:4]

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.manifest["model_id"][:8])

    def has(self, graph: str) -> bool:
        return graph in self.manifest["graphs"]

    @property
    def tables(self) -> EntropyTables:
        if "_tables" not in self.__dict__:
            e = self.manifest["entropy"]
            self.__dict__["_tables"] = EntropyTables(
                z_pmf=np.asarray(e["z_pmf"], np.float64),
                scale_table=np.asarray(e["scale_table"], np.float64),
                y_radius=int(e["y_radius"]),
                index_prior=np.asarray(e["index_prior"], np.float64),
            )
        return self.__dict__["_tables"]

    @property
    def hyper(self) -> IntegerHyperSynthesis:
        if "_hyper" not in self.__dict__:
            self.__dict__["_hyper"] = IntegerHyperSynthesis.load(self.directory / self.manifest["hyper_synthesis"])
        return self.__dict__["_hyper"]

    @property
    def complexity(self) -> ComplexityModel:
        return ComplexityModel(**self.manifest["complexity"])

    # --- graphs -------------------------------------------------------------------------------
    def session(self, graph: str) -> Any:
        with self._lock:
            if graph not in self._sessions:
                if not self.has(graph):
                    raise ModelError(f"model {self.name} has no {graph!r} graph")
                path = self.directory / self.manifest["graphs"][graph]["file"]
                providers = providers_for(self.provider, path)
                self._sessions[graph] = open_session(path, providers, self.threads, self.optimise)
            return self._sessions[graph]

    def run(self, graph: str, **inputs: np.ndarray) -> list[np.ndarray]:
        return self.session(graph).run(None, inputs)
