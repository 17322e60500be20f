"""Runs many ``python src/main.py ...`` commands as forks of one process that has imported the project once.

A bad-input case costs about a second of work and about 10 s of imports (torch, MLflow and its store's
migrations, Hydra, Gymnasium) as a fresh interpreter; each case here is a forked child with its own argv, environment, exit status,
stdout and stderr, as a subprocess would be, without paying the imports again. The environment changes a case
makes are read by the code at call time (MLFLOW_TRACKING_URI, O2O_OUTPUTS, MINARI_DATASETS_PATH); HF_HUB_OFFLINE,
which huggingface_hub reads on import, is set before the imports for every case.

    python tests/forked_main.py CASES.json RESULTS.json   # CASES: [{"argv": [...], "env": {name: value or null}}], 2 at a time
"""
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARALLEL = 2
CASE_TIMEOUT_S = 300  # as the subprocess timeout the cases had: a hung case dies instead of hanging the suite


def child(argv: list[str], env: dict[str, str], out: str, err: str) -> None:
    """In the forked child: become ``python src/main.py *argv`` and never return."""
    code = 1
    signal.alarm(CASE_TIMEOUT_S)  # SIGALRM's default action ends the child
    try:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        for key, value in env.items():  # null: unset
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        sys.argv = [str(ROOT / "src" / "main.py"), *argv]
        from o2o.cli import main

        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if not isinstance(exit_.code, (int, type(None))):
                print(exit_.code, file=sys.stderr)
        except BaseException:  # as the interpreter would: the traceback on stderr, status 1
            traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def warm_up(folder: Path) -> None:
    """What a run imports once it passes the config checks (MLflow's sqlite store and its migrations, Minari,
    h5py, Gymnasium), loaded here by opening a store of its own: a case that reaches the store costs about 1 s
    instead of about 10. No case uses this store's URI, so no child inherits its engine (MLflow caches one per URI)."""
    import gymnasium  # noqa: F401
    import h5py  # noqa: F401
    import minari  # noqa: F401
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{folder / 'warm-up.db'}").search_experiments(max_results=1)


def run_all(cases: list[dict]) -> list[dict]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, str(ROOT / "src"))  # as for the script src/main.py
    import o2o.cli  # noqa: F401 - the imports every case shares, paid once here
    import o2o.pipeline  # noqa: F401

    folder = Path(tempfile.mkdtemp(prefix="forked-main-"))
    warm_up(folder)
    results: list[dict] = [{} for _ in cases]
    running: dict[int, int] = {}
    started: dict[int, float] = {}

    def reap() -> None:
        pid, status = os.wait()
        index = running.pop(pid)
        results[index] = {"returncode": os.waitstatus_to_exitcode(status), "seconds": time.time() - started[index],
                          "stdout": (folder / f"{index}.out").read_text(errors="replace"),
                          "stderr": (folder / f"{index}.err").read_text(errors="replace")}

    for index, case in enumerate(cases):
        while len(running) >= PARALLEL:
            reap()
        pid = os.fork()
        if pid == 0:
            child(case["argv"], case["env"], str(folder / f"{index}.out"), str(folder / f"{index}.err"))
        running[pid] = index
        started[index] = time.time()
    while running:
        reap()
    return results


if __name__ == "__main__":
    cases = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run_all(cases)))
