"""Hugging Face names as models: `org/repo[@revision][:file.gguf]` -> a local checkpoint.

`--model NAME=SPEC` takes a local checkpoint directory, a GGUF file, or a Hugging Face name. A
name is fetched through `huggingface_hub` into its standard cache (`HF_HUB_CACHE`, else
`HF_HOME/hub`, else ~/.cache/huggingface/hub), only the files a checkpoint needs, with the
library's own progress bars; with `HF_HUB_OFFLINE=1` only the cache is read. It is resolved once
at start-up by the command (cli/serve.py, cli/worker.py), so the engine is given a local path.

    parse_source("org/repo@v1")            # HubName(repo="org/repo", revision="v1", filename=None)
    parse_source("models/demo")            # None: an existing path, or one that reads as a path
    resolve_model("org/repo")              # Path(".../models--org--repo/snapshots/<commit>")
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("stratus.hub")

# org/repo as the Hub spells repository ids (letters, digits, - _ .; no "--" or ".." inside),
# then an optional @revision (a branch, tag or commit) and an optional :file.gguf in the repo.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
HUB_NAME_RE = re.compile(
    rf"^(?P<repo>{_PART}/{_PART})(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9._/-]{{0,254}}))?"
    r"(?::(?P<filename>[A-Za-z0-9][A-Za-z0-9._/ -]*\.gguf))?$"
)

# The files a checkpoint needs (engine/: config, tokenizer, chat template, weights, and the
# sentence-transformers pooling config of an embedding model); nothing else is downloaded.
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "modules.json",
    "config_sentence_transformers.json",
    "*Pooling/config.json",
]
# Weights in sub-folders (variants, ONNX exports) and Mistral's duplicate consolidated file are
# never read: the engine loads the top level's model*.safetensors.
IGNORE_PATTERNS = ["*/*.safetensors", "*/*.safetensors.index.json", "consolidated*.safetensors"]

ACCEPTED = "a checkpoint directory, a .gguf file, or a Hugging Face name org/repo[@revision][:file.gguf]"


class HubError(Exception):
    """A model spec that is neither a local path nor a usable Hugging Face name; says what to do."""


@dataclass(frozen=True, slots=True)
class HubName:
    repo: str
    revision: str | None = None
    filename: str | None = None  # a .gguf file in the repo; None: the checkpoint's files

    def __str__(self) -> str:
        text = self.repo + (f"@{self.revision}" if self.revision else "")
        return text + (f":{self.filename}" if self.filename else "")


def parse_source(spec: str) -> HubName | None:
    """The Hugging Face name `spec` gives, or None when it is a local path (an existing one always
    wins, and one written as a path: absolute, ~, ./, ../, or a single name). HubError when it is
    neither: a URL, or something with @ or : that is not org/repo[@revision][:file.gguf]."""
    if Path(spec).expanduser().exists():
        return None
    if "://" in spec:
        raise HubError(f"{spec!r} is a URL; give {ACCEPTED} (for https://huggingface.co/org/repo: org/repo)")
    if spec.startswith(("/", "~", ".")) or "\\" in spec or (spec.endswith(".gguf") and ":" not in spec):
        return None  # a path that is not there: the command's check says so
    match = HUB_NAME_RE.match(spec)
    if match and "--" not in match["repo"] and ".." not in match["repo"]:
        return HubName(match["repo"], match["revision"], match["filename"])
    if "@" in spec or ":" in spec or spec.count("/") == 1:
        raise HubError(f"{spec!r} is neither an existing path nor a Hugging Face name; give {ACCEPTED}")
    return None


def cache_dir() -> Path:
    """Where huggingface_hub keeps its cache, read from the environment now (the library reads it
    once, at import): HF_HUB_CACHE, else HF_HOME/hub, else its own default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to 1/true/yes/on, read now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def resolve_model(spec: str, progress: Callable[[float], None] | None = None) -> Path:
    """The local path to load for `spec`: itself when it is a path, else the Hugging Face name's
    snapshot directory (or .gguf file) in the cache, downloaded first unless offline.
    `progress(fraction)` hears how much of the download's bytes have arrived."""
    name = parse_source(spec)
    if name is None:
        return Path(spec).expanduser()
    return fetch(name, progress)


def _progress_bars(report: Callable[[float], None]):
    """A tqdm class for huggingface_hub (`tqdm_class`) that also reports byte bars' fractions."""
    from tqdm.auto import tqdm

    class ReportingBar(tqdm):
        def __init__(self, *args, **kwargs):
            self.counts_bytes = kwargs.get("unit") == "B"
            self.done = kwargs.get("initial") or 0  # counted here: a disabled bar counts nothing
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            shown = super().update(n)
            self.done += n or 0
            total = getattr(self, "total", None)  # huggingface_hub grows it as files are found
            if self.counts_bytes and total:
                report(min(self.done / total, 1.0))
            return shown

    return ReportingBar


def fetch(name: HubName, progress: Callable[[float], None] | None = None) -> Path:
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache, local_only = cache_dir(), offline() or constants.HF_HUB_OFFLINE
    revision = name.revision or "main"
    bars = {"tqdm_class": _progress_bars(progress)} if progress is not None else {}
    if not local_only:
        log.info("fetching %s from the Hugging Face Hub into %s", name, cache)
    try:
        if name.filename:
            path = hf_hub_download(
                name.repo,
                name.filename,
                revision=revision,
                cache_dir=cache,
                local_files_only=local_only,
                **bars,
            )
        else:
            path = snapshot_download(
                name.repo,
                revision=revision,
                cache_dir=cache,
                local_files_only=local_only,
                allow_patterns=ALLOW_PATTERNS,
                ignore_patterns=IGNORE_PATTERNS,
                **bars,
            )
    except IncompleteSnapshotError as exc:
        raise HubError(
            f"{name}: the copy in the Hugging Face cache at {cache} is incomplete and the Hub cannot "
            f"be reached to finish it ({_first_line(exc)}); run once with network access"
        ) from None
    except LocalEntryNotFoundError as exc:
        if local_only:
            raise HubError(
                f"{name} is not in the Hugging Face cache at {cache} and HF_HUB_OFFLINE is set, so "
                f"it cannot be downloaded: run once with network access (unset HF_HUB_OFFLINE), or "
                f"`hf download {name.repo}{f' --revision {revision}' if name.revision else ''}` "
                "on a machine that has it and copy the cache, or set HF_HOME/HF_HUB_CACHE to the "
                "cache that holds it"
            ) from None
        raise HubError(
            f"{name}: the Hugging Face Hub could not be reached and it is not in the cache at "
            f"{cache} ({_first_line(exc)}); check the network or proxy, or pass a local path"
        ) from None
    except GatedRepoError:
        raise HubError(
            f"{name.repo} is gated on the Hugging Face Hub: accept its terms on huggingface.co and "
            "log in (`hf auth login`, or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{name.repo}: no such repository on the Hugging Face Hub (or it is private: log in "
            "with `hf auth login`, or set HF_TOKEN)"
        ) from None
    except RemoteEntryNotFoundError:
        raise HubError(f"{name.repo}: no file {name.filename!r} at revision {revision!r}") from None
    except RevisionNotFoundError:
        raise HubError(f"{name.repo}: no revision {revision!r} on the Hugging Face Hub") from None
    except HfHubHTTPError as exc:
        raise HubError(f"{name}: the Hugging Face Hub answered {_first_line(exc)}") from None
    except HFValidationError as exc:
        raise HubError(f"{name}: {_first_line(exc)}") from None
    return Path(path)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
