"""Tokenizer from a checkpoint's tokenizer.json (Hugging Face `tokenizers`), its special
tokens and chat templates found and rendered with jinja2 as transformers'
AutoTokenizer.apply_chat_template does."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from pyruntime.errors import ModelLoadError

# Where transformers (>= 4.43) saves chat templates, beside tokenizer_config.json.
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # the default template
CHAT_TEMPLATE_DIR = "additional_chat_templates"  # <name>.jinja: the named ones (e.g. tool_use)
PROCESSOR_CHAT_TEMPLATE_FILE = "chat_template.json"  # a processor's legacy {"chat_template": ...}

# Names a message's reasoning is passed under; templates read the first.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _token_text(v):
    """tokenizer_config.json stores special tokens as strings or AddedToken dicts."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a readable JSON file ({e})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot read the chat template ({e})") from None


def _named_templates(value, path: Path) -> dict[str, str]:
    """A chat_template entry: a template string, or a list of {"name": ..., "template": ...}
    (or a {name: template} dict, which transformers also takes)."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    if isinstance(value, list) and all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str) for t in value
    ):
        return {t["name"]: t["template"] for t in value}
    raise ModelLoadError(f"{path}: chat_template must be a string or a list of {{'name', 'template'}} objects")


def read_chat_templates(folder: Path, cfg: dict) -> dict[str, str]:
    """name -> template, found as transformers' AutoTokenizer finds them: chat_template.jinja
    (named "default") and additional_chat_templates/<name>.jinja take priority over
    tokenizer_config.json's chat_template (cfg's); a processor's chat_template.json comes last."""
    templates = {}
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = _read_text(folder / CHAT_TEMPLATE_FILE)
    if (folder / CHAT_TEMPLATE_DIR).is_dir():
        for path in sorted((folder / CHAT_TEMPLATE_DIR).glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = _read_text(path)
    if templates:
        return templates
    templates = _named_templates(cfg.get("chat_template"), folder / "tokenizer_config.json")
    if not templates and (folder / PROCESSOR_CHAT_TEMPLATE_FILE).is_file():
        legacy = _read_json(folder / PROCESSOR_CHAT_TEMPLATE_FILE)
        templates = _named_templates(legacy.get("chat_template") if isinstance(legacy, dict) else None,
                                     folder / PROCESSOR_CHAT_TEMPLATE_FILE)
    return templates


def _special_tokens(cfg: dict) -> dict[str, str]:
    """The special tokens a template sees, as transformers passes them: bos_token, eos_token,
    unk_token, sep_token, pad_token, cls_token, mask_token and any other `*_token` string
    (a model's own, e.g. image_token), plus a dict of named extra_special_tokens."""
    named = {k: v for k, v in cfg.items() if k.endswith("_token")}
    extra = cfg.get("extra_special_tokens")
    if isinstance(extra, dict):
        named.update(extra)
    return {k: t for k, v in named.items() if (t := _token_text(v)) is not None}


class Tokenizer:
    def __init__(self, folder: Path):
        folder = Path(folder)
        path = folder / "tokenizer.json"
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise ModelLoadError(f"{path}: cannot load tokenizer ({e})") from None
        cfg_path = folder / "tokenizer_config.json"
        cfg = _read_json(cfg_path) if cfg_path.exists() else {}
        if not isinstance(cfg, dict):
            raise ModelLoadError(f"{cfg_path}: not a JSON object")
        # As transformers: an older folder's special_tokens_map.json overrides the config's
        # tokens unless the config lists its added tokens itself.
        stm_path = folder / "special_tokens_map.json"
        if "added_tokens_decoder" not in cfg and stm_path.exists():
            stm = _read_json(stm_path)
            cfg = {**cfg, **stm} if isinstance(stm, dict) else cfg
        self.special_tokens = _special_tokens(cfg)
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.chat_templates = read_chat_templates(folder, cfg)
        self.chat_template = self.chat_templates.get("default")  # None: no default template
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of text, special tokens added as the tokenizer's post-processor says."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, text: str | None) -> int | None:
        return None if text is None else self._tok.token_to_id(text)

    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        """The template to render: chat_template names one of the model's (e.g. "tool_use") or is
        a template itself; None takes "tool_use" when tools are given and the model has it, else
        "default"."""
        names = ", ".join(sorted(self.chat_templates)) or "none"
        if chat_template is None:
            name = "tool_use" if tools is not None and "tool_use" in self.chat_templates else "default"
            if name in self.chat_templates:
                return self.chat_templates[name]
            if not self.chat_templates:
                raise ValueError("this model has no chat template (no chat_template.jinja nor a chat_template in "
                                 "tokenizer_config.json); use generate() with a plain prompt, or pass chat_template=")
            raise ValueError(f"this model has no default chat template; pass chat_template= one of: {names}")
        if not isinstance(chat_template, str):
            raise ValueError("chat_template must be a template name or a Jinja template string, "
                             f"got {type(chat_template).__name__}")
        if chat_template in self.chat_templates:
            return self.chat_templates[chat_template]
        if "{{" in chat_template or "{%" in chat_template:
            return chat_template
        raise ValueError(f"this model has no chat template named {chat_template!r} (it has: {names})")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool | None = None, *,
                            tools: list[dict] | None = None, documents: list[dict] | None = None,
                            chat_template: str | None = None, continue_final_message: bool | str = False,
                            tokenize: bool = False, **kwargs) -> str | list[int]:
        """The conversation rendered by the model's chat template, as transformers renders it.

        messages: [{"role": ..., "content": ..., ...}]. add_generation_prompt (default: True unless
        continue_final_message) ends with the header of an assistant turn. tools: JSON schemas
        ({"type": "function", "function": {...}}); documents: [{"title", "text"}]. chat_template:
        a template name (e.g. "tool_use") or a template string. continue_final_message: leave the
        last message open (True: its "content", or the name of the field to continue). kwargs are
        passed to the template (e.g. date_string, enable_thinking) and override the special tokens.
        tokenize=True returns token ids encoded without added special tokens (the template writes
        BOS itself), as transformers' apply_chat_template(tokenize=True) does."""
        template = self.get_chat_template(chat_template, tools)
        messages = _check_messages(messages)
        tools = _check_list(tools, "tools", "JSON schema dicts ({'type': 'function', 'function': {...}})")
        documents = _check_list(documents, "documents", "dicts with 'title' and 'text'")
        if add_generation_prompt is None:
            add_generation_prompt = not continue_final_message
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt are not compatible: the first continues "
                             "the last message, the second starts a new assistant one")
        kwargs = {**self.special_tokens, **_plain(kwargs)}
        if continue_final_message:
            final = _tag_final_message(messages, template, continue_final_message)
        try:
            text = _compile(template).render(messages=messages, tools=tools, documents=documents,
                                             add_generation_prompt=add_generation_prompt, **kwargs)
        except TemplateError as e:  # raise_exception(...) in the template, an undefined name, a syntax error
            raise ValueError(f"chat template failed to render: {e}") from e
        except TypeError as e:  # the template met a message shape it does not expect (e.g. list content)
            raise ValueError(f"chat template failed to render: {type(e).__name__}: {e}") from e
        if continue_final_message:
            text = _cut_at_tag(text, final)
        return self._tok.encode(text, add_special_tokens=False).ids if tokenize else text


def _plain(value):
    """A copy of value made of JSON types only (str, int, float, bool, None, dict, list, tuple):
    the template never sees the caller's objects (nor their methods), and edits stay private."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # subclasses (enums) stripped to the base type and its methods
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _check_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages or \
            not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for m in _plain(list(messages)):
        m = {k: v for k, v in m.items() if v is not None}  # content=None, tool_calls=None: as if absent
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:  # every name templates read it under
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def _check_list(value, name: str, what: str):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"{name} must be a list of {what}")
    return _plain(list(value))


def _tag_final_message(messages: list[dict], template: str, continue_final_message) -> str:
    """Marks the end of the last message, so the rendering can be cut there (the template's
    end-of-turn tokens dropped). Returns the text continued."""
    field = continue_final_message if isinstance(continue_final_message, str) else "content"
    last = messages[-1]
    final = last.get(field)
    if final is None:
        raise ValueError(f"continue_final_message is set but the final message has no {field!r} to continue")
    fields = [f for f in _REASONING_FIELDS if last.get(f) == final] if field in _REASONING_FIELDS else [field]
    if not any(f in template for f in fields):
        raise ValueError(f"continue_final_message is set to {field!r} but the chat template does not read that field")
    if isinstance(final, list):  # content blocks: continue the last text block
        for block in reversed(final):
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                text, block["text"] = block["text"], block["text"] + _CONTINUE_TAG
                return text
        raise ValueError("continue_final_message is set but the final message has no text to continue")
    if not isinstance(final, str):
        raise ValueError(f"continue_final_message needs the final message's {field!r} to be a string")
    for f in fields:
        last[f] = last[f] + _CONTINUE_TAG
    return final


def _cut_at_tag(text: str, final: str) -> str:
    tag = _CONTINUE_TAG.strip()
    if final.strip() not in text or tag not in text:
        raise ValueError("continue_final_message is set but the chat template dropped part of the final message")
    at = text.rindex(tag)
    # The template kept the message's trailing spacing, or trimmed it (then so do we).
    return text[:at] if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()


def _raise_exception(message):
    raise TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Not jinja's own tojson, which escapes HTML characters and takes indent only.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """dict() for templates, without the class's attributes to climb out of the sandbox by."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """namespace() for templates, refusing underscore attributes (a path to CPython internals)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]  # jinja's signature trick: namespace(self=...) still works
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes on a namespace, "
                                                  f"got {name!r}")


@lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    """The template in transformers' environment: sandboxed, trim_blocks/lstrip_blocks, loop
    controls, raise_exception, strftime_now, its tojson, a restricted dict and namespace."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(template)
