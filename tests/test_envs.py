"""The conda env that `--sdm conda` builds must equal the pip lock that `make install` uses."""
import re
import tomllib

import yaml

from conftest import REPO
import importlib.util

spec = importlib.util.spec_from_file_location("sync_envs", REPO / "tools" / "sync_envs.py")
sync_envs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sync_envs)


def test_conda_env_pins_equal_pip_lock():
    env = yaml.safe_load((REPO / "envs" / "drllm.yaml").read_text())
    pip_block = next(item for item in env["dependencies"] if isinstance(item, dict))["pip"]
    assert pip_block == sync_envs.pins(REPO / "requirements.lock")
    assert "python=3.11" in env["dependencies"]


def test_post_deploy_installs_the_asset_pins():
    script = (REPO / "envs" / "drllm.post-deploy.sh").read_text()
    assert script == sync_envs.post_deploy(sync_envs.pins(REPO / "requirements-assets.txt"))


def test_lock_pins_every_direct_dependency_exactly():
    """Every dependency pyproject.toml declares, extras included (a package imported only by bench/ or the tests
    too), is pinned exactly in the lock."""
    lock = {re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower().replace("_", "-"): line
            for line in sync_envs.pins(REPO / "requirements.lock")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower().replace("_", "-") for d in declared}
    assert {"torch", "snakemake", "pytest", "scipy", "scikit-learn"} <= names
    assert [name for name in sorted(names) if "==" not in lock.get(name, "")] == []
