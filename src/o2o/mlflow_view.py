"""The MLflow experiment page's comparison view: the runs grouped by env, setting (preset, schedule, data) and
algorithm, with the paper's score
after pre-training and after fine-tuning and the cumulative regret as columns, best first.

MLflow 3 keeps a page's columns, grouping and order in the browser (local storage), not on the server; what a
client can set is a *shared view*: an experiment tag ``mlflow.sharedViewState.<key>`` holding the page state as
JSON, opened by the URL ``#/experiments/<id>/runs?viewStateShareKey=<key>`` (the format of MLflow's own "Share"
button: mlflow/server/js, ``EXPERIMENT_PAGE_VIEW_STATE_SHARE_TAG_PREFIX`` and the shared-view loader, read in
MLflow 3.17). Every run publishes the view for its experiment, adding its domain's score columns to those already
there, and writes the link into the experiment's description unless someone else wrote one.
"""
from __future__ import annotations

import json

from o2o import metrics as M
from o2o.tracking import retry_create_race

SHARE_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "o2o-comparison"
DESCRIPTION_TAG = "mlflow.note.content"
GROUP_BY_TAGS = ("env", "setting", "algo")  # run tags every run sets (pipeline.start_tracking): runs of one preset,
# schedule and data (the setting) are averaged together, never smoke runs with study runs
DESCRIPTION_MARK = "Comparison view (o2o):"


def score_columns(headline: str) -> list[str]:
    """The final-summary metrics a run of a domain with ``headline`` (the paper's score) is compared by."""
    keys = [M.summary(M.OFFLINE, headline), M.summary(M.ONLINE, headline), M.CUMULATIVE_REGRET]
    return [M.final(k) for k in keys]


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"  # the runs table's canonical column key (MLflow's makeCanonicalSortKey)


def view_state(metric_columns: list[str], order_by: str) -> dict:
    """The page state MLflow's shared-view loader reads: search facets and UI state side by side."""
    return {
        "orderByKey": _column("metrics", order_by),
        "orderByAsc": False,
        "selectedColumns": [_column("tags", t) for t in ("seed",)] + [_column("metrics", m) for m in metric_columns],
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": tag} for tag in GROUP_BY_TAGS]},
        "groupsExpanded": {},
    }


def ui_address(uri: str) -> str:
    """Where a person opens the MLflow UI of tracking store ``uri``: the server itself, else a local ``mlflow ui``."""
    return uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def view_url(base: str, experiment_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


def publish(client, experiment_id: str, headline: str, base: str) -> None:
    """Add this run's score columns to the experiment's comparison view (the first run's headline orders the
    rows), and link the view from the experiment's description when that is empty or ours. Jobs starting together
    race to create the same tags (MLflow reads, then inserts): the loser reads the view again and adds to it."""
    retry_create_race(lambda: _publish(client, experiment_id, headline, base))


def _publish(client, experiment_id: str, headline: str, base: str) -> None:
    experiment = client.get_experiment(experiment_id)
    tags = experiment.tags
    columns, order_by, grouping = [], score_columns(headline)[1], None
    if SHARE_TAG_PREFIX + VIEW_KEY in tags:
        try:
            known = json.loads(tags[SHARE_TAG_PREFIX + VIEW_KEY])
            columns = [c.split("`")[1] for c in known["selectedColumns"] if c.startswith("metrics.")]
            order_by = known["orderByKey"].split("`")[1]
            grouping = known["groupBy"]
        except (ValueError, KeyError, IndexError):  # not ours any more: written over with a whole view
            columns = []
    wanted = columns + [c for c in score_columns(headline) if c not in columns]
    state = view_state(wanted, order_by)
    if wanted != columns or grouping != state["groupBy"]:  # new columns, or a view of an older grouping
        client.set_experiment_tag(experiment_id, SHARE_TAG_PREFIX + VIEW_KEY, json.dumps(state))
    description = tags.get(DESCRIPTION_TAG, "")
    if not description.strip() or description.startswith(DESCRIPTION_MARK):
        text = (f"{DESCRIPTION_MARK} runs grouped by env, setting (the preset and a digest of its schedule and data) "
                f"and algo, the paper's score after pre-training and after fine-tuning, best first: "
                f"{view_url(base, experiment_id)} "
                f"(with `mlflow ui` on port 5000; on another server, the same path after its address)")
        if text != description:
            client.set_experiment_tag(experiment_id, DESCRIPTION_TAG, text)
