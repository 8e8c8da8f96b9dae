"""The three images: their Dockerfiles build a working environment and every entry point starts.

The fast checks read the Dockerfiles (users, build context, what each image installs against what
its code imports). The slow tier builds each image's Python environment from the Dockerfile's own
lines in a fresh venv (tests/support/image_build.py) and starts it: ``--help`` of each entry point
and an import of every module of the packages the process runs.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from support.image_build import (
    FIRST_FREE_UID,
    REPO,
    Dockerfile,
    build,
    dockerignore,
    is_ignored,
    known_command,
)


@dataclass(frozen=True)
class Image:
    dockerfile: str
    packages: tuple[str, ...]
    """The Shoal packages the image's process runs: every module of them must import."""
    help_commands: tuple[tuple[str, ...], ...]
    """Arguments after the entry point that must print help and exit 0."""
    torch: bool

    def parse(self) -> Dockerfile:
        return Dockerfile.parse(REPO / self.dockerfile)


IMAGES = {
    "engine": Image("docker/engine.Dockerfile", ("shoal.engine",), (("--help",), ("serve", "--help")), torch=True),
    "router": Image("docker/router.Dockerfile", ("shoal.router",), (("--help",),), torch=False),
    "operator": Image(
        "docker/operator.Dockerfile", ("shoal.operator", "shoal.crds"), (("--help",), ("operator", "--help")), False
    ),
}
FOLDERS = {"shoal.engine": "engine", "shoal.router": "router", "shoal.crds": "crds", "shoal.operator": "operator"}


@pytest.mark.parametrize("name", IMAGES)
def test_every_line_is_one_the_build_emulation_runs(name: str) -> None:
    dockerfile = IMAGES[name].parse()
    for inst in dockerfile.instructions:
        if inst.keyword == "RUN":
            for command in inst.args.split("&&"):
                assert known_command(command.strip()), command


@pytest.mark.parametrize("name", IMAGES)
def test_the_user_is_non_root_and_collides_with_no_base_image_user(name: str) -> None:
    dockerfile = IMAGES[name].parse()
    (uid,) = dockerfile.useradd_uids()
    assert uid >= FIRST_FREE_UID
    users = [i.args for i in dockerfile.instructions if i.keyword == "USER"]
    assert users[-1] == str(uid)


@pytest.mark.parametrize("name", IMAGES)
def test_the_build_context_holds_what_the_image_copies(name: str) -> None:
    dockerfile = IMAGES[name].parse()
    ignore = dockerignore()
    copied = [s for i in dockerfile.instructions if i.keyword == "COPY" for s in i.args.split()[:-1]]
    assert {"setup.py", "pyproject.toml"} <= set(copied)  # what `pip install .` needs
    for source in copied:
        files = [REPO / source] if (REPO / source).is_file() else [f for f in (REPO / source).rglob("*") if f.is_file()]
        assert any(not is_ignored(ignore, f.relative_to(REPO).as_posix()) for f in files), source


def test_the_build_context_leaves_out_the_venv_git_and_caches() -> None:
    ignore = dockerignore()
    for path in (".venv/bin/python", ".git/HEAD", "engine/__pycache__/x.pyc", "bench/results/a.json", "shoal.egg-info/x"):
        assert is_ignored(ignore, path), path
    for path in ("engine/llm_engine.py", "setup.py", "requirements/runtime.txt", "router/__main__.py"):
        assert not is_ignored(ignore, path), path


def _modules(package: str) -> dict[str, Path]:
    folder = REPO / FOLDERS[package]
    out = {}
    for path in folder.rglob("*.py"):
        rel = path.relative_to(folder).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join([package, *parts])] = path
    return out


def _imports(path: Path) -> set[str]:
    """Modules a file imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    names: set[str] = set()
    todo: list[ast.AST] = [ast.parse(path.read_text())]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        todo += ast.iter_child_nodes(node)
    return names


def third_party_imports(packages: tuple[str, ...]) -> set[str]:
    """Top-level names of the non-Shoal modules that the packages' modules (and the Shoal modules
    they import) import, anywhere in the code."""
    every = {name: path for package in FOLDERS for name, path in _modules(package).items()}
    todo = [name for name in every if name.startswith(packages)]
    seen: set[str] = set()
    found: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in _imports(every[name]):
            if imported.startswith("shoal."):
                todo += [m for m in (imported, imported.rsplit(".", 1)[0]) if m in every]
            else:
                found.add(imported.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__"}


def _requirement_names(dockerfile: Dockerfile) -> set[str]:
    names = set()
    for inst in dockerfile.instructions:
        for file in re.findall(r"pip install [^&]*?-r (\S+)", inst.args):
            for line in (REPO / file).read_text().splitlines():
                line = line.split("#")[0].strip()
                if line:
                    names.add(re.split(r"[=<>!~ \[]", line)[0])
    return names


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_dependencies(names: set[str]) -> set[str]:
    """The names and what they depend on (as installed here, on this Python)."""
    found = {_normal(n) for n in names}
    todo = list(found)
    while todo:
        try:
            requires = importlib.metadata.requires(todo.pop()) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if _normal(req.name) not in found:
                found.add(_normal(req.name))
                todo.append(_normal(req.name))
    return found


@pytest.mark.parametrize("name", IMAGES)
def test_the_image_installs_every_package_its_code_imports(name: str) -> None:
    image = IMAGES[name]
    installed = _with_dependencies(_requirement_names(image.parse()))
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module in third_party_imports(image.packages):
        dists = {_normal(d) for d in providers.get(module, [module])}
        if not dists & installed:
            missing[module] = sorted(dists)
    if not image.torch:
        assert "torch" not in installed
        optional = {"triton", "torch"}  # imported only by engine modules these images never load
        missing = {m: d for m, d in missing.items() if m not in optional}
    assert not missing, f"{image.dockerfile} does not install what its code imports: {missing}"


IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys
failed = []
for top in sys.argv[1:]:
    package = importlib.import_module(top)
    for info in pkgutil.walk_packages(package.__path__, top + ".", onerror=failed.append):
        if info.name.endswith(".__main__"):
            continue  # runs the process itself; the entry point's --help covers it
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
print("torch loaded" if "torch" in sys.modules else "no torch")
print("\\n".join(map(str, failed)))
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGES)
def test_the_image_environment_builds_from_its_dockerfile_and_starts(name: str, tmp_path: Path) -> None:
    image = IMAGES[name]
    dockerfile = image.parse()
    env = build(name, dockerfile, tmp_path / "build")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    entry = dockerfile.entrypoint()
    for args in image.help_commands:
        done = env.run([*entry, *args], run_dir)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (entry, args, done.stdout, done.stderr[-3000:])
    done = env.run(["python", "-c", IMPORT_EVERY_MODULE, *image.packages], run_dir, timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    shoal = env.run(["python", "-c", "import shoal.crds; print(shoal.crds.__file__)"], run_dir)
    assert str(env.venv) in shoal.stdout  # the image's own install, not this checkout
    has_torch = env.run(["python", "-c", "import torch"], run_dir).returncode == 0
    assert has_torch == image.torch
