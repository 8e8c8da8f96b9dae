"""Reading a tokenizer from a Hugging Face model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from shoal.engine.tokenizer.parts import TokenizerParts


def read_hf_folder(path: str | Path) -> TokenizerParts:
    """``tokenizer.json`` + ``tokenizer_config.json`` (+ ``chat_template.jinja``/``.json``).

    Extra end-of-sequence ids come from ``generation_config.json`` and ``config.json``.
    Raises ``FileNotFoundError`` when ``tokenizer.json`` is absent and ``ValueError`` when broken.
    """
    folder = Path(path)
    tok_file = folder / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    try:
        backend = HFTokenizer.from_file(str(tok_file))
    except Exception as exc:
        raise ValueError(f"cannot parse {tok_file}: {exc}") from exc
    cfg = _read_json(folder / "tokenizer_config.json")
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif template is None and (folder / "chat_template.json").is_file():
        template = _read_json(folder / "chat_template.json").get("chat_template")
    special = {k: _token_content(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    extra_eos: list[int] = []
    for name in ("generation_config.json", "config.json"):
        eos = _read_json(folder / name).get("eos_token_id")
        extra_eos.extend(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return TokenizerParts(
        backend,
        chat_template=template,
        bos_token=special["bos_token"],
        eos_token=special["eos_token"],
        extra_eos_token_ids=tuple(int(e) for e in extra_eos),
        special_tokens={k: v for k, v in special.items() if v is not None},
        add_bos_token=cfg.get("add_bos_token"),
        add_eos_token=cfg.get("add_eos_token"),
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot parse {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):  # serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None
