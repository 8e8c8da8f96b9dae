"""Maps the top-level folders onto the ``shoal.*`` namespace (engine/ -> shoal.engine, ...).

Metadata lives in pyproject.toml; only the package list is computed here, so a new
subpackage can never be left out of a non-editable install.
"""

from pathlib import Path

from setuptools import setup

FOLDERS = {"shoal.engine": "engine", "shoal.router": "router", "shoal.crds": "crds", "shoal.operator": "operator"}


def find_packages() -> list[str]:
    root = Path(__file__).parent
    names = []
    for package, folder in FOLDERS.items():
        for init in sorted((root / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(root / folder)
            names.append(".".join([package, *rel.parts]))
    return names


setup(packages=find_packages(), package_dir=FOLDERS)
