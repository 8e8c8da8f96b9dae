"""Build an image's Python environment from the very lines of its Dockerfile, without Docker.

The Dockerfiles here are simple (ARG, ENV, WORKDIR, COPY, RUN, USER, ENTRYPOINT...); each RUN is a
chain of ``&&`` commands. The emulation copies what each COPY copies (minus ``.dockerignore``),
runs each ``python3 -m venv`` and ``pip install`` in a fresh venv and refuses any command it does
not know, so no line of a Dockerfile is skipped silently. The dependency layers (everything
before the project's own install) are cached under ``~/.cache/shoal/image-envs`` by a hash of
their lines and of the files they copy, as Docker caches its layers.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository root (the build context)."""
CACHE = Path(os.environ.get("SHOAL_IMAGE_ENV_CACHE", Path.home() / ".cache" / "shoal" / "image-envs"))
IMAGE_VENV = "/opt/shoal"
IMAGE_WORKDIR = "/src"
EMULATION_VERSION = 2
"""Part of the cache key: bump it when the emulation changes how a layer is built."""
FIRST_FREE_UID = 10000
"""Base images (ubuntu:24.04, the CUDA bases) already use uid 1000; Shoal's users start here."""
# Only selects torch's build (CUDA or CPU); the version comes from the pinned requirements, and
# pip takes the CPU wheel of that version from this machine's disk.
_EXTRA_INDEX = re.compile(r"""--extra-index-url(\s+|=)("[^"]*"|'[^']*'|\S+)""")
_SKIPPED = (
    re.compile(r"^apt-get (update|install)\b"),  # system packages: the base image's business
    re.compile(r"^rm -rf (/var/lib/apt/lists/\*|/src)$"),  # layer clean-up
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass
class Dockerfile:
    """A parsed Dockerfile."""

    path: Path
    instructions: list[Instruction]

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        lines: list[str] = []
        pending = ""
        for raw in path.read_text().splitlines():
            stripped = raw.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            lines.append(pending + stripped)
            pending = ""
        assert not pending, f"{path}: a continued line never ends"
        instructions = []
        for line in lines:
            keyword, _, args = line.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip()))
        return cls(path, instructions)

    def entrypoint(self) -> list[str]:
        (found,) = [i for i in self.instructions if i.keyword == "ENTRYPOINT"]
        value: list[str] = json.loads(found.args)
        return value

    def useradd_uids(self) -> list[int]:
        return [int(m) for i in self.instructions for m in re.findall(r"useradd .*--uid (\d+)", i.args)]


@dataclass
class ImageEnv:
    """The image's venv, built on this machine."""

    name: str
    venv: Path
    log: list[str] = field(default_factory=list)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a command as the image would: its venv first on PATH, no repository on sys.path."""
        env = {
            "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(cwd),
            "PYTHONSAFEPATH": "1",
            "PYTHONUNBUFFERED": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
        }
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def is_ignored(patterns: list[str], rel: str) -> bool:
    """Whether ``.dockerignore`` keeps the repository path ``rel`` out of the build context."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


def dockerignore() -> list[str]:
    text = (REPO / ".dockerignore").read_text()
    return [line.strip().rstrip("/") for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _sources(args: str) -> tuple[list[str], str]:
    *sources, dest = shlex.split(args)
    return sources, dest


def _copy(args: str, workdir: Path, ignore: list[str]) -> list[Path]:
    """Do one COPY into ``workdir``; returns the files copied."""
    sources, dest = _sources(args)
    target_dir = workdir / dest
    copied = []
    for source in sources:
        src = REPO / source
        assert src.exists(), f"COPY {source}: not in the repository"
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        for file in files:
            rel = file.relative_to(REPO).as_posix()
            if is_ignored(ignore, rel):
                continue
            if src.is_file():
                out = target_dir / file.name if dest.endswith("/") else target_dir
            else:
                out = target_dir / file.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, out)
            copied.append(file)
    return copied


def _is_project_install(command: str) -> bool:
    return command.startswith("pip install") and command.split()[-1] == "."


def _dependency_layers(dockerfile: Dockerfile) -> int:
    """How many instructions make the dependency layers: up to the last RUN before the project's
    own install (the source COPYs after it change with every edit and are never cached)."""
    last_run = 0
    for index, inst in enumerate(dockerfile.instructions):
        if inst.keyword == "RUN":
            if any(_is_project_install(c.strip()) for c in inst.args.split("&&")):
                return last_run
            last_run = index + 1
    raise AssertionError(f"{dockerfile.path}: no `pip install ... .` of the project")


def _layer_key(dockerfile: Dockerfile, ignore: list[str]) -> str:
    """A hash of the dependency layers' instructions and of the files they copy."""
    digest = hashlib.sha256(f"{sys.version} {EMULATION_VERSION}".encode())
    for inst in dockerfile.instructions[: _dependency_layers(dockerfile)]:
        digest.update(f"{inst.keyword} {inst.args}\n".encode())
        if inst.keyword == "COPY":
            for source in _sources(inst.args)[0]:
                src = REPO / source
                files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
                for file in files:
                    if not is_ignored(ignore, file.relative_to(REPO).as_posix()):
                        digest.update(file.relative_to(REPO).as_posix().encode() + file.read_bytes())
    return digest.hexdigest()[:16]


def build(name: str, dockerfile: Dockerfile, scratch: Path) -> ImageEnv:
    """Build the image's venv (dependency layers from the cache when their lines are unchanged)."""
    ignore = dockerignore()
    venv = CACHE / f"{name}-{_layer_key(dockerfile, ignore)}"
    cached = (venv / ".complete").exists()
    for stale in CACHE.glob(f"{name}-*"):
        if stale != venv or not cached:
            shutil.rmtree(stale)  # an older build of this image, or an unfinished one: GBs each
    env = ImageEnv(name, venv)
    workdir = scratch / "root"
    workdir.mkdir(parents=True)
    layers = _dependency_layers(dockerfile)
    current_dir = "/"
    for index, inst in enumerate(dockerfile.instructions):
        if index == layers and not cached:
            (venv / ".complete").touch()  # the dependency layers are done: cache them
            cached = True
        if inst.keyword == "WORKDIR":
            current_dir = inst.args
        elif inst.keyword == "COPY":
            assert current_dir == IMAGE_WORKDIR, f"COPY into {current_dir}: the emulation copies into {IMAGE_WORKDIR}"
            _copy(inst.args, workdir, ignore)
        elif inst.keyword == "RUN":
            for command in (c.strip() for c in inst.args.split("&&")):
                if index < layers and cached:
                    env.log.append(f"cached: {command}")
                else:
                    _run(command, env, workdir)
        elif inst.keyword not in ("ARG", "ENV", "FROM", "USER", "EXPOSE", "ENTRYPOINT", "CMD"):
            raise AssertionError(f"{dockerfile.path}: the emulation does not know {inst.keyword}")
    return env


def known_command(command: str) -> bool:
    """Whether the emulation runs (or knowingly skips) one command of a RUN line."""
    argv = shlex.split(command)
    return (
        any(p.match(command) for p in _SKIPPED)
        or argv[:1] == ["useradd"]
        or argv == ["python3", "-m", "venv", IMAGE_VENV]
        or argv[:2] == ["pip", "install"]
    )


def _run(command: str, env: ImageEnv, workdir: Path) -> None:
    if any(p.match(command) for p in _SKIPPED):
        env.log.append(f"skipped: {command}")
        return
    assert known_command(command), f"the emulation does not know {command!r}: teach tests/support/image_build.py"
    argv = shlex.split(command)
    if argv[0] == "useradd":
        return  # checked by the uid test; no user is created on this machine
    if argv[:3] == ["python3", "-m", "venv"]:
        assert argv[3:] == [IMAGE_VENV], command
        env.venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys._base_executable, "-m", "venv", str(env.venv)], check=True)
        # A Python 3.12 venv (the images') has no setuptools; a 3.11 one here would hide that.
        subprocess.run([str(env.python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
        env.log.append(command)
        return
    if argv[:2] == ["pip", "install"]:
        line = _EXTRA_INDEX.sub("", command)
        done = subprocess.run(
            [str(env.python), "-m", "pip", "install", "-q", *shlex.split(line)[2:]],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        env.log.append(command)
        return
    raise AssertionError(f"unreachable: {command!r}")
