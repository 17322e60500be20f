"""A ``-m`` sweep of concurrent jobs and a single run started beside it, on one store: on sqlite, and on a real
PostgreSQL server behind ``mlflow server`` with proxied artifacts (scripts/postgres_server.sh start, as .ci/run
does; the README's multi-node commands). Every run must be complete: params equal to its resolved config, metric
histories without duplicate steps, its dataset inputs and its policy models."""
import os
import subprocess
import sys
import uuid

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, SMOKE, mlflow_server
from o2o.lineage import OFFLINE_CONTEXT, ONLINE_CONTEXT, logged_datasets
from o2o.policy_model import POLICY, logged_model_names
from o2o.tracking import flatten

EXPERIMENT = "o2o-concurrent"
SWEEP_ALGOS = ("calql", "cql", "iql")
SINGLE_ALGO = "sac"
SHORT = [*SMOKE, f"mlflow_experiment={EXPERIMENT}", "progress=false", "schedule.online_steps=200"]


def postgres_reason():
    if not os.environ.get("O2O_POSTGRES"):
        return "no PostgreSQL server: run scripts/postgres_server.sh start and export O2O_POSTGRES"
    try:
        import psycopg  # noqa: F401  SQLAlchemy's driver for postgresql:// stores
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture
def postgres_store(tmp_path):
    """A fresh database on the server O2O_POSTGRES names, behind a real ``mlflow server`` with proxied artifacts."""
    if postgres_reason():
        pytest.skip(postgres_reason())
    import psycopg

    server = os.environ["O2O_POSTGRES"].rstrip("/")
    name = f"o2o_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(f"{server}/postgres", autocommit=True)
    admin.execute(f"CREATE DATABASE {name}")
    try:
        with mlflow_server(f"{server}/{name}", tmp_path / "server.log", artifacts=tmp_path / "artifacts") as url:
            yield url
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def sqlite_store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_side_by_side(uri: str, tmp_path):
    """The sweep (local processes through submitit, all at once) and, while it runs, a single run."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "O2O_OUTPUTS": str(tmp_path / "out"),
           "MINARI_DATASETS_PATH": str(tmp_path / "minari")}
    main = [sys.executable, str(ROOT / "src" / "main.py")]
    sweep = subprocess.Popen(main + ["-m", f"algo={','.join(SWEEP_ALGOS)}", "hydra/launcher=submitit_local",
                                     "hydra.launcher.mem_gb=2", f"hydra.sweep.dir={tmp_path / 'sweep'}", *SHORT],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = subprocess.Popen(main + [f"algo={SINGLE_ALGO}", *SHORT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    outs = [p.communicate(timeout=900)[0] for p in (sweep, single)]
    assert [sweep.returncode, single.returncode] == [0, 0], [o[-3000:] for o in outs]


def check_every_run_is_complete(uri: str, tmp_path):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    jobs = [r for r in runs if "algo" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["algo"] for r in jobs) == sorted([*SWEEP_ALGOS, SINGLE_ALGO])
    for run in jobs:
        rid = run.info.run_id
        assert run.info.status == "FINISHED", (run.data.tags["algo"], run.data.tags.get("failure"))
        assert run.data.tags.get("mlflow.parentRunId") == (parents[0].info.run_id
                                                           if run.data.tags["algo"] in SWEEP_ALGOS else None)
        config = yaml.safe_load(open(client.download_artifacts(rid, "resolved_config.yaml", str(tmp_path))))
        config_params = {k: v for k, v in run.data.params.items() if not k.startswith("data.")}  # data.*: its facts
        assert config_params == {k: str(v)[:6000] for k, v in flatten(config).items()}, run.data.tags["algo"]
        pretrains = run.data.tags["algo"] != "sac"  # SAC learns online from nothing: no offline data
        assert not pretrains or int(run.data.params["data.transitions"]) > 0
        assert run.data.metrics
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(rid, key)]
            assert len(steps) == len(set(steps)), (run.data.tags["algo"], key, steps)
        contexts = set(logged_datasets(client, rid))
        assert {ONLINE_CONTEXT} <= contexts and (OFFLINE_CONTEXT in contexts) == pretrains
        assert POLICY in logged_model_names(client, rid)


def test_a_concurrent_sweep_and_a_single_run_on_sqlite_lose_nothing(sqlite_store, tmp_path):
    run_side_by_side(sqlite_store, tmp_path)
    check_every_run_is_complete(sqlite_store, tmp_path)


def test_a_concurrent_sweep_and_a_single_run_on_postgresql_lose_nothing(postgres_store, tmp_path):
    run_side_by_side(postgres_store, tmp_path)
    check_every_run_is_complete(postgres_store, tmp_path)
