"""The comparison view every run publishes for its experiment (o2o.mlflow_view)."""
import json

from mlflow.tracking import MlflowClient

from o2o import mlflow_view as V


def experiment(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'view.db'}")
    return client, client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())


def view(client, eid) -> dict:
    return json.loads(client.get_experiment(eid).tags[V.SHARE_TAG_PREFIX + V.VIEW_KEY])


def test_the_view_groups_by_env_setting_and_algo_and_orders_by_the_score_after_fine_tuning(tmp_path):
    client, eid = experiment(tmp_path)
    V.publish(client, eid, "success_rate", V.ui_address(client.tracking_uri))
    state = view(client, eid)
    assert state["selectedColumns"] == ["tags.`seed`", "metrics.`final/offline_success_rate`",
                                        "metrics.`final/online_success_rate`", "metrics.`final/online_cumulative_regret`"]
    assert state["orderByKey"] == "metrics.`final/online_success_rate`" and state["orderByAsc"] is False
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "env"},
                                               {"mode": "tag", "groupByData": "setting"},
                                               {"mode": "tag", "groupByData": "algo"}]
    older = json.loads(client.get_experiment(eid).tags[V.SHARE_TAG_PREFIX + V.VIEW_KEY])
    older["groupBy"]["groupByKeys"] = older["groupBy"]["groupByKeys"][::2]  # a view published before the setting tag
    client.set_experiment_tag(eid, V.SHARE_TAG_PREFIX + V.VIEW_KEY, json.dumps(older))
    V.publish(client, eid, "success_rate", V.ui_address(client.tracking_uri))
    assert view(client, eid)["groupBy"] == state["groupBy"]  # brought up to date by the next run
    note = client.get_experiment(eid).tags[V.DESCRIPTION_TAG]
    assert f"/#/experiments/{eid}/runs?viewStateShareKey={V.VIEW_KEY}" in note


def test_a_second_domain_adds_its_columns_and_keeps_the_first_order(tmp_path):
    client, eid = experiment(tmp_path)
    V.publish(client, eid, "success_rate", V.ui_address(client.tracking_uri))
    V.publish(client, eid, "normalized_return", V.ui_address(client.tracking_uri))
    V.publish(client, eid, "success_rate", V.ui_address(client.tracking_uri))
    state = view(client, eid)
    metrics = [c for c in state["selectedColumns"] if c.startswith("metrics.")]
    assert metrics == ["metrics.`final/offline_success_rate`", "metrics.`final/online_success_rate`",
                       "metrics.`final/online_cumulative_regret`", "metrics.`final/offline_normalized_return`",
                       "metrics.`final/online_normalized_return`"]
    assert state["orderByKey"] == "metrics.`final/online_success_rate`"


def test_a_description_someone_wrote_is_kept(tmp_path):
    client, eid = experiment(tmp_path)
    client.set_experiment_tag(eid, V.DESCRIPTION_TAG, "Door sweep of 1 December; see the wiki")
    V.publish(client, eid, "success_rate", V.ui_address(client.tracking_uri))
    assert client.get_experiment(eid).tags[V.DESCRIPTION_TAG] == "Door sweep of 1 December; see the wiki"
    assert V.SHARE_TAG_PREFIX + V.VIEW_KEY in client.get_experiment(eid).tags


def test_a_view_written_over_by_hand_is_replaced_by_a_whole_one(tmp_path):
    client, eid = experiment(tmp_path)
    client.set_experiment_tag(eid, V.SHARE_TAG_PREFIX + V.VIEW_KEY, "{not json")
    V.publish(client, eid, "tasks_solved", V.ui_address(client.tracking_uri))
    assert view(client, eid)["orderByKey"] == "metrics.`final/online_tasks_solved`"


def unique_violation(table: str):
    """What MLflow's sqlite store raises when a parallel job inserted the same row first (ManagedSessionMaker wraps
    SQLAlchemy's IntegrityError in an MlflowException)."""
    import sqlite3

    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    cause = sqlite3.IntegrityError(f"UNIQUE constraint failed: {table}.key, {table}.experiment_id")
    return MlflowException(message=sqlalchemy.exc.IntegrityError("INSERT INTO experiment_tags ...", {}, cause))


def test_a_job_that_loses_the_race_to_create_the_view_reads_it_again_and_adds_its_columns(tmp_path, monkeypatch):
    """Four jobs starting together on one store: between this job's read of the tags and its insert, another job
    (here a kitchen run) created the view; MLflow's insert fails on the unique key. The run goes on, and the view
    holds both jobs' columns."""
    client, eid = experiment(tmp_path)
    other = MlflowClient(client.tracking_uri)
    real, calls = client.set_experiment_tag, []

    def racing(experiment_id, key, value):
        calls.append(key)
        if len(calls) == 1:  # the other job's publish lands first, then this insert hits the existing row
            V.publish(other, eid, "tasks_solved", V.ui_address(other.tracking_uri))
            raise unique_violation("experiment_tags")
        return real(experiment_id, key, value)

    monkeypatch.setattr(client, "set_experiment_tag", racing)
    V.publish(client, eid, "success_rate", V.ui_address(client.tracking_uri))
    metrics = [c for c in view(client, eid)["selectedColumns"] if c.startswith("metrics.")]
    assert metrics[:3] == [f"metrics.`{c}`" for c in V.score_columns("tasks_solved")]  # the winner's order kept
    assert metrics[3:] == [f"metrics.`{c}`" for c in V.score_columns("success_rate")[:2]]  # regret already there
    assert calls[0] == V.SHARE_TAG_PREFIX + V.VIEW_KEY and len(calls) == 2  # one retry, no description to write


def test_an_error_that_is_no_race_stops_the_publish(tmp_path, monkeypatch):
    import pytest
    from mlflow.exceptions import MlflowException

    client, eid = experiment(tmp_path)
    calls = []

    def broken(*args):
        calls.append(args)
        raise MlflowException("Experiment 'e' must be in the 'active' state")

    monkeypatch.setattr(client, "set_experiment_tag", broken)
    with pytest.raises(MlflowException, match="active"):
        V.publish(client, eid, "success_rate", V.ui_address(client.tracking_uri))
    assert len(calls) == 1  # not tried again


def _publish_at_the_barrier(uri, experiment_id, barrier, results):
    client = MlflowClient(uri)
    client.get_experiment(experiment_id)
    barrier.wait()
    try:
        V.publish(client, experiment_id, "success_rate", V.ui_address(uri))
        results.put("ok")
    except Exception as err:  # noqa: BLE001 - reported to the test
        results.put(f"{type(err).__name__}: {str(err)[:200]}")


def test_four_processes_publishing_at_once_all_succeed(tmp_path):
    """The race itself, on a real sqlite store: four processes released together publish the view of a new
    experiment. Without the retry about a third of such publishes failed with 'UNIQUE constraint failed:
    experiment_tags' (measured: 21 of 60), as a CI run of four jobs started in the same second did."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for trial in range(3):
        uri = f"sqlite:///{tmp_path / f'race{trial}.db'}"
        eid = MlflowClient(uri).create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
        barrier, results = ctx.Barrier(4), ctx.Queue()
        jobs = [ctx.Process(target=_publish_at_the_barrier, args=(uri, eid, barrier, results)) for _ in range(4)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(timeout=120)
        outcomes = [results.get(timeout=10) for _ in jobs]
        assert outcomes == ["ok"] * 4, outcomes
        assert view(MlflowClient(uri), eid)["orderByKey"] == "metrics.`final/online_success_rate`"
