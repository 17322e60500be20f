"""o2o: offline-to-online RL (Cal-QL, CQL) as a Hydra + MLflow experiment pipeline."""
import os
import sys

# MuJoCo renders image observations offscreen: on Linux with EGL (a GPU, or Mesa's llvmpipe on a CPU) unless the
# user chose; elsewhere MuJoCo's own default (EGL exists only on Linux)
if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")


def run(*args, **kwargs):
    """See :func:`o2o.cli.run`."""
    from o2o.cli import run as _run

    return _run(*args, **kwargs)


__all__ = ["run"]
