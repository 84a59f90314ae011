"""--runtime auto: the fastest runtime that gives the run's own answers.

ONNX Runtime (about twice PyTorch's speed on a CPU: BENCHMARKS.md) where it is installed, the model runs
on the CPU and the run's model.onnx was made from the run's current weights, which export checked
against PyTorch before it kept the file; else PyTorch. A missing or stale RUN/model.onnx is exported on
demand, with the same parity check, under a lock (a second process waits and then finds it done) and
atomically. What was chosen, and why, is said in one line."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..devices import resolve_device
from ..errors import ImgtuneError, RunFolderError
from ..progress import Reporter
from ..runs.folder import RunFolder

PARITY_IMAGES = 256  # validation images an on-demand export is checked on (export itself checks them all)


def choose_runtime(run_dir: str | os.PathLike, runtime: str = "auto", *, device: str = "auto",
                   needs_gradients: str | None = None, reporter: Reporter | None = None) -> tuple[str, str]:
    """-> (the runtime to load the run with, a line saying why). `needs_gradients` names what needs
    PyTorch (--explain); an explicit runtime is kept as it is (a missing RUN/model.onnx is exported for
    runtime onnx too)."""
    run = RunFolder(run_dir)
    run.read_config()  # not a finished run: its own one-line error, before anything is exported
    if runtime == "onnx" and not (run.path / "model.onnx").is_file():
        _export_once(run, reporter)
        return runtime, f"Runtime: ONNX Runtime ({run.path / 'model.onnx'} exported now, checked against PyTorch)."
    if runtime == "onnx" and _made_from_other_weights(run):  # another run's file, or one from before a retrain
        raise RunFolderError(f"{str(run.path / 'model.onnx')!r} was not exported from this run's weights "
                             "(its recorded weights_sha256 or classes differ): export it again with `imgtune "
                             "export RUN`, or use --runtime auto, which does that itself.")
    if runtime != "auto":
        return runtime, ""
    if needs_gradients:
        return "torch", f"Runtime: PyTorch ({needs_gradients} needs gradients, which ONNX Runtime does not have)."
    if resolve_device(device).type != "cpu":
        return "torch", "Runtime: PyTorch (on the GPU)."
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch", "Runtime: PyTorch (ONNX Runtime is not installed: pip install 'imgtune[onnx]' for ~2x)."
    onnx_file = run.path / "model.onnx"
    if is_current(run):
        return "onnx", f"Runtime: ONNX Runtime ({onnx_file}, checked against PyTorch when it was exported)."
    try:
        _export_once(run, reporter)
    except RunFolderError:  # the run itself is broken: loading it on PyTorch would say the same
        raise
    except (ImgtuneError, OSError) as e:
        return "torch", f"Runtime: PyTorch (could not export {onnx_file}: {_one_line(e)})."
    return "onnx", f"Runtime: ONNX Runtime ({onnx_file} exported now, checked against PyTorch)."


def is_current(run: RunFolder) -> bool:
    """RUN/model.onnx exists, reads as an imgtune export, and was made from the run's current weights
    for the classes its config.json lists."""
    meta = _export_metadata(run)
    return meta is not None and _made_from(run, meta)


def _export_metadata(run: RunFolder) -> dict | None:
    """The metadata of RUN/model.onnx, or None where there is no such file or it does not read as one."""
    from ..model.onnx_module import metadata, read_checked

    path = run.path / "model.onnx"
    if not path.is_file():
        return None
    try:
        return metadata(read_checked(path))
    except ImgtuneError:
        return None


def _made_from(run: RunFolder, meta: dict) -> bool:
    """The export's recorded weights and classes are the run's own."""
    from .export import weights_digest

    made_from = meta.get("weights_sha256")
    return made_from is not None and made_from == weights_digest(run) \
        and meta.get("classes") == run.read_config().get("classes")


def _made_from_other_weights(run: RunFolder) -> bool:
    """RUN/model.onnx reads as an imgtune export but records other weights or classes than the run's. A
    file that does not read as one is left to the loader, whose error says what is wrong with it."""
    meta = _export_metadata(run)
    return meta is not None and meta.get("weights_sha256") is not None and not _made_from(run, meta)


def _export_once(run: RunFolder, reporter: Reporter | None) -> None:
    """Export RUN/model.onnx unless another process did while this one waited for the lock."""
    from ..runs.trained import load_run
    from .export import export_onnx

    with _locked(run.path / ".model.onnx.lock"):
        if is_current(run):
            return
        (reporter or Reporter(quiet=True)).say(f"Exporting {run.path / 'model.onnx'} for ONNX Runtime "
                                               "(once; checked against PyTorch first) ...")
        export_onnx(load_run(run.path, device="cpu", runtime="torch"), run.path / "model.onnx",
                    reporter=reporter, parity_images=PARITY_IMAGES)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on `path` (created if need be) for the block, released by the system
    however the process ends."""
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _one_line(e: BaseException) -> str:
    text = getattr(e, "strerror", None) and f"{e.strerror}: {e.filename}" or str(e)
    return " ".join(str(text).split())[:300]
