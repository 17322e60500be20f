"""o2o: offline-to-online RL (Cal-QL, CQL) as a Hydra + MLflow experiment pipeline."""
import os

# MuJoCo renders image observations offscreen: EGL (GPU, or Mesa's llvmpipe on a CPU) unless the user chose
os.environ.setdefault("MUJOCO_GL", "egl")


def run(*args, **kwargs):
    """See :func:`o2o.cli.run`."""
    from o2o.cli import run as _run

    return _run(*args, **kwargs)


__all__ = ["run"]
