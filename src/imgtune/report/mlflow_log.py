"""`train --mlflow [URI]`: the fit as an MLflow run, in experiment "imgtune" ($MLFLOW_EXPERIMENT_NAME),
named after the run folder.

Parameters: the settings, flattened with '.' (recipe.head.lr, recipe.finetune.epochs, backbone, seed,
...), then the resolved data_config.* and counts.*. Metrics: every epoch of both stages (head/loss,
fine-tune/val_accuracy, ...; step = the stage's epoch), then metrics.json's numbers under its split's
name (test/accuracy, test/per_class/<class>/f1; multi-label: test/map, test/per_label/<label>/ap).
Artifacts: report.html, metrics.json, config.json.

The server is reached once before any training: a wrong URI is one line, not a stack of retries. A
failure later is said once and the fit goes on: the run folder keeps everything."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import ConfigError, ImgtuneError, ParameterError, require

EXPERIMENT = "imgtune"
ARTIFACTS = ("report", "metrics", "config")  # RunFolder's report.html, metrics.json, config.json
FEATURE = "MLflow tracking (mlflow=..., --mlflow)"
_BATCH = 100  # MLflow takes at most 100 parameters (1,000 metrics) per call
_MAX_VALUE = 6000  # characters of a parameter value


def check(mlflow) -> None:
    """At the door, before any work: `mlflow` is None/False (off), True (MLFLOW_TRACKING_URI or MLflow's
    default) or a tracking URI, and the package is installed when it is on."""
    if mlflow is None or isinstance(mlflow, bool):
        pass
    elif not isinstance(mlflow, str) or not mlflow.strip():
        raise ParameterError("mlflow", f"{{name}} must be True or a tracking URI (http://host:5000, "
                                       f"sqlite:///mlflow.db, ...); received {mlflow!r}.")
    if mlflow:
        require(("mlflow",), packages="the mlflow package", extra="mlflow", feature=FEATURE)


class MlflowLog:
    def __init__(self, uri: str | None, run, settings: dict, say):
        """A new MLflow run for the run folder `run`, its parameters `settings` logged; ParameterError
        when the tracking server or store cannot be used."""
        check(uri or True)
        import mlflow
        from mlflow.tracking import MlflowClient

        self.say, self.broken, self.run_id = say, False, None
        self.logged: dict[tuple[str, int], dict] = {}  # (stage, epoch) -> the record logged for it
        where = uri or mlflow.get_tracking_uri()
        given = "" if uri else " (from MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") else \
            " (MLflow's default)"
        if where.startswith(("http://", "https://")):
            _reach(where, given)
        else:
            _check_local_store(where, given)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        try:
            self.client = MlflowClient(tracking_uri=where)
            experiment = _experiment(self.client, name)
            folder = Path(run.path).resolve()
            self.run_id = self.client.create_run(experiment, run_name=folder.name,
                                                 tags={"imgtune.run_folder": str(folder)}).info.run_id
            self._params(settings)
        except Exception as e:  # MLflow's, SQLAlchemy's, the file system's errors: one line each
            if self.run_id is not None:
                self.close("FAILED")
            if isinstance(e, ImgtuneError):
                raise
            raise ParameterError("mlflow", f"The MLflow tracking store at {where}{given} cannot be used: "
                                           f"{_first_line(e).rstrip('.')}. Check it, or give {{name}} another "
                                           "tracking URI.") from None
        say(f"MLflow: run {folder.name!r} ({self.run_id}) in experiment {name!r} at {where}.")

    def epoch(self, record: dict, step: int) -> None:
        """`step` is the time line across both stages (TensorBoard's); MLflow's step is the stage's own
        epoch, the metric's name says the stage."""
        self._safely(self._epochs, [record])

    def finish(self, run, history: list[dict]) -> None:
        """After the run folder is written: the epochs not logged yet (a resumed fit's earlier ones,
        fine-tune's epoch 0), the resolved settings, the final metrics and the artifacts."""
        self._safely(self._finish, run, history)

    def close(self, status: str = "FINISHED") -> None:
        """Ends the MLflow run, except once logging broke: a server that is gone would only be waited for."""
        if self.broken:
            return
        with contextlib.suppress(Exception):
            self.client.set_terminated(self.run_id, status=status)

    @classmethod
    @contextlib.contextmanager
    def maybe(cls, mlflow: bool | str | None, run, settings: dict, say):
        """A log while inside when `mlflow` is True or a URI, else one whose methods do nothing. The
        MLflow run ends FINISHED, FAILED on an error, KILLED on Ctrl-C."""
        if not mlflow:
            yield _Off()
            return
        with _fail_fast():
            log = cls(None if mlflow is True else mlflow, run, settings, say)
            try:
                yield log
            except KeyboardInterrupt:
                log.close("KILLED")
                raise
            except BaseException:
                log.close("FAILED")
                raise
            log.close()

    # -- what is logged ---------------------------------------------------------------------------
    def _epochs(self, records: list[dict]) -> None:
        metrics = []
        for r in records:
            if self.logged.get((r["stage"], r["epoch"])) == r:
                continue  # a restarted fine-tune's epochs differ, and are logged at the same steps again
            self.logged[(r["stage"], r["epoch"])] = r
            metrics += [(f"{r['stage']}/{k}", v, r["epoch"]) for k, v in r.items()
                        if k not in ("stage", "epoch") and _number(v)]
        self._metrics(metrics)

    def _finish(self, run, history: list[dict]) -> None:
        self._epochs(history)
        config = json.loads(Path(run.config).read_text(encoding="utf-8"))
        self._params({"data_config": config.get("data_config", {}), "counts": config.get("counts", {}),
                      "classes": json.dumps(config.get("classes", []))})
        metrics = json.loads(Path(run.metrics).read_text(encoding="utf-8"))
        self._metrics([(k, v, 0) for k, v in final_metrics(metrics).items()])
        for name in ARTIFACTS:
            path = Path(getattr(run, name))
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def _params(self, settings: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:_MAX_VALUE]) for k, v in flatten(settings).items()]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + _BATCH])

    def _metrics(self, metrics: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v, step in metrics]
        for i in range(0, len(rows), 10 * _BATCH):
            self.client.log_batch(self.run_id, metrics=rows[i:i + 10 * _BATCH])

    def _safely(self, f, *args) -> None:
        """Tracking is not worth a fit: the first failure is said, and logging stops."""
        if self.broken:
            return
        try:
            f(*args)
        except Exception as e:  # noqa: BLE001  a server gone, a full disk: the fit matters more
            self.broken = True
            self.say(f"MLflow: logging stopped ({type(e).__name__}: {_first_line(e)}); the fit goes on, the "
                     "run folder keeps everything, and the MLflow run is left as it is.")


# MLflow's HTTP client retries a failed request 7 times with a growing back-off, each waiting up to 120 s:
# a server lost mid-run once stalled a 45 s fit for 9 minutes. Tracking is not worth that: one try, 10 s.
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextlib.contextmanager
def _fail_fast():
    """MLflow's HTTP settings at FAIL_FAST while inside, where the user has not set them; restored after."""
    mine = {k: v for k, v in FAIL_FAST.items() if k not in os.environ}
    os.environ.update(mine)
    try:
        yield
    finally:
        for k in mine:
            os.environ.pop(k, None)


def _check_local_store(where: str, given: str) -> None:
    """A sqlite:/// or file: store whose path cannot hold it is one line here, before MLflow retries
    creating it 10 times (sqlite) or answers with its maintenance-mode text (file)."""
    if where.startswith("sqlite:///"):
        path = Path(where[len("sqlite:///"):])
    elif where.startswith("file:"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(where).path))
    elif "://" not in where:
        path = Path(where)
    else:
        return
    folder = path.parent if where.startswith("sqlite:") else path
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    problem = None
    if existing is None or not existing.is_dir():
        problem = f"{str(existing)!r} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK) or str(existing.resolve()).startswith(("/proc", "/sys")):
        problem = f"{str(existing)!r} cannot be written to"
    elif where.startswith("sqlite:") and path.is_dir():
        problem = f"{str(path)!r} is a folder, not a database file"
    if problem:
        raise ParameterError("mlflow", f"The MLflow tracking store at {where}{given} cannot be used: {problem}. "
                                       "Give {name} another tracking URI.")


class _Off:
    def epoch(self, record: dict, step: int) -> None:
        pass

    def finish(self, run, history: list[dict]) -> None:
        pass


def flatten(d: dict, prefix: str = "") -> dict:
    """{"recipe": {"head": {"lr": 0.001}}} -> {"recipe.head.lr": 0.001}; lists stay whole."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def final_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json's numbers (lists and pictures left out) as MLflow metric names under the split's
    name: test/accuracy, test/top_k_accuracy/1, test/per_class/<class>/f1, test/baselines/majority/..."""
    classes = metric_names(metrics.get("classes", []))
    out = {}

    def walk(d: dict, prefix: str, names: dict) -> None:
        for k, v in d.items():
            name = names.get(k) or _segment(str(k))
            if isinstance(v, dict):
                walk(v, f"{prefix}{name}/", classes if k in ("per_class", "per_label") else {})
            elif _number(v):
                out[f"{prefix}{name}"] = float(v)

    walk({k: v for k, v in metrics.items() if k != "split"}, f"{metrics.get('split', 'test')}/", {})
    return out


def metric_names(classes: list[str]) -> dict[str, str]:
    """Each class name as one segment of a metric name, unique: 'golden retriever' -> 'golden_retriever';
    a second class that reads the same once cleaned gets _2."""
    out, taken = {}, set()
    for c in classes:
        name, n = _segment(c), 1
        while name in taken:
            n += 1
            name = f"{_segment(c)}_{n}"
        out[c] = name
        taken.add(name)
    return out


def _segment(text: str) -> str:
    """Letters (any script), digits, '_', '-' and '.' only (MLflow refuses other characters, and '/'
    nests names); not only dots ('..' reads as a folder)."""
    clean = re.sub(r"[^\w.\-]", "_", text)[:100]
    return "_" if not clean.strip(".") else clean


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _experiment(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException:  # another process created it in between
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise ConfigError(f"The MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore "
                          f"--experiment-id {found.experiment_id}), or set MLFLOW_EXPERIMENT_NAME to another name.")
    return found.experiment_id


def _reach(uri: str, given: str) -> None:
    """One request with a short timeout, before MLflow's own client retries for minutes. Any answer
    counts, an HTTP error or a TLS refusal too: only no answer at all is refused here."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLError):
            return
        raise ParameterError("mlflow", f"Cannot reach the MLflow tracking server at {uri}{given}: {reason}. "
                                       "Start it (mlflow server --port ...), or give {name} another tracking "
                                       "URI.") from None


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
