"""Names every layer agrees on, in a module that imports nothing from stratus (so cluster/, which
may not import config, and config itself share one rule).

    MODEL_NAME_RE.match("llama-3.1-8b@q4")     # a model name clients may use
    adapter_model_name("llama", "sql")         # "llama:sql", a LoRA adapter served on llama
    redact_keys(message)                       # an API key's secret half never echoed
"""

from __future__ import annotations

import re

# An API key is sk-stratus-<12 hex: its public lookup prefix>_<secret> (security/keys.py).
KEY_PREFIX = "sk-stratus-"
_KEY_ANYWHERE = re.compile(r"sk-stratus-([0-9a-f]{12})_[A-Za-z0-9_-]+")

# A model name: a letter or digit, then up to 127 of letters, digits and . _ : / @ -
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")


# A LoRA adapter's own name; clients call it as BASE:NAME (adapter_model_name).
ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def adapter_model_name(base: str, adapter: str) -> str:
    """The model name of the LoRA adapter `adapter` served on the model `base`."""
    return f"{base}:{adapter}"


def redact_keys(text: str) -> str:
    """`text` with the secret half of every stratus key in it replaced (the public prefix stays):
    for anything a client chose that may be echoed or stored (error messages, model names)."""
    if KEY_PREFIX not in text:
        return text
    return _KEY_ANYWHERE.sub(lambda m: f"{KEY_PREFIX}{m.group(1)}_[redacted]", text)


__all__ = ["ADAPTER_NAME_RE", "KEY_PREFIX", "MODEL_NAME_RE", "adapter_model_name", "redact_keys"]
