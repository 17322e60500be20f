"""The comparison view every run publishes for its experiment (o2o.mlflow_view)."""
import json

from mlflow.tracking import MlflowClient

from o2o import mlflow_view as V


def experiment(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'view.db'}")
    return client, client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())


def view(client, eid) -> dict:
    return json.loads(client.get_experiment(eid).tags[V.SHARE_TAG_PREFIX + V.VIEW_KEY])


def test_the_view_groups_by_algo_and_env_and_orders_by_the_score_after_fine_tuning(tmp_path):
    client, eid = experiment(tmp_path)
    V.publish(client, eid, "success_rate", V.ui_address(client.tracking_uri))
    state = view(client, eid)
    assert state["selectedColumns"] == ["tags.`seed`", "metrics.`final/offline_success_rate`",
                                        "metrics.`final/online_success_rate`", "metrics.`final/online_cumulative_regret`"]
    assert state["orderByKey"] == "metrics.`final/online_success_rate`" and state["orderByAsc"] is False
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "algo"},
                                               {"mode": "tag", "groupByData": "env"}]
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
