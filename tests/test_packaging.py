"""The wheel: every config inside the package, the MIT license file, an SPDX expression."""

import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools", minversion="77")  # SPDX license expressions
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(ROOT)],
                   check=True, capture_output=True, cwd=out)
    (path,) = out.glob("propbench-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_ships_every_config(wheel):
    names = set(wheel.namelist())
    shipped = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "propbench").rglob("*.yaml"))
    assert shipped and [name for name in shipped if name not in names] == []
    assert {"propbench/conf/config.yaml", "propbench/conf/hydra/launcher/slurm.yaml",
            "propbench/conf/hparams_search/tanh_edge_of_chaos.yaml",
            "propbench/experiments/experiment/default_init.yaml"} <= names
    assert not [n for n in names if n.startswith(("tests/", "results/", "notebooks/"))]


def test_the_wheel_carries_the_license(wheel):
    metadata_name, = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.10"
    license_file = [n for n in wheel.namelist() if n.endswith("licenses/LICENSE")]
    assert license_file and wheel.read(license_file[0]).decode().startswith("MIT License")
    extras = metadata.get_all("Provides-Extra")
    assert {"test", "optuna", "parquet"} <= set(extras)
