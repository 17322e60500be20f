"""Jobs that only have the installed package (no checkout) still find every config."""
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_ships_the_package_and_every_config(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("o2o-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"o2o_conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    assert "o2o/cli.py" in names and "o2o/agents/cql.py" in names
