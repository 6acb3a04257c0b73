"""A checkpoint's tokenizer: `tokenizer.json` through the `tokenizers` library, plus HF's side files.

`load_tokenizer(dir) -> CheckpointTokenizer | None` (None when the directory has no tokenizer.json).
Special tokens (bos / eos / pad) and the chat template come from `tokenizer_config.json` (or a
`chat_template.jinja` file); extra end-of-sequence ids from `generation_config.json` and `config.json`.
`apply_chat_template(messages, add_generation_prompt=True, tokenize=False)` renders the template with jinja2's
immutable sandbox (the same globals transformers provides); it never executes code from the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from planner.errors import UserError
from planner.values import is_int


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON
        raise UserError(f"cannot read {path}: {err}", "fix or remove the file") from err
    return data if isinstance(data, dict) else {}


def _special_token_text(value: object) -> str | None:
    """tokenizer_config stores special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _as_id_list(value: object) -> list[int]:
    if is_int(value):
        return [value]
    if isinstance(value, list):
        return [v for v in value if is_int(v)]
    return []


def _chat_template(directory: Path, config: dict) -> str | None:
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _raise_template_error(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _json_filter(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def compile_chat_template(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _json_filter
    env.globals["raise_exception"] = _raise_template_error
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise UserError(
            f"the checkpoint's chat_template does not parse: {err}",
            "fix chat_template in tokenizer_config.json",
        ) from err


@dataclass
class CheckpointTokenizer:
    backend: Tokenizer
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    chat_template: str | None = None
    add_bos_token: bool | None = None  # tokenizer_config's explicit request, if any
    extra_eos_token_ids: list[int] = field(default_factory=list)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        eos = self._id(self.eos_token)
        return eos if eos is not None else next(iter(self.extra_eos_token_ids), None)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Every id that ends a sequence (tokenizer eos plus generation_config / config.json eos ids)."""
        ids = set(self.extra_eos_token_ids)
        if self._id(self.eos_token) is not None:
            ids.add(self._id(self.eos_token))
        return frozenset(ids)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        bos = self.bos_token_id
        if add_special_tokens and self.add_bos_token and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @cached_property
    def _compiled_template(self) -> jinja2.Template:
        if self.chat_template is None:
            raise UserError(
                "this checkpoint has no chat template",
                "pass plain prompts, or add chat_template to tokenizer_config.json",
            )
        return compile_chat_template(self.chat_template)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, tokenize: bool = False
    ) -> str | list[int]:
        """Render `messages` ([{"role", "content"}, ...]); token ids when `tokenize` (no extra specials)."""
        try:
            text = self._compiled_template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except jinja2.exceptions.TemplateError as err:
            raise UserError(
                f"the chat template rejected the messages: {err}",
                "pass messages in the roles and order the model's template expects",
            ) from err
        return self.encode(text, add_special_tokens=False) if tokenize else text


def load_tokenizer(directory: Path) -> CheckpointTokenizer | None:
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as err:  # the tokenizers library raises plain Exceptions on malformed files
        raise UserError(f"cannot load {path}: {err}", "re-download or regenerate tokenizer.json") from err
    config = _read_json(directory / "tokenizer_config.json")
    extra_eos = _as_id_list(
        _read_json(directory / "generation_config.json").get("eos_token_id")
    ) + _as_id_list(_read_json(directory / "config.json").get("eos_token_id"))
    add_bos = config.get("add_bos_token")
    return CheckpointTokenizer(
        backend=backend,
        bos_token=_special_token_text(config.get("bos_token")),
        eos_token=_special_token_text(config.get("eos_token")),
        pad_token=_special_token_text(config.get("pad_token")),
        chat_template=_chat_template(directory, config),
        add_bos_token=add_bos if isinstance(add_bos, bool) else None,
        extra_eos_token_ids=list(dict.fromkeys(extra_eos)),
    )
