"""A full disk under the dataset folder, the run folder or the store: the run stops with one ``error:`` line and no
traceback, keeps its last good checkpoint and leaves the store intact; once there is room, the same command
resumes and finishes. Each disk is a small tmpfs (root may mount one; elsewhere these tests skip)."""
import contextlib
import os
import sqlite3
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SMOKE

SHORT = [*SMOKE, "progress=false", "mlflow.log_models=false", "mlflow_experiment=o2o-full-disk"]


@contextlib.contextmanager
def small_disk(path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()[:100]}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def run(args, **env):
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), *SHORT, *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return proc, errors


def assert_one_line(proc, errors, piece):
    assert proc.returncode == 2 and len(errors) == 1 and piece in errors[0], (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Segmentation" not in proc.stderr


def test_collecting_onto_a_full_disk_is_refused_before_writing(tmp_path):
    with small_disk(tmp_path / "disk", "300K") as disk:
        proc, errors = run([f"hydra.run.dir={tmp_path / 'run'}"], MINARI_DATASETS_PATH=str(disk / "minari"))
        assert_one_line(proc, errors, f"MiB are free on the disk of {disk / 'minari'}")
        assert [p.name for p in (disk / "minari").iterdir()] == [".o2o-collect.lock"]  # no staging folder left


def test_a_full_run_folder_keeps_the_last_good_checkpoint_and_the_rerun_finishes(tmp_path):
    with small_disk(tmp_path / "disk", "200K") as disk:
        run_dir = disk / "run"
        args = [f"hydra.run.dir={run_dir}", "schedule.checkpoint_interval=10"]
        proc, errors = run(args, MINARI_DATASETS_PATH=str(tmp_path / "minari"))
        assert_one_line(proc, errors, f"no space left to write {run_dir / 'checkpoints'}")
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        assert not any(name.endswith(".tmp") for name in checkpoints), checkpoints
        if "latest.pt" in checkpoints:
            assert f"the last good checkpoint {run_dir / 'checkpoints' / 'latest.pt'} is kept" in errors[0]
            torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)  # whole
        grow(disk, "50M")
        proc, errors = run(args, MINARI_DATASETS_PATH=str(tmp_path / "minari"))
        assert proc.returncode == 0 and not errors, proc.stderr[-3000:]
        assert (run_dir / "checkpoints" / "final.pt").exists()


def test_a_full_store_stays_intact_and_the_rerun_finishes_the_same_run(tmp_path):
    from mlflow.tracking import MlflowClient

    with small_disk(tmp_path / "disk", "1200K") as disk:
        store = f"sqlite:///{disk / 'mlflow.db'}"
        args = [f"hydra.run.dir={tmp_path / 'run'}"]
        env = {"MLFLOW_TRACKING_URI": store, "MINARI_DATASETS_PATH": str(tmp_path / "minari")}
        proc, errors = run(args, **env)
        assert_one_line(proc, errors, "no space left on a disk the run writes to")
        with sqlite3.connect(disk / "mlflow.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        grow(disk, "50M")
        proc, errors = run(args, **env)
        assert proc.returncode == 0 and not errors, proc.stderr[-3000:]
        client = MlflowClient(store)
        runs = client.search_runs([client.get_experiment_by_name("o2o-full-disk").experiment_id])
        assert [r.info.status for r in runs] == ["FINISHED"]
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "online/eval/success_rate")]
        assert steps == sorted(set(steps)) and steps[-1] == 300
