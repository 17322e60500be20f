"""A study's finished runs kept beside its page, so that the study outlives the machine it ran on.

A study may span sessions, and the machine it runs on, with the sweep folder, the MLflow store and the checkpoints
on it, may not be there for the next one. ``o2o-study`` therefore writes each finished child of its sweep as one
record, ``<records>/<run_id>.json.gz``: the run's params, tags, start and end times; the whole history, as (step,
value), of each metric the pages and the report read (o2o.report.history_keys: evaluations, calibration, the
training Q and V_ref series, the cumulative regret), of every evaluation, calibration and reference metric, and of
the per-episode success; and the last four points of every other metric (the window of the mechanism figures in
docs/results/README.md). A metric whose values are all float32 (the agent's) is written in float32's shortest
decimal form and read back as the very values MLflow holds. System metrics and timestamps are left out (``o2o-study
--full-records`` keeps every metric with its timestamps). The parent's study tags (command, commits, wall time) go
to ``<records>/parent.json``; ``<records>`` is ``<page folder>/<name>-<budget>/records``, committed with the page.
On a machine whose store lacks them, the same command restores them into its store as children of its sweep's parent
run (the records' ``archived_run_id`` tag names the original run), and the sweep's jobs that already have a finished
run there do nothing (:func:`finished_in_sweep`). Artifacts (policy models, per-run plots, the resolved config file)
are not kept: the page rebuilds its figures from the metrics.

The data too: a dataset built here (``o2o-data build-adroit``, or collected on first use) is named in
``parent.json`` by its data file's SHA-256 and the recipe that builds it (the ``o2o-data`` command, or the
collector's params). Its archive (``dataset-<name>.tar.xz``) is written beside the records for this machine but kept
out of git (it can be megabytes). Where the dataset is missing, the study unpacks the archive if it is there (or in
this repository's history: pen_o2o's was committed before archives left git), else builds the dataset again from its
recipe, and stops before any job, with one line, if that build is not the one the
runs trained on (a build is not the same on every machine: pen's AWAC recipe kept 36,147 transitions on one machine
and 33,554 on another, same code and seed); a machine holding another build of the same id stops it too
(:func:`restore_dataset`).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import math
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np

from o2o.errors import ConfigError
from o2o.tracking import MAX_BATCH, PARENT_RUN_ENV, PLANNED_JOBS_TAG, PLANNED_RUNS_TAG, param_values

# format 3: metric points [step, value] (full records: [step, value, timestamp]), and the metrics named in FLOAT32
# written in float32's shortest decimal form, read back exactly; format 2: every value in float64's form;
# format 1: every metric, timestamped
FORMAT = 3
READABLE = (1, 2, 3)
FLOAT32 = "float32"  # a record's metrics whose every value is a float32 (what the agent logged): half the digits
SYSTEM_PREFIX = "system/"  # MLflow's system metrics
PARENT_FILE = "parent.json"
ARCHIVED_TAG = "archived_run_id"  # on a restored run: the id of the run its record was written from
# the parent's tags that belong to the study, not to one machine's sweep folder
STUDY_TAGS = ("study_command", "study_commit", "study_wall_s", "overrides", "study", PLANNED_RUNS_TAG,
              PLANNED_JOBS_TAG)
NOT_COPIED = ("mlflow.parentRunId",)  # a restored run gets the parent of the store it is restored into
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call


def children(client, parent: str, status: str | None = "FINISHED") -> list:
    experiment = client.get_run(parent).info.experiment_id
    where = f"tags.mlflow.parentRunId = '{parent}'" + (f" and attributes.status = '{status}'" if status else "")
    return client.search_runs([experiment], where, max_results=5000)


def run_record(client, run, full: bool = False) -> dict:
    """One finished run as plain JSON: what the pages, the report and a recomputation of the regret read of it, and
    the last value of every other metric; with ``full``, everything MLflow holds but its artifacts."""
    metrics = {key: sorted([m.step, m.value, m.timestamp] for m in client.get_metric_history(run.info.run_id, key))
               for key in run.data.metrics}
    record = {"format": FORMAT, "run_id": run.info.run_id, "run_name": run.info.run_name,
              "status": run.info.status, "start_time": run.info.start_time, "end_time": run.info.end_time,
              "params": dict(run.data.params),
              "tags": {k: v for k, v in run.data.tags.items() if k not in NOT_COPIED},
              "metrics": metrics}
    return record if full else compact(record)


WHOLE_GROUPS = ("/eval/", "/calibration/", "/reference/")  # evaluations, the fixed-batch probe, V_ref's errors
LAST_POINTS = 4  # of every other metric: the window of the mechanism figures (docs/results/README.md)


def kept_histories(record: dict) -> set[str]:
    """The metrics whose whole history a compact record keeps: o2o.report.history_keys (under the names the run
    logged them by), every evaluation, calibration and reference metric, and the per-episode success."""
    from o2o import metrics as M
    from o2o.report import METRIC_PARAM, history_keys, legacy_name

    keys = {*history_keys(record["params"].get(METRIC_PARAM, "?")), M.train(M.ONLINE, M.EPISODE_SUCCESS)}
    keys |= {key for key in record["metrics"] if any(group in key for group in WHOLE_GROUPS)}
    return keys | {legacy_name(key) for key in keys}


def compact(record: dict) -> dict:
    """A record (either format) as a compact one: no system metrics, no timestamps, whole histories of
    :func:`kept_histories`, the last ``LAST_POINTS`` points of every other metric (in the order logged)."""
    keep = kept_histories(record)
    metrics = {}
    for key, points in record["metrics"].items():
        if key.startswith(SYSTEM_PREFIX) or not points:
            continue
        points = [[p[0], p[1]] for p in sorted(points, key=lambda p: (p[0], p[2] if len(p) > 2 else 0))]
        metrics[key] = points if key in keep else points[-LAST_POINTS:]
    return {**record, "format": FORMAT, "metrics": metrics}


def shortened(record: dict) -> dict:
    """``record`` as written: each metric whose every value is a float32 (the agent's tensors are) in float32's
    shortest decimal form, about 9 digits instead of 17, and named in ``FLOAT32``; :func:`widened` reads back the
    very float64 values MLflow holds. A metric with any value that is not a float32 is written as it is."""
    metrics, short = {}, []
    for key, points in record["metrics"].items():
        with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf, so its metric stays as it is
            written = [[p[0], float(str(np.float32(p[1]))), *p[2:]] for p in points]
        if all(exactly(w[1], p[1]) for w, p in zip(written, points)):
            metrics[key] = written
            short.append(key)
        else:
            metrics[key] = points
    return {**record, "format": FORMAT, "metrics": metrics, FLOAT32: short}


def read_back(written: float) -> float:
    """A value written in float32's form as the float64 it was: through float32."""
    return float(np.float32(written))


def exactly(written: float, value: float) -> bool:
    """Whether ``written`` reads back as ``value`` (NaN as NaN)."""
    back = read_back(written)
    return back == value or (math.isnan(back) and math.isnan(value))


def widened(record: dict) -> dict:
    """A record as read: the metrics written in float32's form (:func:`shortened`) as the float64 values they were."""
    short = set(record.pop(FLOAT32, ()))
    for key in short & record["metrics"].keys():
        record["metrics"][key] = [[p[0], read_back(p[1]), *p[2:]] for p in record["metrics"][key]]
    return record


def write_records(client, parent: str, folder: Path, full: bool = False) -> list[Path]:
    """Each finished child of ``parent`` not yet in ``folder`` (``full``: with every metric and its timestamps),
    and the parent's study tags (rewritten each time: its wall time grows); returns the files written."""
    tags = client.get_run(parent).data.tags
    origin = tags.get(ARCHIVED_TAG, parent)
    parent_file = folder / PARENT_FILE
    if parent_file.exists() and (kept := read_parent(parent_file)["run_id"]) != origin:
        raise ConfigError(f"{folder} holds the records of the sweep run {kept}, not of {parent}: give this sweep its "
                          "own records folder (o2o-study --records DIR)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for run in children(client, parent):
        path = folder / f"{run.data.tags.get(ARCHIVED_TAG, run.info.run_id)}.json.gz"
        if not path.exists():
            partial = path.with_name(path.name + ".partial")  # a record is whole or absent, also when killed
            with gzip.open(partial, "wt") as handle:
                json.dump(shortened(run_record(client, run, full)), handle)
            partial.replace(path)
            written.append(path)
    kept = read_parent(parent_file)["datasets"] if parent_file.exists() else {}
    for run in children(client, parent, status=None):  # from the first job on: the data is what a run starts from
        dataset = run.data.tags.get("dataset")
        if dataset and dataset not in kept and built_here(dataset):
            kept[dataset] = keep_dataset(dataset, folder)
            written.append(folder / kept[dataset]["file"])
    parent_file.write_text(json.dumps({"format": FORMAT, "run_id": origin, "datasets": kept,
                                       "tags": {k: tags[k] for k in STUDY_TAGS if k in tags}}, indent=1) + "\n")
    return [*written, parent_file]


def built_here(dataset_id: str) -> bool:
    """A Minari dataset of a namespace of our own, present here: built on some machine, not downloadable."""
    from o2o.data.minari import OFFICIAL_NAMESPACES, minari_is_local

    return "/" in dataset_id and dataset_id.split("/")[0] not in OFFICIAL_NAMESPACES and minari_is_local(dataset_id)


def data_file(dataset_id: str) -> Path:
    from o2o.data.minari import minari_root

    return Path(minari_root()) / dataset_id / "data" / "main_data.hdf5"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_recipe(dataset_id: str) -> dict | None:
    """How the dataset was built, as its builder recorded it: ``{"o2o-data": [args]}`` or ``{"collector": params}``."""
    from o2o.data.build.cli import BUILD_RECORD
    from o2o.data.build.collectors import COLLECTOR_RECORD
    from o2o.data.minari import minari_root

    folder = Path(minari_root()) / dataset_id
    if (folder / BUILD_RECORD).is_file():
        return json.loads((folder / BUILD_RECORD).read_text())
    if (folder / COLLECTOR_RECORD).is_file():
        return {"collector": json.loads((folder / COLLECTOR_RECORD).read_text())}
    return None


def keep_dataset(dataset_id: str, folder: Path) -> dict:
    """The Minari dataset's folder as ``dataset-<name>.tar.xz`` in ``folder`` (for this machine; git ignores it), and
    what identifies it and builds it again."""
    from o2o.data.build.awac_recipe import BC_WEIGHTS
    from o2o.data.minari import minari_root

    name = "dataset-" + dataset_id.replace("/", "-") + ".tar.xz"
    partial = folder / (name + ".partial")
    with tarfile.open(partial, "w:xz") as tar:
        tar.add(Path(minari_root()) / dataset_id, arcname=dataset_id)
    partial.replace(folder / name)
    recipe = dataset_recipe(dataset_id)
    weights = Path(minari_root()) / dataset_id / BC_WEIGHTS
    if recipe and "o2o-data" in recipe and weights.is_file():  # a few hundred kB that make a rebuild the same anywhere
        kept = name.replace(".tar.xz", "-bc.npz")
        shutil.copy2(weights, folder / kept)
        if Path(str(weights) + ".json").is_file():
            shutil.copy2(str(weights) + ".json", str(folder / kept) + ".json")
        recipe = {"o2o-data": [*recipe["o2o-data"], "--awac-bc-weights", kept]}
    return {"file": name, "sha256": sha256(data_file(dataset_id)), "recipe": recipe}


def rebuild_dataset(dataset_id: str, recipe: dict | None, collect=None, folder: Path | None = None) -> str:
    """Build the dataset again from its recipe; returns the recipe as a command line. ``collect(dataset_id,
    params)``: how a collected dataset is collected (the study composes its env); an ``o2o-data`` recipe runs that
    command with the assets found where o2o-data looks for them."""
    import subprocess
    import sys

    if recipe and "o2o-data" in recipe:
        args = recipe["o2o-data"]
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args) or args[-1] == "--awac-bc-weights":
            raise ConfigError(f"the recipe of {dataset_id} in {PARENT_FILE} is not a list of o2o-data arguments: "
                              "restore the file from git (git checkout -- <file>)")
        if "awac-recipe" in dataset_id and "--awac-bc-weights" not in args:
            raise ConfigError(f"{dataset_id} was built before its BC policy was kept, and a new BC fit differs between "
                              "CPU kinds (docs/data.md): its data come back only from its archive, from the machine that "
                              "built it or from this repository's whole history (git fetch --unshallow); or start "
                              "the study again here with --new --records DIR")
        args = list(args)
        if "--awac-bc-weights" in args and folder is not None:  # kept beside the records
            at = args.index("--awac-bc-weights") + 1
            args[at] = str(folder / args[at])
        argv = [sys.executable, "-m", "o2o.data.build.cli", *args]
        print(f"building {dataset_id} again from its recipe (o2o-data {' '.join(recipe['o2o-data'])}): minutes",
              flush=True)
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"{dataset_id} could not be built again from its recipe (o2o-data "
                              f"{' '.join(recipe['o2o-data'])}): {tail}")
        return "o2o-data " + " ".join(recipe["o2o-data"])
    if recipe and "collector" in recipe:
        if collect is None:
            raise ConfigError(f"{dataset_id} is collected by its study's preset: restore it with o2o-study")
        collect(dataset_id, recipe["collector"])
        return "collected with " + " ".join(f"{k}={v}" for k, v in sorted(recipe["collector"].items()))
    raise ConfigError(f"{dataset_id}, the dataset the study's runs trained on, is not here, its archive is not in the "
                      "records folder and no recipe to build it again is recorded: restore the archive from the "
                      "machine that built it")


def read_parent(parent_file: Path) -> dict:
    """``parent.json`` as written by :func:`write_records`; one that is not such a record (cut, edited, of a newer
    format) stops with one line."""
    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{parent_file} is not a study's parent record ({why}): restore it from git "
                           "(git checkout -- <file>)")

    try:
        parent = json.loads(parent_file.read_text())
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise refuse(str(err).splitlines()[0][:120]) from None
    if isinstance(parent, dict) and parent.get("format", 1) not in READABLE:
        raise ConfigError(f"{parent_file} is a record of format {parent.get('format')!r}, this code reads "
                          f"{' and '.join(map(str, READABLE))}: read it with the commit that wrote it")
    if not isinstance(parent, dict) or not isinstance(parent.get("run_id"), str):
        raise refuse("no sweep run id")
    datasets, tags = parent.setdefault("datasets", {}), parent.setdefault("tags", {})
    if not isinstance(datasets, dict) or not isinstance(tags, dict):
        raise refuse("its datasets or tags are not a mapping")
    if not all(isinstance(k, dict) and isinstance(k.get("file"), str) and isinstance(k.get("sha256"), str)
               for k in datasets.values()):
        raise refuse("a dataset without its file or SHA-256")
    return parent


def kept_datasets(parent_file: Path) -> dict[str, dict]:
    """The datasets ``parent.json`` names, each with its archive's name and its SHA-256."""
    return read_parent(parent_file)["datasets"]


def archive_from_history(archive: Path) -> str | None:
    """Put back an archive that an earlier commit of this repository held (study datasets were committed before they
    left git: pen_o2o's, whose BC policy was not kept, so no rebuild reproduces it); returns that commit, or None
    where the folder is not in a git checkout or its history never held the file. Its SHA-256 is checked after."""
    import subprocess

    def git(folder: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, timeout=120)

    try:
        found = git(archive.parent, "rev-parse", "--show-toplevel")
        if found.returncode:
            return None
        top = Path(found.stdout.decode().strip()).resolve()
        path = archive.parent.resolve().relative_to(top).joinpath(archive.name).as_posix()
        commit = git(top, "log", "--all", "-1", "--format=%H", "--diff-filter=D", "--", path).stdout.decode().strip()
        blob = git(top, "show", f"{commit}^:{path}") if commit else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    if blob is None or blob.returncode:
        return None
    partial = archive.with_name(archive.name + ".partial")
    try:
        partial.write_bytes(blob.stdout)
        partial.replace(archive)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"{archive} could not be put back from this repository's history (commit {commit[:12]}): "
                          f"{err.strerror or err}") from None
    return commit[:12]


def restore_dataset(folder: Path, collect=None) -> list[str]:
    """The datasets the study's runs trained on, where they are missing unpacked from their archive or, without it,
    built again from their recipe (``collect``: see :func:`rebuild_dataset`); returns their ids. Another build of
    the same id here, or a build that does not reproduce the runs' data, stops the study (its runs would train on
    other data)."""
    from o2o.data.minari import minari_is_partial, minari_root

    parent_file = folder / PARENT_FILE
    if not parent_file.exists():
        return []
    restored = []
    for dataset_id, kept in kept_datasets(parent_file).items():
        here = data_file(dataset_id)
        if here.exists():
            if sha256(here) != kept["sha256"]:
                raise ConfigError(f"{here.parent.parent} is another build of {dataset_id} than the one this study's "
                                  f"runs trained on (its data file's SHA-256 differs; builds differ between "
                                  f"machines): move it away, and the study restores its own from {folder / kept['file']}")
            continue
        if minari_is_partial(dataset_id):
            raise ConfigError(f"{here.parent.parent} is an incomplete dataset folder: remove it, and the study "
                              f"restores {dataset_id} from {folder / kept['file']}")
        archive = folder / kept["file"]
        commit = None if archive.is_file() else archive_from_history(archive)
        if commit:
            print(f"{archive.name} put back from this repository's history (it left git in commit {commit})",
                  flush=True)
        if archive.is_file():
            origin = f"{archive} (from this repository's history, commit {commit})" if commit else str(archive)
            advice = ("copy the archive from the machine that built it into the records folder, or start the study "
                      "again here with --new --records DIR" if commit else
                      "remove it, and the study builds the dataset again from its recipe")
            try:
                with tarfile.open(archive, "r:xz") as tar:
                    tar.extractall(minari_root(), filter="data")
                unpacked = sha256(here) if here.is_file() else None
            except (tarfile.TarError, EOFError, lzma.LZMAError, OSError) as error:
                unpacked, why = None, f"cannot be unpacked ({error})"
            else:
                why = (f"does not hold the data its record names (SHA-256 {unpacked[:12]}..., the runs' "
                       f"{kept['sha256'][:12]}...)" if unpacked else f"does not hold {dataset_id}")
            if unpacked != kept["sha256"]:
                shutil.rmtree(Path(minari_root()) / dataset_id, ignore_errors=True)  # no run may train on it
                if commit:
                    archive.unlink(missing_ok=True)  # the history keeps it; the next run says the same
                raise ConfigError(f"{origin} {why}: {advice}")
        else:
            how = rebuild_dataset(dataset_id, kept.get("recipe"), collect, folder)
            built = sha256(here) if here.is_file() else "nothing"
            if built != kept["sha256"]:
                shutil.rmtree(Path(minari_root()) / dataset_id, ignore_errors=True)  # no run may train on it
                raise ConfigError(f"{dataset_id} built again here ({how}) is not the build the study's runs trained on "
                                  f"(SHA-256 {built[:12]}..., the runs' {kept['sha256'][:12]}...; builds differ "
                                  f"between machines; the build is removed): copy {archive.name} from the machine that "
                                  f"built it into {folder}, or start the study again here with --new --records DIR")
        restored.append(dataset_id)
    return restored


def read_records(folder: Path) -> tuple[dict | None, list[dict]]:
    """The parent's record (None if there is none) and the runs' records in ``folder``."""
    if not folder.is_dir():
        return None, []
    parent_file = folder / PARENT_FILE
    parent = read_parent(parent_file) if parent_file.exists() else None
    runs = []
    for path in sorted(folder.glob("*.json.gz")):
        try:
            with gzip.open(path, "rt") as handle:
                record = json.load(handle)
        except (OSError, EOFError, ValueError) as err:  # not gzip, truncated, not JSON (JSONDecodeError is a ValueError)
            raise ConfigError(f"{path} cannot be read as a study record ({type(err).__name__}): restore it from git "
                              "(git checkout -- <file>) or remove it") from None
        if not isinstance(record, dict) or record.get("format") not in READABLE:
            raise ConfigError(f"{path} is a record of format "
                              f"{record.get('format') if isinstance(record, dict) else None!r}, this code reads "
                              f"{' and '.join(map(str, READABLE))}: "
                              "read it with the commit that wrote it")
        runs.append(widened(record))
    return parent, runs


def restore_records(client, experiment_id: str, sweep_dir: Path, folder: Path) -> tuple[str | None, int]:
    """The records in ``folder`` that this store lacks, restored as finished children of the sweep's parent run
    (found by its ``sweep_dir`` tag, made if there is none, with the study's tags from the records); returns the
    parent (None if ``folder`` holds no records) and how many runs were restored."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    parent_record, records = read_records(folder)
    if not records and parent_record is None:
        return None, 0
    found = client.search_runs([experiment_id], f"tags.sweep = 'true' and tags.sweep_dir = '{sweep_dir}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    study_tags = (parent_record or {}).get("tags", {})
    if found:
        parent = found[0].info.run_id
        origin = found[0].data.tags.get(ARCHIVED_TAG, parent)
        if parent_record and parent_record["run_id"] != origin:
            raise ConfigError(f"{folder} holds the records of the sweep run {parent_record['run_id']}, and this sweep "
                              f"folder ({sweep_dir}) has the run {parent}: give this sweep its own records folder "
                              "(o2o-study --records DIR)")
    else:
        tags = {**study_tags, "sweep": "true", "sweep_dir": str(sweep_dir)}
        if parent_record:
            tags[ARCHIVED_TAG] = parent_record["run_id"]
        parent = client.create_run(experiment_id, run_name=f"sweep-{sweep_dir.name}", tags=tags).info.run_id
        client.set_terminated(parent, status="FINISHED")
    present = {r.data.tags.get(ARCHIVED_TAG, r.info.run_id) for r in children(client, parent, status=None)}
    restored = 0
    for record in records:
        if record["run_id"] in present:
            continue
        try:  # the store the record was written from, still here (the same machine): nothing to restore
            client.get_run(record["run_id"])
            continue
        except MlflowException:
            pass
        tags = {**record["tags"], "mlflow.parentRunId": parent, ARCHIVED_TAG: record["run_id"]}
        run_id = client.create_run(experiment_id, start_time=record["start_time"], tags=tags,
                                   run_name=record["run_name"]).info.run_id
        params = [Param(k, v) for k, v in record["params"].items()]
        for i in range(0, len(params), PARAM_BATCH):
            client.log_batch(run_id, params=params[i:i + PARAM_BATCH])
        # a compact record keeps no timestamps: its points take the run's start time
        metrics = [Metric(key, point[1], point[2] if len(point) > 2 else record["start_time"] or 0, point[0])
                   for key, points in record["metrics"].items() for point in points]
        for i in range(0, len(metrics), MAX_BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + MAX_BATCH])
        client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])
        restored += 1
    return parent, restored


def computing_overrides(overrides: str) -> frozenset[str]:
    """A job's overrides that change what it computes: not threads, progress, device, the experiment's name and
    other bookkeeping (o2o.report.NOT_CONFIG but the seed), which a continued study may set otherwise."""
    from o2o.report import NOT_CONFIG, override_key, split_overrides

    bookkeeping = set(NOT_CONFIG) - {"seed"}
    return frozenset(token for token in split_overrides(overrides)
                     if override_key(token) not in bookkeeping and not override_key(token).startswith("hydra"))


def finished_in_sweep(client, resolved: dict, overrides: str):
    """The finished run of this job in its sweep (a child of the parent run the sweep hands its jobs, with the same
    overrides), or None; one that ran another config stops the job (a later commit changed what the overrides
    compose): the sweep's page must not mix them."""
    from o2o.report import NOT_CONFIG

    parent = os.environ.get(PARENT_RUN_ENV)
    if not parent:
        return None
    job = computing_overrides(overrides)
    same = [r for r in children(client, parent) if computing_overrides(r.data.tags.get("overrides", "")) == job]
    if not same:
        return None
    run = same[0]
    bookkeeping = set(NOT_CONFIG) - {"seed"}
    expected = {k: v for k, v in param_values(resolved).items() if k not in bookkeeping}
    differ = sorted(k for k in expected if run.data.params.get(k) != expected[k])
    if differ:
        raise ConfigError(f"this sweep already has a finished run of '{overrides}' (MLflow run {run.info.run_id}) "
                          f"with another config ({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''} differ): "
                          "run the study at the commit it ran at, or start another sweep (o2o-study --new)")
    return run
