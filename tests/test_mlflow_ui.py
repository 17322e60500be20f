"""The MLflow UI shows the runs with their algo tags, a metric column and their dataset, checked in headless Chromium."""
import re
import shutil

import pytest

from conftest import SMOKE, mlflow_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright (pip install -e '.[test]') is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
METRIC = "online/eval/normalized_return"


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """Two finished runs (Cal-QL, CQL) in their own store, served by a real MLflow server: the tests only read them."""
    from mlflow.tracking import MlflowClient

    from o2o import run

    folder = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{folder / 'ui.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", uri)
        for algo in ("calql", "cql"):
            run(algo=algo, run_dir=str(folder / algo),
                overrides=[*SMOKE, "mlflow_experiment=o2o-ui", "schedule.online_steps=100"])
    experiment_id = MlflowClient(uri).get_experiment_by_name("o2o-ui").experiment_id
    with mlflow_server(uri, folder / "server.log") as base:
        yield base, experiment_id


def show_column(page, name: str) -> None:
    page.get_by_role("button", name="Columns").click()
    selector = page.get_by_role("dialog")
    selector.get_by_placeholder("Search columns").fill(name)
    # a tree item whose whole title is the name (not "algo.tau" for "algo"); clicking its title ticks it
    selector.locator("[title]").filter(has_text=re.compile(rf"^{re.escape(name)}$")).last.click()
    page.keyboard.press("Escape")


def test_runs_with_algo_tags_a_metric_column_and_their_dataset_appear(ui_server, tmp_path):
    base, experiment_id = ui_server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 2400, "height": 900})
        page.goto(f"{base}/#/experiments/{experiment_id}/runs")
        page.get_by_text("calql-pointmaze_umaze-smoke-s0").wait_for(timeout=60_000)
        page.get_by_text("cql-pointmaze_umaze-smoke-s0", exact=True).wait_for()
        show_column(page, "algo")
        show_column(page, METRIC)
        page.get_by_role("columnheader", name=METRIC).first.wait_for(timeout=30_000)
        page.get_by_role("columnheader", name="algo", exact=True).first.wait_for()
        cells = page.get_by_role("gridcell").all_inner_texts()
        page.screenshot(path=str(tmp_path / "mlflow_runs.png"), full_page=True)
        browser.close()
    assert "calql" in cells and "cql" in cells, cells
    assert any("o2o/pointmaze/umaze-waypoints-v0" in c for c in cells), cells  # the Dataset column: the offline input
    assert (tmp_path / "mlflow_runs.png").stat().st_size > 20_000


def test_the_experiment_opens_on_the_comparison_view(ui_server, tmp_path):
    """The link in the experiment's description opens the runs grouped by env, setting and algo with the score columns, with
    no click: MLflow reads the shared view from the experiment tag every run publishes."""
    from mlflow.tracking import MlflowClient

    from o2o import mlflow_view

    base, experiment_id = ui_server
    description = MlflowClient(base).get_experiment(experiment_id).tags[mlflow_view.DESCRIPTION_TAG]
    assert mlflow_view.view_url("http://127.0.0.1:5000", experiment_id) in description  # the runs were on sqlite
    url = mlflow_view.view_url(base, experiment_id)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 2400, "height": 900})
        page.goto(url)
        for column in mlflow_view.score_columns("success_rate"):
            page.get_by_role("columnheader", name=column).first.wait_for(timeout=60_000)
        page.get_by_text("calql", exact=False).first.wait_for()
        cells = page.get_by_role("gridcell").all_inner_texts()
        page.screenshot(path=str(tmp_path / "mlflow_view.png"), full_page=True)
        browser.close()
    groups = [c for c in cells if "algo" in c and "env" in c]
    assert len(groups) == 2 and any("calql" in g for g in groups) and any("cql" in g for g in groups), cells
