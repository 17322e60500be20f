"""Where a run's config comes from: the project's ``conf/`` and a researcher's own config folders.

A folder of one's own (its ``algo/``, ``env/``, ``domain/``, ``schedule/``, ``experiment/`` ... beside the
project's) joins the search path by ``hydra.searchpath=[file:///path/to/conf]`` on the command line or by
``O2O_CONFIG_PATH=/path/to/conf`` (several separated by ``:``), for single runs, ``-m`` sweeps and ``o2o-study``
alike. Its ``algo/*.py`` files are the algorithms it adds (o2o.agents.registry), imported before the config is
composed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import yaml

CONFIG_PATH_ENV = "O2O_CONFIG_PATH"
PER_DOMAIN = "algo/per_domain@algo"  # the defaults-list entry that picks an algorithm's per-domain file


def _entries(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [item.strip().strip("'\"") for item in value.split(",") if item.strip()]


def searchpath(args: Sequence[str]) -> list[str]:
    """The extra config sources, in Hydra's form (``file://...``, ``pkg://...``): ``O2O_CONFIG_PATH``'s folders,
    then those of the last ``hydra.searchpath=`` argument."""
    found = [f"file://{Path(p).expanduser().absolute()}" for p in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep)
             if p.strip()]
    given = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("hydra.searchpath=")]
    if given:
        found += [e if "://" in e else f"file://{Path(e).expanduser().absolute()}" for e in _entries(given[-1])]
    return list(dict.fromkeys(found))


def with_searchpath(args: Sequence[str]) -> list[str]:
    """``args`` with one ``hydra.searchpath=[...]`` that holds ``O2O_CONFIG_PATH``'s folders and the given ones, put
    with the other overrides (before the first; with none, before everything, where no flag can take it for its
    value): Hydra reads its overrides as one run of arguments, and its own flags (``-m``, ``--cfg job``,
    ``--info defaults``) may stand before or after them."""
    path = searchpath(args)
    rest = [a for a in args if not a.lstrip("+").startswith("hydra.searchpath=")]
    if not path:
        return rest
    first = next((i for i, a in enumerate(rest) if "=" in a and not a.startswith("-")), 0)  # none: first of all
    return rest[:first] + [f"hydra.searchpath=[{','.join(path)}]"] + rest[first:]


def folders(args: Sequence[str]) -> list[Path]:
    """The file folders of the search path (``pkg://`` sources resolved to their package folder)."""
    out = []
    for entry in searchpath(args):
        scheme, _, where = entry.partition("://")
        if scheme == "file":
            out.append(Path(where))
        elif scheme == "pkg" and (folder := _package_folder(where)) is not None:
            out.append(folder)
    return out


def _package_folder(package: str) -> Path | None:
    """The folder of a ``pkg://`` config source (``o2o_conf``, ``my_project/conf``), if it is one."""
    import importlib.util

    spec = importlib.util.find_spec(package.replace("/", "."))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def group_options(group: str, args: Sequence[str]) -> set[str]:
    """The options of a config group (``algo``, ``env``): the project's and those of one's own config folders."""
    roots = [folder for folder in (_package_folder("o2o_conf"), *folders(args)) if folder is not None]
    return {path.stem for root in roots for path in (root / group).glob("*.yaml")}


def check_folders(args: Sequence[str]) -> None:
    """Each given config folder exists: a typo would otherwise surface as "Could not find 'algo/...'"."""
    from o2o.errors import ConfigError

    for entry in searchpath(args):
        scheme, _, where = entry.partition("://")
        if scheme == "file" and not Path(where).is_dir():
            raise ConfigError(f"config folder {where} (hydra.searchpath or {CONFIG_PATH_ENV}) is not a folder: give "
                              "the folder that holds your algo/, env/ ... folders")


def load_plugins(args: Sequence[str]) -> list[str]:
    """Import the algorithms of the search path's config folders (o2o.agents.registry.load_plugins)."""
    from o2o.agents.registry import load_plugins as load

    check_folders(args)
    return load(folders(args))


def _source_folders(hydra_runtime) -> list[Path]:
    out = []
    for source in hydra_runtime.config_sources:
        if source["schema"] == "file":
            out.append(Path(source["path"]))
        elif source["schema"] == "pkg" and source["provider"] != "hydra":
            folder = _package_folder(source["path"])
            if folder is not None:
                out.append(folder)
    return out


def per_domain_file_of(choice: str | None, roots: list[Path]) -> tuple[str, list[Path]]:
    """The per-domain choice (``<algo>/<domain>``) and the files in the config folders ``roots`` that give its
    values, nearest first: the file and those it extends (``defaults: [/algo/per_domain/cql/adroit@_here_]``); no
    files where it has none."""
    files, pending = [], [choice] if choice else []
    while pending:
        name = pending.pop(0)
        path = next((root / "algo" / "per_domain" / f"{name}.yaml" for root in roots
                     if (root / "algo" / "per_domain" / f"{name}.yaml").is_file()), None)
        if path is None:
            continue
        files.append(path)
        for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
            if isinstance(entry, str) and entry.startswith("/algo/per_domain/"):
                pending.append(entry.removeprefix("/algo/per_domain/").split("@")[0])
    return choice or "", files


def _written(files: list[Path]) -> dict:
    """The values a per-domain file and those it extends write, the file's own over theirs."""
    written: dict = {}
    for path in reversed(files):
        written.update(_values(path))
    return written


def extended_algorithms(algo_yaml: Path) -> list[str]:
    """The algorithms an algorithm's YAML extends: its defaults list's plain entries (``- <parent>``,
    ``- /algo/<parent>``, ``- <parent>@_here_``), as Hydra reads them inside the ``algo`` group."""
    parents = []
    for entry in (yaml.safe_load(algo_yaml.read_text()) or {}).get("defaults", []):
        if not isinstance(entry, str) or entry == "_self_":
            continue
        option = entry.split("@")[0]
        if option.startswith("/algo/"):
            parents.append(option.removeprefix("/algo/"))
        elif not option.startswith("/"):
            parents.append(option)
    return parents


def _values(path: Path) -> dict:
    return {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}


def _algo_yaml(name: str, roots: list[Path]) -> tuple[Path, Path] | None:
    """The config folder whose ``algo/<name>.yaml`` is composed (the first that has it, as Hydra reads them) and
    that file."""
    paths = ((root, root / "algo" / f"{name}.yaml") for root in roots)
    return next(((root, path) for root, path in paths if path.is_file()), None)


def _left_out(name: str, domain: str, env: str, roots: list[Path], algo) -> str | None:
    """For an algorithm of one's own (a YAML outside the project's conf/) with no per-domain file for the run's
    domain, extending, directly or through others of one's own, one that has per-domain values there: one line
    naming those the run does not use (``algo``: its validated config), those its own YAMLs change, and the file
    that would bring them in. The project's own presets are checked by its tests."""
    project = _package_folder("o2o_conf")

    def in_project(root: Path) -> bool:
        return project is not None and root.resolve() == project.resolve()

    found = _algo_yaml(name, roots)
    if found is None or in_project(found[0]):
        return None
    own_root, own_keys, pending, seen = found[0].absolute(), _values(found[1]), extended_algorithms(found[1]), {name}
    while pending:  # up through one's own presets to the first with per-domain values here, or a project algorithm
        parent = pending.pop(0)
        found = None if parent in seen else _algo_yaml(parent, roots)
        seen.add(parent)
        if found is None:
            continue
        _, inherited = per_domain_file_of(f"{parent}/{domain}", roots)
        if not inherited:
            if not in_project(found[0]):
                own_keys = {**_values(found[1]), **own_keys}  # the nearer preset's value wins
                pending += extended_algorithms(found[1])
            continue
        unused = {k: v for k, v in _written(inherited).items() if hasattr(algo, k) and getattr(algo, k) != v}
        left = {k: v for k, v in unused.items() if k not in own_keys}
        if not left:
            continue
        kept = [k for k in unused if k in own_keys]
        file = own_root / "algo" / "per_domain" / name / f"{domain}.yaml"
        line = (f"algo={name} extends {parent}, whose values for the {domain} domain (env={env}) this run does not "
                "use: " + ", ".join(f"{k}={v}" for k, v in left.items()))
        if kept:
            line += "; your presets change " + ", ".join(f"{k} to {getattr(algo, k)}" for k in kept)
        line += f". To use {parent}'s, write {file} with `defaults: [/algo/per_domain/{parent}/{domain}@_here_]`"
        if kept:
            line += f" and then your {', '.join(kept)} again (a per-domain file comes after the algorithm's YAML)"
        return line + "; to keep your own values on purpose, write that file empty"
    return None


def per_domain_report(hydra_runtime, algo) -> tuple[str, bool]:
    """One line: which per-domain values the run used and where they came from; and whether it is a warning (an
    algorithm of one's own leaving out those of the one it extends: :func:`_left_out`)."""
    roots = _source_folders(hydra_runtime)
    choice, files = per_domain_file_of(hydra_runtime.choices.get(PER_DOMAIN), roots)
    algo_name, _, domain = choice.rpartition("/")
    if not files:
        env = hydra_runtime.choices.get("env", "?")
        left_out = _left_out(algo_name, domain, env, roots, algo) if algo_name else None
        return (f"per-domain values: none for {algo_name} on {domain} (no algo/per_domain/{choice}.yaml): the "
                f"algorithm's own values" + (f"; {left_out}" if left_out else "")), left_out is not None
    written = _written(files)

    def used(key: str) -> str:
        value = getattr(algo, key)
        return f"{key}={value}" + ("" if value == written[key] else f" (set elsewhere; the file has {written[key]})")

    values = ", ".join(used(k) for k in written if hasattr(algo, k))
    via = f" (extending {', '.join(p.parent.name + '/' + p.stem for p in files[1:])})" if len(files) > 1 else ""
    return f"per-domain values: algo/per_domain/{choice}.yaml{via}: {values}", False


def smoke_values() -> dict:
    """The smoke preset's values (conf/experiment/smoke.yaml, as installed), by dotted key."""
    import importlib.util

    conf = Path(importlib.util.find_spec("o2o_conf").origin).parent

    def flatten(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(flatten(yaml.safe_load((conf / "experiment" / "smoke.yaml").read_text())))


def smoke_sized(params: dict) -> bool:
    """Whether a run's MLflow params are the smoke preset's size (experiment=smoke, a study's ``--budget smoke``, or
    the same values by hand): a run that learns nothing."""
    def value(text):
        try:
            return yaml.safe_load(text)  # as the param was written: "[32, 32]", "1", "1.0"
        except yaml.YAMLError:
            return text

    return all(key in params and value(params[key]) == wanted for key, wanted in smoke_values().items())
