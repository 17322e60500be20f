"""A study's records of its finished runs (o2o.archive): written whole, restored into another store as they were,
never twice, never into another sweep; a job whose finished run its sweep already holds does nothing."""
import gzip
import json
import math
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from o2o.archive import (ARCHIVED_TAG, PARENT_FILE, finished_in_sweep, read_records, restore_records,
                         write_records)
from o2o.errors import ConfigError
from o2o.tracking import PARENT_RUN_ENV, flatten

RESOLVED = {"algo": {"name": "calql", "actor_hidden": [128, 128]}, "seed": 3, "env": {"dataset": {"path": None}}}


def store(tmp_path, name):
    client = MlflowClient(f"sqlite:///{tmp_path / name}.db")
    return client, client.create_experiment("o2o", artifact_location=(tmp_path / f"{name}-art").as_uri())


def sweep(client, experiment, sweep_dir="/old/sweep"):
    parent = client.create_run(experiment, tags={"sweep": "true", "sweep_dir": sweep_dir, "study_wall_s": "5400",
                                                 "study_commit": "abc123", "study_command": "o2o-study pen_o2o",
                                                 "overrides": "algo=calql seed=3"}).info.run_id
    return parent


def child(client, experiment, parent, status="FINISHED", overrides="algo=calql seed=3", resolved=RESOLVED):
    run = client.create_run(experiment, start_time=1_700_000_000_000, run_name="calql-pen-s3",
                            tags={"mlflow.parentRunId": parent, "algo": "calql", "seed": "3", "overrides": overrides,
                                  "machines": "AMD EPYC, 2 cores"})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in flatten(resolved).items()])
    # more points than one log_batch takes, with their own timestamps, and a second metric
    points = [Metric("online/eval/success_rate", i / 1500, 1_700_000_000_000 + i, 2 * i) for i in range(1500)]
    client.log_batch(run_id, metrics=points[:1000])
    client.log_batch(run_id, metrics=points[1000:] + [Metric("final/online_success_rate", 0.9, 1_700_000_900_000, 0)])
    client.set_terminated(run_id, status=status, end_time=1_700_000_999_000)
    return run_id


def ignored_by_git(path: str) -> bool:
    """Whether the project's .gitignore keeps ``path`` out of git (git's own answer where this is a git checkout)."""
    import fnmatch

    root = Path(__file__).parents[1]
    if (root / ".git").exists():
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0
    patterns = [line.strip() for line in (root / ".gitignore").read_text().splitlines() if "**" in line]
    return any(fnmatch.fnmatch(path, pattern.replace("**/", "*/")) for pattern in patterns)


def history(client, run_id, key):
    return sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))


def test_records_restore_a_finished_run_as_it_was_and_only_once(tmp_path):
    old, old_exp = store(tmp_path, "old")
    parent = sweep(old, old_exp)
    finished = child(old, old_exp, parent)
    child(old, old_exp, parent, status="RUNNING", overrides="algo=calql seed=4")  # unfinished: not kept
    folder = tmp_path / "records"
    written = write_records(old, parent, folder, full=True)  # every metric with its timestamps
    assert sorted(p.name for p in written) == sorted([f"{finished}.json.gz", PARENT_FILE])
    assert not list(folder.glob("*.partial"))
    with gzip.open(folder / f"{finished}.json.gz", "rt") as handle:
        assert len(json.load(handle)["metrics"]["online/eval/success_rate"]) == 1500

    new, new_exp = store(tmp_path, "new")  # another machine: an empty store, a new sweep folder
    restored_parent, count = restore_records(new, new_exp, tmp_path / "sweep", folder)
    assert count == 1
    tags = new.get_run(restored_parent).data.tags
    assert (tags["sweep_dir"], tags[ARCHIVED_TAG], tags["study_wall_s"], tags["study_commit"]) == (
        str(tmp_path / "sweep"), parent, "5400", "abc123")
    (run,) = new.search_runs([new_exp], f"tags.mlflow.parentRunId = '{restored_parent}'")
    before = old.get_run(finished)
    assert run.data.params == before.data.params and run.data.tags[ARCHIVED_TAG] == finished
    assert {k: v for k, v in run.data.tags.items() if k not in ("mlflow.parentRunId", ARCHIVED_TAG)} == {
        k: v for k, v in before.data.tags.items() if k != "mlflow.parentRunId"}
    assert (run.info.status, run.info.start_time, run.info.end_time, run.info.run_name) == (
        "FINISHED", before.info.start_time, before.info.end_time, before.info.run_name)
    for key in before.data.metrics:
        assert history(new, run.info.run_id, key) == history(old, finished, key)

    assert restore_records(new, new_exp, tmp_path / "sweep", folder) == (restored_parent, 0)  # never twice
    assert [p.name for p in write_records(new, restored_parent, folder)] == [PARENT_FILE]  # the same run: no copy
    parent_record, runs = read_records(folder)
    assert parent_record["run_id"] == parent and [r["run_id"] for r in runs] == [finished]
    # the store the records came from, still there: nothing to restore into its own sweep
    assert restore_records(old, old_exp, Path("/old/sweep"), folder) == (parent, 0)


def test_a_compact_record_keeps_what_the_pages_read_and_the_last_value_of_the_rest(tmp_path):
    """By default a record keeps the whole history, without timestamps, of the metrics the pages and the report read
    (o2o.report.history_keys) and of the per-episode success; the last point of every other metric; no system
    metrics. Restored, the kept histories read as they were."""
    from o2o.archive import compact

    old, old_exp = store(tmp_path, "old")
    parent = sweep(old, old_exp)
    resolved = {**RESOLVED, "domain": {"metric": "success_rate"}}
    finished = child(old, old_exp, parent, resolved=resolved)
    extra = [Metric("online/train/episode_success", i % 2, 1_700_000_000_000 + i, i) for i in range(30)]
    extra += [Metric("online/train/alpha", 1.0 / (i + 1), 1_700_000_000_000 + i, 10 * i) for i in range(30)]
    extra += [Metric("system/cpu_utilization_percentage", 50.0, 1_700_000_000_000 + i, i) for i in range(30)]
    old.log_batch(finished, metrics=extra)
    folder = tmp_path / "records"
    write_records(old, parent, folder)
    (record,) = read_records(folder)[1]
    assert record["format"] == 3 and "system/cpu_utilization_percentage" not in record["metrics"]
    assert record["metrics"]["online/eval/success_rate"] == [[2 * i, i / 1500] for i in range(1500)]  # no timestamps
    assert len(record["metrics"]["online/train/episode_success"]) == 30
    assert record["metrics"]["online/train/alpha"] == [[10 * i, 1.0 / (i + 1)] for i in range(26, 30)]  # the last 4
    assert compact(record) == record  # compacting is idempotent (and reads format 1: see the page test)

    new, new_exp = store(tmp_path, "new")
    restored_parent, _ = restore_records(new, new_exp, tmp_path / "sweep", folder)
    (run,) = new.search_runs([new_exp], f"tags.mlflow.parentRunId = '{restored_parent}'")
    before = old.get_run(finished)
    assert [(s, v) for s, v, _ in history(new, run.info.run_id, "online/eval/success_rate")] == [
        (s, v) for s, v, _ in history(old, finished, "online/eval/success_rate")]
    assert {t for _, _, t in history(new, run.info.run_id, "online/eval/success_rate")} == {before.info.start_time}
    assert run.data.metrics["final/online_success_rate"] == 0.9 and run.data.metrics["online/train/alpha"] == 1.0 / 30

    # what the report reads of a run is the same from the full record and from the compact one
    from o2o.report import _record

    old.log_batch(finished, metrics=[Metric("offline/train/q_data", -i, 1_700_000_000_000 + i, 250 * i)
                                     for i in range(40)])
    full_folder = tmp_path / "full"
    write_records(old, parent, full_folder, full=True)
    (full_record,) = read_records(full_folder)[1]
    compact_folder = tmp_path / "compact"
    compact_folder.mkdir()
    shutil.copy(full_folder / PARENT_FILE, compact_folder / PARENT_FILE)
    with gzip.open(compact_folder / f"{finished}.json.gz", "wt") as handle:
        json.dump(compact(full_record), handle)
    read = []
    for name, records in (("from-full", full_folder), ("from-compact", compact_folder)):
        client, experiment = store(tmp_path, name)
        restored, _ = restore_records(client, experiment, tmp_path / name, records)
        (run,) = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{restored}'")
        read.append(_record(client, run).history)
    assert read[0] == read[1] and len(read[0]["offline/train/q_data"]) == 40


def test_float32_metrics_are_written_short_and_read_back_exactly(tmp_path):
    """The agent logs float32s, whose float64 form has 17 digits; a record writes them in float32's shortest form
    (half the size) and reads back the very float64 values MLflow holds. A metric with any other value, or one
    beyond float32's range, is written as it is. Records of format 2 (every value in float64's form) still read."""
    import numpy as np

    client, experiment = store(tmp_path, "short")
    parent = sweep(client, experiment)
    run_id = child(client, experiment, parent)
    agent = [float(np.float32(v)) for v in np.random.default_rng(0).normal(-40.0, 30.0, 200)] + [math.nan]
    mixed = [0.5, 0.75, 1 / 3]  # 1/3 is no float32
    client.log_batch(run_id, metrics=[Metric("offline/calibration/q_policy", v, 0, i) for i, v in enumerate(agent)]
                     + [Metric("online/cumulative_regret", v, 0, i) for i, v in enumerate(mixed)]
                     + [Metric("offline/eval/success_rate", 1e39, 0, 0)])
    folder = tmp_path / "records"
    write_records(client, parent, folder)
    with gzip.open(folder / f"{run_id}.json.gz", "rt") as handle:
        text = handle.read()
        written = json.loads(text)
    assert written["float32"] == ["offline/calibration/q_policy"]
    assert str(agent[0]) not in text and str(np.float32(agent[0])) in text  # the short form, not the long one
    assert str(mixed[-1]) in text and "1e+39" in text
    (record,) = read_records(folder)[1]
    back = [v for _, v in record["metrics"]["offline/calibration/q_policy"]]
    assert back[:-1] == agent[:-1] and math.isnan(back[-1])
    assert [v for _, v in record["metrics"]["online/cumulative_regret"]] == mixed
    new, new_exp = store(tmp_path, "restored")
    restored, _ = restore_records(new, new_exp, tmp_path / "sweep", folder)
    (run,) = new.search_runs([new_exp], f"tags.mlflow.parentRunId = '{restored}'")
    assert [m.value for m in sorted(new.get_metric_history(run.info.run_id, "offline/calibration/q_policy"),
                                    key=lambda m: m.step)][:-1] == agent[:-1]

    old_format = {**written, "format": 2, "metrics": record["metrics"]}  # format 2: float64's form, no float32 list
    del old_format["float32"]
    with gzip.open(folder / f"{run_id}.json.gz", "wt") as handle:
        json.dump(old_format, handle)
    assert json.dumps(read_records(folder)[1][0]["metrics"]) == json.dumps(record["metrics"])  # NaN != NaN


def test_records_of_one_sweep_never_mix_with_another(tmp_path):
    client, experiment = store(tmp_path, "one")
    folder = tmp_path / "records"
    write_records(client, sweep(client, experiment), folder)
    other = sweep(client, experiment, sweep_dir=str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="give this sweep its own records folder"):
        write_records(client, other, folder)
    with pytest.raises(ConfigError, match="give this sweep its own records folder"):
        restore_records(client, experiment, tmp_path / "other", folder)


def test_a_job_finds_its_finished_run_in_its_sweep_and_refuses_one_of_another_config(tmp_path, monkeypatch):
    client, experiment = store(tmp_path, "jobs")
    parent = sweep(client, experiment)
    run_id = child(client, experiment, parent)
    child(client, experiment, parent, status="FAILED", overrides="algo=calql seed=5")
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    assert finished_in_sweep(client, RESOLVED, "algo=calql seed=3") is None  # not in a sweep
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    assert finished_in_sweep(client, RESOLVED, "algo=calql seed=3").info.run_id == run_id
    assert finished_in_sweep(client, RESOLVED, "algo=calql seed=4") is None
    assert finished_in_sweep(client, {**RESOLVED, "seed": 5}, "algo=calql seed=5") is None  # failed: runs again
    changed = {**RESOLVED, "algo": {"name": "calql", "actor_hidden": [256, 256]}}
    with pytest.raises(ConfigError, match=r"another config \(algo.actor_hidden differ\)"):
        finished_in_sweep(client, changed, "algo=calql seed=3")
    # the same study continued with other bookkeeping (threads, progress, device): the same job, which does nothing
    bookkept = {**RESOLVED, "threads": 1, "progress": False, "device": "cpu"}
    assert finished_in_sweep(client, bookkept, "algo=calql seed=3 threads=1 progress=false device=cpu").info.run_id \
        == run_id
    # ... or another launcher (its keys are Hydra's, not the job's config: SLURM where the sweep ran locally)
    assert finished_in_sweep(client, RESOLVED, "algo=calql seed=3 hydra/launcher=submitit_slurm "
                             "hydra.launcher.cpus_per_task=1").info.run_id == run_id
    assert finished_in_sweep(client, RESOLVED, "algo=calql seed=3 algo.tau=0.01") is None  # another job


def test_the_dataset_a_study_built_travels_with_its_records_and_another_build_stops_it(tmp_path, monkeypatch):
    from o2o.archive import restore_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    data = tmp_path / "minari" / "o2o" / "pen" / "built-v0" / "data"
    data.mkdir(parents=True)
    (data / "main_data.hdf5").write_bytes(b"the transitions of one machine's build")
    (data / "metadata.json").write_text("{}")
    recipe = ["build-adroit", "--tasks", "pen", "--seed", "0"]
    (data.parent / "o2o_build.json").write_text(json.dumps({"o2o-data": recipe}))
    (data.parent / "o2o_awac_bc.npz").write_bytes(b"the BC policy's weights")  # the AWAC recipe's, beside its data
    client, experiment = store(tmp_path, "data")
    parent = sweep(client, experiment)
    run_id = child(client, experiment, parent)
    client.set_tag(run_id, "dataset", "o2o/pen/built-v0")
    official = child(client, experiment, parent, overrides="algo=calql seed=4")
    client.set_tag(official, "dataset", "D4RL/pen/human-v2")  # downloadable: not kept
    folder = tmp_path / "records"
    written = write_records(client, parent, folder)
    assert (folder / "dataset-o2o-pen-built-v0.tar.xz") in written
    assert list(json.loads((folder / PARENT_FILE).read_text())["datasets"]) == ["o2o/pen/built-v0"]
    assert (folder / "dataset-o2o-pen-built-v0.tar.xz") not in write_records(client, parent, folder)  # once

    assert restore_dataset(folder) == []  # the same build here: nothing to do
    shutil.rmtree(data.parent)  # another machine, without it
    assert restore_dataset(folder) == ["o2o/pen/built-v0"]
    assert (data / "main_data.hdf5").read_bytes() == b"the transitions of one machine's build"
    (data / "main_data.hdf5").write_bytes(b"the transitions of another machine's build")
    with pytest.raises(ConfigError, match="another build of o2o/pen/built-v0"):
        restore_dataset(folder)

    # the archive stays out of git: where it is not, the dataset is built again from its recipe, and must be the same
    kept = json.loads((folder / PARENT_FILE).read_text())["datasets"]["o2o/pen/built-v0"]
    # the BC weights travel with the records (git keeps them): a rebuild from them skips the fit, what differs by CPU
    assert kept["recipe"] == {"o2o-data": [*recipe, "--awac-bc-weights", "dataset-o2o-pen-built-v0-bc.npz"]}
    assert (folder / "dataset-o2o-pen-built-v0-bc.npz").read_bytes() == b"the BC policy's weights"
    assert not ignored_by_git("docs/results/x-cpu/records/dataset-o2o-pen-built-v0-bc.npz")
    assert ignored_by_git("docs/results/x-cpu/records/" + kept["file"])
    (folder / kept["file"]).unlink()
    shutil.rmtree(data.parent)
    built = []

    def build(content):
        def collect(dataset_id, params):
            built.append((dataset_id, params))
            data.mkdir(parents=True, exist_ok=True)
            (data / "main_data.hdf5").write_bytes(content)
        return collect

    parent_record = json.loads((folder / PARENT_FILE).read_text())
    parent_record["datasets"]["o2o/pen/built-v0"]["recipe"] = {"collector": {"name": "waypoints", "seed": 0}}
    (folder / PARENT_FILE).write_text(json.dumps(parent_record))
    assert restore_dataset(folder, build(b"the transitions of one machine's build")) == ["o2o/pen/built-v0"]
    assert built == [("o2o/pen/built-v0", {"name": "waypoints", "seed": 0})]
    shutil.rmtree(data.parent)
    with pytest.raises(ConfigError, match=r"built again here \(collected with name=waypoints seed=0\) is not the build "
                                          "the study's runs trained on"):
        restore_dataset(folder, build(b"the transitions of another machine's build"))
    assert not data.parent.exists()  # the other build is removed: no job trains on it
    # an o2o-data recipe runs that command: here it cannot find its assets, and says so in one line
    parent_record["datasets"]["o2o/pen/built-v0"]["recipe"] = {"o2o-data": [*recipe, "--assets", str(tmp_path / "no")]}
    (folder / PARENT_FILE).write_text(json.dumps(parent_record))
    with pytest.raises(ConfigError, match="could not be built again from its recipe .*--assets .* is not a folder"):
        restore_dataset(folder)
    # an AWAC-recipe dataset whose BC policy was not kept cannot come back the same from a new fit: said at once
    awac = {"o2o/pen/awac-recipe-expert-demos-v0": {**parent_record["datasets"]["o2o/pen/built-v0"],
                                                    "recipe": {"o2o-data": recipe}}}
    (folder / PARENT_FILE).write_text(json.dumps({**parent_record, "datasets": awac}))
    with pytest.raises(ConfigError, match="built before its BC policy was kept"):
        restore_dataset(folder)
    # an archive committed before archives left git comes back from the repository's history, checked by its hash
    monkeypatch.delenv("GIT_DIR", raising=False)
    (folder / PARENT_FILE).write_text(json.dumps(parent_record))
    archive = folder / kept["file"]
    data.mkdir(parents=True)
    (data / "main_data.hdf5").write_bytes(b"the transitions of one machine's build")
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(data.parent, arcname="o2o/pen/built-v0")
    shutil.rmtree(data.parent)
    git = lambda *args: subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",  # noqa: E731
                                        *args], check=True, capture_output=True)
    git("init", "-q")
    git("add", "-f", "records")
    git("commit", "-q", "-m", "records with their dataset")
    git("rm", "-q", "--cached", f"records/{archive.name}")
    git("commit", "-q", "-m", "the dataset leaves git")
    archive.unlink()
    assert restore_dataset(folder) == ["o2o/pen/built-v0"]
    assert (data / "main_data.hdf5").read_bytes() == b"the transitions of one machine's build" and archive.is_file()
    shutil.rmtree(data.parent)
    archive.write_bytes(b"not xz")  # a file there is used as it is: one that is no archive stops with one line
    with pytest.raises(ConfigError, match="cannot be unpacked .*: remove it, and the study builds the dataset again"):
        restore_dataset(folder)
    assert not data.parent.exists()
    # a copy in the history that is not the runs' data: said, left neither unpacked nor put back (no 'remove it')
    archive.unlink()
    (data / "main_data.hdf5").parent.mkdir(parents=True)
    (data / "main_data.hdf5").write_bytes(b"another machine's transitions")
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(data.parent, arcname="o2o/pen/built-v0")
    shutil.rmtree(data.parent)
    git("add", "-f", f"records/{archive.name}")
    git("commit", "-q", "-m", "another build committed")
    git("rm", "-q", "--cached", f"records/{archive.name}")
    git("commit", "-q", "-m", "and removed")
    archive.unlink()
    with pytest.raises(ConfigError, match=r"\(from this repository's history, commit \w+\) does not hold the data its "
                                          r"record names \(SHA-256 .*: copy the archive from the machine that built it"):
        restore_dataset(folder)
    assert not data.parent.exists() and not archive.exists()
    (folder / PARENT_FILE).write_text('{"datasets": {"o2o/x/y-v0": {"file": 3}}}')
    with pytest.raises(ConfigError, match="is not a study's parent record"):
        restore_dataset(folder)


@pytest.mark.parametrize("text, line", [
    ('{"format": 3, "run_id": "a", "datas', "is not a study's parent record (Unterminated string"),  # cut
    ('{"format": 3, "datasets": {}}', "is not a study's parent record (no sweep run id)"),
    ('[1, 2]', "is not a study's parent record (no sweep run id)"),
    ('{"format": 3, "run_id": "a", "tags": []}', "(its datasets or tags are not a mapping)"),
    ('{"format": 99, "run_id": "a"}', "is a record of format 99, this code reads 1 and 2 and 3"),
    (b"\xff\xfe", "is not a study's parent record")])
def test_a_parent_record_that_is_not_one_stops_every_reader_with_one_line(tmp_path, text, line):
    from types import SimpleNamespace

    from o2o.archive import kept_datasets

    folder = tmp_path / "records"
    folder.mkdir()
    parent_file = folder / PARENT_FILE
    parent_file.write_bytes(text if isinstance(text, bytes) else text.encode())
    for reader in (lambda: read_records(folder), lambda: kept_datasets(parent_file),
                   lambda: write_records(SimpleNamespace(get_run=lambda _: SimpleNamespace(data=SimpleNamespace(tags={}))),
                                         "a", folder)):
        with pytest.raises(ConfigError, match=re.escape(line)) as raised:
            reader()
        assert "\n" not in str(raised.value)
    assert parent_file.read_bytes() == (text if isinstance(text, bytes) else text.encode())  # left as it was


def test_a_running_study_keeps_each_finished_run_as_it_ticks_and_says_once_when_it_cannot(tmp_path, capsys):
    from o2o.study import StudyClock

    client, experiment = store(tmp_path, "clock")
    sweep_dir = tmp_path / "sweep"
    parent = sweep(client, experiment, sweep_dir=str(sweep_dir))
    run_id = child(client, experiment, parent)
    name = client.get_experiment(experiment).name
    StudyClock(client, name, sweep_dir, "o2o-study x", "def456", tmp_path / "records").tick()
    assert (tmp_path / "records" / f"{run_id}.json.gz").exists()
    other = tmp_path / "records-of-another-sweep"
    other.mkdir()
    (other / PARENT_FILE).write_text(json.dumps({"format": 1, "run_id": "another", "tags": {}}))
    clock = StudyClock(client, name, sweep_dir, "o2o-study x", "def456", other)
    clock.tick()
    clock.tick()
    err = capsys.readouterr().err
    assert err.count("warning: the study's records") == 1 and "records of the sweep run another" in err
    assert not list(other.glob("*.json.gz"))
