"""MLflow logging: one run per job, metrics sent in batches with explicit steps."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from o2o import metrics as M

log = logging.getLogger(__name__)

OUTPUTS_ENV = "O2O_OUTPUTS"
PRESET_TAG = "preset"  # the experiment= preset a run was composed with ("none" without one)
SETTING_TAG = "setting"  # the preset and a digest of the params outside the algorithm's own (report.setting_tag)
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def default_outputs() -> Path:
    """``outputs/`` of the checkout this package runs from (``src/o2o`` beside its pyproject.toml), wherever a command
    or the Python API is started, so that every run of a clone lands in one store; ``./outputs`` for an installed
    package."""
    package = Path(__file__).resolve().parent
    checkout = package.parents[1]
    if package.parent.name == "src" and (checkout / "pyproject.toml").is_file():
        return checkout / "outputs"
    return Path("outputs")


def outputs_dir() -> Path:
    folder = os.environ.get(OUTPUTS_ENV, str(default_outputs()))
    if not folder.strip():  # Path("") is the current folder: runs would land among the user's files
        from o2o.errors import ConfigError

        raise ConfigError(f"{OUTPUTS_ENV} is set but empty: unset it (outputs/ here) or name a folder")
    return Path(folder).resolve()


def check_writable_folder(path: str, what: str, attempts: int = 3) -> None:
    """``path`` is, or can be made, a folder this process writes in; what the check creates, it removes. Jobs
    started at once check the same folders: one made by another job meanwhile is used, not refused, and one that
    another job's check removed meanwhile is checked again."""
    import tempfile

    from o2o.errors import ConfigError

    folder = Path(path).expanduser().absolute()
    for attempt in range(attempts):
        made = []
        try:
            for parent in [*reversed(folder.parents), folder]:
                if not parent.is_dir():
                    try:
                        parent.mkdir()
                        made.append(parent)
                    except FileExistsError:  # made by another process since, or a file
                        if not parent.is_dir():
                            raise NotADirectoryError(f"{parent} is a file") from None
            tempfile.TemporaryFile(dir=folder).close()
            return
        except OSError as err:
            if isinstance(err, FileNotFoundError) and attempt < attempts - 1:
                continue  # a folder on the way removed by another process's check meanwhile: check again
            reason = err.strerror or str(err)
            raise ConfigError(f"{what} {folder} cannot be written ({reason}): choose a folder you can write in") from None
        finally:
            for created in reversed(made):
                try:
                    os.rmdir(created)
                except OSError:
                    pass


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a sqlite file at an absolute path under outputs/."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri is not None and not uri.strip():
        from o2o.errors import TrackingError

        raise TrackingError("MLFLOW_TRACKING_URI is set but empty: unset it (the store is then a sqlite file under "
                            "outputs/) or name a store")
    if uri:
        return uri
    return f"sqlite:///{outputs_dir() / 'mlflow.db'}"


@contextlib.contextmanager
def store_lock(uri: str):
    """Serialise first-time creation of a sqlite store: parallel jobs' schema migrations race."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri[len("sqlite:///"):]).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_store(uri: str):
    """An MlflowClient on ``uri``. A new sqlite store is created and migrated under a temporary name, then
    renamed into place: a job killed during the first creation leaves no half-migrated store behind."""
    from mlflow.tracking import MlflowClient

    with store_lock(uri):  # the first client creates or migrates the store: one job at a time
        if uri.startswith("sqlite:///"):
            path = Path(uri[len("sqlite:///"):]).resolve()
            if not path.exists():
                for leftover in path.parent.glob(f".{path.name}.creating-*"):  # under the lock: a killed creation's
                    leftover.unlink()
                staging = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex}")  # a new URI: no cached engine
                MlflowClient(f"sqlite:///{staging}").search_experiments(max_results=1)
                os.replace(staging, path)
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    return client


def check_store(uri: str) -> None:
    """Fail within seconds, with one line, when the store cannot be used (before any work)."""
    from o2o.errors import TrackingError

    fix = "start it, or set MLFLOW_TRACKING_URI to a store you can reach (unset: a sqlite file under outputs/)"
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as err:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({type(err).__name__}): {fix}") from None
        return
    if uri.rstrip("/") in ("sqlite:", "sqlite:/", "sqlite://") or ":memory:" in uri:
        raise TrackingError(f"MLflow store {uri} is an in-memory database, which keeps nothing once the job ends: "
                            "unset MLFLOW_TRACKING_URI for the default store (outputs/mlflow.db), or name a sqlite file")
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if path.is_dir():  # MLflow would retry for minutes
            raise TrackingError(f"MLflow store {uri} names a folder, not a sqlite file: name a file in it, e.g. "
                                f"sqlite:///{path / 'mlflow.db'}")
        if not path.exists():  # created by the first run that logs, not by a check
            if not path.absolute().parent.is_dir() and os.environ.get("MLFLOW_TRACKING_URI"):  # outputs/ is made
                raise TrackingError(f"MLflow store {uri}: the folder {path.absolute().parent} does not exist: create "
                                    "it, or name a sqlite file in a folder that exists")
            if path.absolute().parent.is_dir() and not os.access(path.absolute().parent, os.W_OK | os.X_OK):
                raise TrackingError(f"MLflow store {uri}: the folder {path.absolute().parent} cannot be written: "
                                    "name a sqlite file in a folder you can write in")
            return
    elif uri.startswith(("postgresql", "mysql")):
        reach_database_once(uri, fix)
    try:
        open_store(uri)
    except Exception as err:  # unknown scheme, not a database, no permission
        newer = schema_newer_than_mlflow(str(err), uri)
        if newer:
            raise TrackingError(newer) from None
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TrackingError(f"MLflow store {uri} cannot be opened ({detail[:300]}): {fix}") from None


def reach_database_once(uri: str, fix: str, timeout_s: int = 5) -> None:
    """One connection attempt with a short timeout: MLflow's own engine retries a refused connection or a wrong
    password for about two minutes before it says anything."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from o2o.errors import TrackingError

    try:
        url = sqlalchemy.engine.make_url(uri)
    except Exception as err:  # a port that is not a number, a URL SQLAlchemy cannot read
        raise TrackingError(f"MLflow store URI cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}): "
                            f"give it as dialect://user:password@host:port/database") from None
    safe = url.render_as_string(hide_password=True)
    timeout = {"timeout": timeout_s} if url.get_driver_name() == "pg8000" else {"connect_timeout": timeout_s}
    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=timeout)
        with engine.connect():
            pass
    except ModuleNotFoundError as err:
        raise TrackingError(f"MLflow store {safe}: its database driver is not installed ({err.name}): "
                            "pip install -e '.[postgres]' for postgresql://") from None
    except Exception as err:  # refused, wrong password, unknown host, no such database
        detail = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise TrackingError(f"MLflow store {safe} cannot be reached ({(detail[0] if detail else type(err).__name__)[:300]}): "
                            f"{fix}") from None


def schema_newer_than_mlflow(message: str, uri: str) -> str | None:
    """MLflow says "run mlflow db upgrade" for any schema it does not expect; for a store written by a newer MLflow
    (a revision its own migrations do not know) that would not help: say so, with what does."""
    import re

    found = re.search(r"found version (\w+)", message)
    if not found:
        return None
    import mlflow
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from mlflow.store.db.utils import _get_alembic_config

    try:
        ScriptDirectory.from_config(_get_alembic_config(uri)).get_revision(found.group(1))
        return None  # an older schema this MLflow can migrate: its own advice (mlflow db upgrade) holds
    except CommandError:
        return (f"MLflow store {uri} was written by a newer MLflow than this one ({mlflow.__version__}; schema "
                f"{found.group(1)} is unknown to it): install that MLflow here (pip install -U mlflow), or set "
                "MLFLOW_TRACKING_URI to another store")


def param_values(tree: Mapping[str, Any]) -> dict[str, str]:
    """A resolved config as MLflow records it in a run's params: flattened keys, string values cut to MLflow's 6000."""
    return {k: str(v)[:6000] for k, v in flatten(tree).items()}


def store_not_made(uri: str) -> bool:
    """A sqlite store whose file does not exist yet (the first run that logs creates it): it holds no run."""
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def ensure_experiment(client, name: str, uri: str) -> str:
    """The experiment's id, creating it (artifacts beside a sqlite store, not in ./mlruns) if needed."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a parallel job
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


CREATE_RACE_ATTEMPTS = 5


def retry_create_race(write, attempts: int = CREATE_RACE_ATTEMPTS):
    """``write()``, tried again when a parallel job on the same store created the same row between this job's read
    and its insert (MLflow reads, then inserts: datasets, experiment tags); the next try reads that row and uses it.
    Other errors, and the last try's, are raised."""
    for attempt in range(attempts):
        try:
            return write()
        except Exception as err:  # noqa: BLE001 - MLflow wraps the database's IntegrityError in its own exception
            text = str(err)
            raced = ("UNIQUE constraint failed" in text or "IntegrityError" in text
                     or "duplicate key value violates unique constraint" in text)  # sqlite, any, PostgreSQL
            if not raced or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


PARENT_RUN_ENV = "O2O_PARENT_RUN_ID"  # a sweep's parent run id, handed to its jobs
PLANNED_RUNS_TAG = "planned_runs"  # on a sweep's parent: how many jobs its latest part runs (o2o.launchers)
PLANNED_JOBS_TAG = "planned_jobs"  # those jobs, a JSON list, each as the overrides that change what it computes


class Tracker:
    """A thin, batching wrapper around one MLflow run."""

    def __init__(self, experiment: str, run_name: str | None, params: Mapping[str, Any], tags: Mapping[str, str],
                 tracking_uri: str | None = None, run_id: str | None = None, parent_run_id: str | None = None,
                 system_metrics_interval: float | None = None):
        """Start a run, or continue ``run_id``: params are not logged again and metric points
        at steps already logged are not sent twice. With ``system_metrics_interval`` (seconds), MLflow's
        system metrics monitor samples the machine until :meth:`end`."""
        import mlflow

        self.uri = tracking_uri or default_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        self.client = open_store(self.uri)
        self._pending: list = []
        self._logged_up_to: dict[str, int] = {}
        self._said_not_finite: set[str] = set()
        self._monitor = None
        if run_id is not None:
            self.run_id = run_id
            run = self.client.get_run(run_id)
            self.experiment_id = run.info.experiment_id
            self.client.update_run(run_id, status="RUNNING")
            self.set_tags(tags)
            for key in run.data.metrics:
                self._logged_up_to[key] = max(m.step for m in self.client.get_metric_history(run_id, key))
        else:
            self.experiment_id = ensure_experiment(self.client, experiment, self.uri)
            tags = {k: str(v) for k, v in tags.items()}  # the REST store takes strings only
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id
            self.log_params(params)
        if system_metrics_interval:
            self._start_system_metrics(system_metrics_interval, resumed=run_id is not None)

    def _start_system_metrics(self, interval: float, resumed: bool) -> None:
        """MLflow's monitor (``system/*`` metrics); a resumed run continues its steps."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval, resume_logging=resumed,
                                             tracking_uri=self.uri)
        self._monitor.start()

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in param_values(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metrics; they are sent when the queue is full or on flush. NaN and inf are skipped (MLflow keeps
        finite values), and the first time a metric is, the log says so: its curve has a gap there."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            value = float(value)
            if not math.isfinite(value):
                expected = key.rsplit("/", 1)[-1] in (*M.DATA_DEPENDENT, M.NORMALIZED_RETURN)  # said where they arise
                if not expected and key not in self._said_not_finite:
                    self._said_not_finite.add(key)
                    log.warning("%s is %s at step %d: MLflow keeps finite values only, so its curve has a gap there",
                                key, value, step)
                continue
            if step > self._logged_up_to.get(key, -1):
                self._pending.append(Metric(key, value, now, int(step)))
        if len(self._pending) >= MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            chunk, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or every file of a folder."""
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self.flush()
        self.client.set_terminated(self.run_id, status=status)
