"""Where algorithms register themselves: one decorator in each agent file, read by the config schema, the
pipeline, the compiled update and the tests.

An agent file declares its name, its config schema and its agent class in one place::

    @register("my_method", MyMethodConfig)
    class MyMethod(ActorCritic): ...

and its YAML starts from that schema (``defaults: [/schema/algo@_here_: my_method, _self_]``). The built-in agents
are the modules of this package, found by :func:`load_builtin`; a researcher's own are ``.py`` files in the
``algo/`` folder of a config folder they add to the search path (docs/extending.md),
imported by :func:`load_plugins` before the config is composed.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path

from o2o.errors import ConfigError


@dataclass(frozen=True)
class Algorithm:
    name: str  # the schema's name in Hydra's ConfigStore: ``schema/algo/<name>``
    schema: type  # a dataclass derived from o2o.config.AlgoConfig
    agent: type  # a class derived from o2o.agents.core.ActorCritic


ALGORITHMS: dict[str, Algorithm] = {}
AGENT_OF_SCHEMA = "_o2o_agent"  # the schema class's link to its agent, for processes that received it pickled
PLUGIN_PREFIX = "o2o_plugin_"  # the module name of one's own algorithm file (load_plugins)


def _source(agent: type) -> bytes | None:
    """The bytes of the file that defines ``agent`` (None where there is no such file)."""
    file = getattr(sys.modules.get(agent.__module__), "__file__", None)
    try:
        return Path(file).read_bytes() if file else None
    except OSError:
        return None


def _same_plugin_file(known: type, new: type) -> bool:
    """Both are one's own algorithm files (load_plugins), with the same bytes."""
    if not (known.__module__.startswith(PLUGIN_PREFIX) and new.__module__.startswith(PLUGIN_PREFIX)):
        return False
    source = _source(known)
    return source is not None and source == _source(new)


def register(name: str, schema: type):
    """Class decorator: ``agent_class`` is the agent of the algorithm family ``name``, configured by ``schema``. The
    same class imported again, or one's own file copied into another config folder (one process running studies of
    both), takes the name over; any other class under a taken name, a built-in one above all, is refused."""
    def decorate(agent_class: type) -> type:
        known = ALGORITHMS.get(name)
        same = known is not None and known.agent.__qualname__ == agent_class.__qualname__ and (
            known.agent.__module__ == agent_class.__module__ or _same_plugin_file(known.agent, agent_class))
        if known is not None and not same:
            raise ConfigError(f"two algorithms are registered as {name!r}: {known.agent.__module__}."
                              f"{known.agent.__qualname__} and {agent_class.__module__}.{agent_class.__qualname__}; "
                              "rename one")
        ALGORITHMS[name] = Algorithm(name, schema, agent_class)
        setattr(schema, AGENT_OF_SCHEMA, agent_class)
        return agent_class
    return decorate


def agent_class(algo_config) -> type:
    """The agent class for a validated ``algo`` config (an instance of a registered schema)."""
    agent = getattr(type(algo_config), AGENT_OF_SCHEMA, None)
    if agent is None:
        raise ConfigError(f"algo={getattr(algo_config, 'name', '?')}: its schema {type(algo_config).__name__} is "
                          "not registered by any agent (o2o.agents.registry.register)")
    return agent


def load_builtin() -> dict[str, Algorithm]:
    """Import every module of ``o2o.agents``: each built-in agent registers itself."""
    import o2o.agents as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return ALGORITHMS


def load_plugins(config_folders: list[Path]) -> list[str]:
    """Import the ``algo/*.py`` files of the given config folders (a researcher's own algorithms); returns their
    module names. Each is imported once per process, under a name derived from its path, and pickled by value (so
    that submitit's and SLURM's job processes receive its classes without importing it)."""
    names = []
    for folder in config_folders:
        for path in sorted((Path(folder) / "algo").glob("*.py")):
            path = path.resolve()
            name = f"{PLUGIN_PREFIX}{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            names.append(name)
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except ConfigError:
                del sys.modules[name]
                raise
            except Exception as err:
                del sys.modules[name]
                raise ConfigError(f"{path} cannot be imported: {type(err).__name__}: {err}") from err
            import cloudpickle

            cloudpickle.register_pickle_by_value(module)
    return names
