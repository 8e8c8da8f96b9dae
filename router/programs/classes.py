"""The program classes a router serves: inline ones plus ``classesFile``, re-read live.

A bad file never takes classes away: the last good set stays loaded, the error is logged
once and shown in ``GET /v1/programs/classes`` until the file is fixed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import yaml
from pydantic import ValidationError

from shoal.router.programs.config import ProgramClassConfig, ProgramsConfig, load_classes_file

log = logging.getLogger("shoal.router.programs")


class ClassSource:
    """Loads and re-loads the classes; ``poll`` says when they changed."""

    def __init__(self, cfg: ProgramsConfig, clock: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self._clock = clock
        self._stamp: tuple[int, int, int] | None = None
        self.classes: list[ProgramClassConfig] = list(cfg.classes)
        self.error: str | None = None
        """Why the file's latest version was not loaded (None: it was, or there is no file)."""
        self.loaded_at: float | None = None

    def poll(self) -> bool:
        """Re-read the file if it changed; True when the loaded classes changed."""
        path = self._cfg.classes_file
        if path is None:
            if self.loaded_at is None:
                self.loaded_at = self._clock()
            return False
        try:
            st = os.stat(path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._stamp and self.loaded_at is not None:
            return False
        self._stamp = stamp
        try:
            from_file = load_classes_file(path)
            merged = self._merge(from_file)
        except (OSError, ValueError, ValidationError, yaml.YAMLError) as exc:
            message = f"classesFile {path}: {_one_line(exc)}"
            if message != self.error:
                log.error("%s (keeping the %d classes loaded before)", message, len(self.classes))
            self.error = message
            return False
        changed = merged != self.classes
        self.classes = merged
        self.error = None
        self.loaded_at = self._clock()
        if changed:
            log.info("program classes loaded: %s", ", ".join(c.name for c in merged) or "none")
        return changed

    def _merge(self, from_file: list[ProgramClassConfig]) -> list[ProgramClassConfig]:
        names = [c.name for c in from_file]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"classes defined twice: {', '.join(twice)}")
        inline = {c.name for c in self._cfg.classes}
        clash = sorted(inline & {c.name for c in from_file})
        if clash:
            raise ValueError(f"classes defined both inline and in the file: {', '.join(clash)}")
        return [*self._cfg.classes, *from_file]


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg')} ({exc.error_count()} error(s))"
    return " ".join(str(exc).split())
