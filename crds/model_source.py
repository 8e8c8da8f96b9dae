"""ModelSource: where a pool's weights come from (the model URI schemes) and the name clients ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from shoal.crds.cel import CelRule
from shoal.crds.common import ApiModel, Reason, spec_error

MODEL_SCHEMES = ("bundled", "file", "hostpath", "pvc", "https", "http")
"""URI schemes a model source may use (see ModelSource.uri)."""

BUNDLED_MODELS = ("smollm2-135m-instruct",)
"""Models the engine ships with (``bundled:<name>``)."""


def _cel_literal_pattern(text: str) -> str:
    """``text`` as an RE2 pattern inside a CEL string (names hold only [a-z0-9.-])."""
    return text.replace(".", "[.]")


_MODEL_URI_RULE = (
    "self.uri.matches('"
    f"^bundled:({'|'.join(_cel_literal_pattern(m) for m in BUNDLED_MODELS)})$"
    "|^(file|hostpath):(///[^?#]|/[^/?#])"
    "|^pvc://[^/?#]+/[^?#]*[^/?#]"
    "|^https?://[^/?#]+/[^?#]*[.]gguf([?#].*)?$"
    "')"
)


@dataclass(frozen=True)
class ModelUri:
    """A parsed ModelSource.uri."""

    scheme: str
    """bundled, file, hostpath, pvc, https or http."""
    location: str
    """Bundled name, absolute path (file, hostpath), path inside the claim (pvc) or the URL."""
    claim: str | None = None
    """PersistentVolumeClaim name (pvc)."""

    @property
    def file_name(self) -> str:
        """Last path component (the downloaded file's name for https)."""
        return self.location.rstrip("/").rsplit("/", 1)[-1]


def parse_model_uri(uri: str) -> ModelUri:
    """Parse a model URI; ValueError names what is wrong."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme not in MODEL_SCHEMES:
        raise ValueError(f"unsupported model URI {uri!r}: use one of {', '.join(s + ':' for s in MODEL_SCHEMES)}")
    if scheme == "bundled":
        if rest not in BUNDLED_MODELS:
            raise ValueError(f"unknown bundled model {rest!r}: known are {', '.join(BUNDLED_MODELS)}")
        return ModelUri(scheme, rest)
    parts = urlsplit(uri)
    if scheme in ("file", "hostpath"):
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ValueError(f"{scheme} URI needs an absolute path ({scheme}:///models/x), got {uri!r}")
        return ModelUri(scheme, parts.path)
    if scheme == "pvc":
        path = parts.path.strip("/")
        if not parts.netloc or not path:
            raise ValueError(f"pvc URI needs a claim and a path (pvc://<claim>/<path>), got {uri!r}")
        return ModelUri(scheme, path, claim=parts.netloc)
    if not parts.netloc or not parts.path.endswith(".gguf"):
        raise ValueError(f"{scheme} model downloads must name a single .gguf file, got {uri!r}")
    return ModelUri(scheme, uri)


class ModelSource(ApiModel):
    """Where the weights come from and the name clients ask for."""

    uri: Annotated[str, Field(min_length=3, max_length=2048, pattern=r"^[a-z][a-z0-9+.-]*:.+$")]
    """Model location. One of: ``bundled:smollm2-135m-instruct`` (shipped with the engine);
    ``pvc://<claim>/<path>`` (a PersistentVolumeClaim, mounted read-only); ``hostpath:///<path>``
    (a node path); ``file:///<path>`` (a path inside the engine image, or on this machine for
    ``shoal up``); ``https://.../<file>.gguf`` (downloaded by an init container). The path names
    a Hugging Face folder (config.json + *.safetensors + tokenizer.json) or a .gguf file."""
    served_model_name: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$")]
    """The model name in the OpenAI API (the ``model`` field of requests)."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            _MODEL_URI_RULE,
            "uri: use bundled:<name>, file:///<path>, hostpath:///<path>, pvc://<claim>/<path> or https://.../<file>.gguf",
            Reason.MODEL_SOURCE_INVALID,
            ".uri",
        ),
    )

    @field_validator("uri")
    @classmethod
    def _known_source(cls, uri: str) -> str:
        try:
            parse_model_uri(uri)
        except ValueError as exc:
            raise spec_error(Reason.MODEL_SOURCE_INVALID, str(exc)) from None
        return uri
