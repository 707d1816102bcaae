"""Named chat templates for ``chat_template = NAME`` (or a literal Jinja string, or ``auto``).

The texts are the common public formats, written out here so a merge never needs the hub.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from mergefile.errors import ConfigError, Loc, unknown

__all__ = ["CHAT_TEMPLATES", "model_chat_template", "resolve_chat_template"]

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "alpaca": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% endif %}{% endfor %}"
    ),
}


def model_chat_template(folder: str) -> str | None:
    """A model folder's default chat template (``chat_template.jinja`` or tokenizer_config.json)."""
    jinja = Path(folder) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = Path(folder) / "tokenizer_config.json"
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError):
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
            named = {d.get("name"): d.get("template") for d in value if isinstance(d, dict)}
            return named.get("default")
    return None


def resolve_chat_template(value: object, folders: Iterable[str], loc: Loc | None) -> str:
    """The template text for a ``chat_template`` value.

    Args:
        value: a name (``chatml``, ``llama3``, ``alpaca``, ``mistral``), ``auto`` (the most
            common template among the input models), or a literal Jinja string.
        folders: the input models' folders, for ``auto``.
        loc: where the value was written, for errors.

    Raises:
        ConfigError: an unknown name, or ``auto`` when no input has a template.
    """
    text = getattr(value, "name", value)
    if not isinstance(text, str):
        raise ConfigError(f"chat_template must be a template name or a Jinja string, got {value!r}", loc)
    if text in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[text]
    if text == "auto":
        found = [t for t in (model_chat_template(f) for f in folders) if t]
        if not found:
            raise ConfigError("chat_template = auto, but no input model has a chat template", loc)
        return Counter(found).most_common(1)[0][0]
    if "{{" in text or "{%" in text:
        return text
    raise unknown("chat template", text, [*CHAT_TEMPLATES, "auto"], loc)
