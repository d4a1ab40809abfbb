"""binder/ follows repo2docker's conventions (docs/binder.md). Offline: the files are parsed and checked by hand
against what repo2docker does with them; pip's own requirements parser resolves the local install; and where
repo2docker is installed (`pip install jupyter-repo2docker`, or $REPO2DOCKER naming its executable), its own
buildpack detection renders the Dockerfile with `--no-build` (no Docker needed) and the test reads it."""
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
# repo2docker's apt.txt check (buildpacks/base.py): each line must be just a package name
APT_NAME = re.compile(r"^[a-z0-9.+-]+$")


def _lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines() if line.split("#", 1)[0].strip()]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_runtime_pins_the_python_the_project_needs():
    (line,) = _lines(BINDER / "runtime.txt")
    match = re.fullmatch(r"python-(\d+)\.(\d+)", line)   # repo2docker's form: python-X.Y
    assert match, f"binder/runtime.txt: expected 'python-3.11', got {line!r}"
    from packaging.specifiers import SpecifierSet
    assert f"{match[1]}.{match[2]}" in SpecifierSet(_pyproject()["project"]["requires-python"])
    assert (match[1], match[2]) == ("3", "11")


def test_requirements_install_cpu_torch_and_the_repo_with_its_extras():
    lines = _lines(BINDER / "requirements.txt")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    torch = [x for x in lines if x.startswith("torch")]
    makefile_pin = re.search(r"^TORCH\s*\?=\s*torch==([\w.]+)", (ROOT / "Makefile").read_text(), re.M)[1]
    assert torch == [f"torch=={makefile_pin}+cpu"], "binder's torch must be the Makefile's version, CPU build"
    (local,) = [x for x in lines if x.startswith("-e")]
    match = re.fullmatch(r"-e\s+\.\[([\w,]+)\]", local)
    assert match, f"expected '-e .[extras]' (pip resolves '.' from the repository root), got {local!r}"
    extras = set(match[1].split(","))
    assert extras == {"ui", "tune", "explain"}
    assert extras <= set(_pyproject()["project"]["optional-dependencies"])
    assert not any(".." in x for x in lines), "'..' would point above the repository: repo2docker runs pip from its root"


def test_pip_resolves_the_local_requirement_to_the_repository_root(monkeypatch):
    """repo2docker runs `pip install -r binder/requirements.txt` with the working directory at $REPO_DIR; pip
    resolves a local path in a requirements file against the working directory."""
    from pip._internal.network.session import PipSession
    from pip._internal.req.constructors import install_req_from_parsed_requirement
    from pip._internal.req.req_file import parse_requirements

    monkeypatch.chdir(ROOT)
    parsed = [install_req_from_parsed_requirement(r)
              for r in parse_requirements("binder/requirements.txt", session=PipSession())]
    (local,) = [r for r in parsed if r.editable]
    assert Path(local.link.file_path) == ROOT and local.extras == {"ui", "tune", "explain"}


def test_post_build_installs_the_assets_without_their_dependencies():
    post_build = BINDER / "postBuild"
    assert post_build.stat().st_mode & stat.S_IXUSR, "repo2docker runs ./binder/postBuild: it must be executable"
    text = post_build.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert "pip install --no-cache-dir --no-deps -r requirements/assets.txt" in text   # a path from the repo root
    assert (ROOT / "requirements" / "assets.txt").is_file()
    subprocess.run(["bash", "-n", str(post_build)], check=True)   # the shell parses it
    for name in _lines(BINDER / "apt.txt"):
        assert APT_NAME.match(name), f"binder/apt.txt: {name!r} is not a bare package name"


def _repo2docker() -> list[str] | None:
    if os.environ.get("REPO2DOCKER"):
        return [os.environ["REPO2DOCKER"]]
    try:
        import repo2docker  # noqa: F401
        return [sys.executable, "-m", "repo2docker"]
    except ImportError:
        found = shutil.which("repo2docker")
        return [found] if found else None


def test_repo2docker_picks_the_python_buildpack_from_binder_and_ignores_root_files(tmp_path):
    command = _repo2docker()
    if command is None:
        pytest.skip("repo2docker is not installed (pip install jupyter-repo2docker, or set REPO2DOCKER)")
    repo = tmp_path / "repo"
    for name in ("binder", "requirements"):
        shutil.copytree(ROOT / name, repo / name)
    shutil.copy(ROOT / "pyproject.toml", repo)
    # root files that repo2docker must ignore because binder/ exists
    (repo / "requirements.txt").write_text("not-a-real-package-nbtune-root==1.0\n")
    (repo / "runtime.txt").write_text("python-3.13\n")
    (repo / "environment.yml").write_text("dependencies: [not-a-real-conda-package]\n")
    done = subprocess.run([*command, "--no-build", "--debug", str(repo)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "Building conda environment for python=3.11" in out
    dockerfile = done.stdout
    # the repository is copied in before pip runs (a local requirement), and pip runs from $REPO_DIR
    copy_at = dockerfile.index("COPY --chown=0:0 src/ ${REPO_DIR}/")
    pip_at = dockerfile.index('pip install --no-cache-dir -r "binder/requirements.txt"')
    assert copy_at < pip_at and "WORKDIR ${REPO_DIR}" in dockerfile[:copy_at]
    assert "RUN ./binder/postBuild" in dockerfile and "wordnet-base" in dockerfile
    for ignored in ("not-a-real-package-nbtune-root", "python-3.13", "not-a-real-conda-package",
                    'pip install --no-cache-dir -r "requirements.txt"', "pip install --no-cache-dir .\n"):
        assert ignored not in dockerfile
