"""Console scripts: ``hf-run``, and the optional parts' ``hf-train`` and ``hf-export``.

They need the ``train`` extra (torch, onnx, onnxsim); on a runtime-only install the user gets one
line saying so, not a 39-line traceback. Nothing here imports torch: the check only looks the
modules up, and the real CLI is imported once they are known to be there."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _launch(script: str, module: str, needs: tuple[str, ...]) -> None:
    os.environ.setdefault("TYPER_USE_RICH", "0")  # plain help, like hf-run's (rich cuts long choices short)
    missing = _missing(needs)
    if not missing:
        try:
            main = importlib.import_module(module).main
        except ImportError as e:
            if (e.name or "").split(".")[0] not in needs:
                raise
            missing = [e.name.split(".")[0]]
    if missing:
        print(f"error: {script} needs the train extra ({', '.join(missing)} not installed): "
              "pip install 'hybridflow[train]'", file=sys.stderr)
        raise SystemExit(1)
    main()


def train() -> None:
    _launch("hf-train", "hybridflow.models.train.cli", ("torch", "tqdm"))


def export() -> None:
    _launch("hf-export", "hybridflow.export.cli", ("torch", "onnx", "onnxsim"))


BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def single_threaded_blas() -> None:
    """numpy's BLAS only runs the integer hyper synthesis' small matrix products, yet by default it
    starts a spinning thread per core: +50 % CPU per image next to ``--threads 1`` (measured under
    Ray, whose workers set these variables). The library reads them when numpy is first imported,
    so this must run before that; a value the user set wins."""
    for var in BLAS_THREADS:
        os.environ.setdefault(var, "1")


def run() -> None:
    single_threaded_blas()
    from .cli import main

    main()
