"""Model aliases and loading (alias, Hugging Face id, or local save_pretrained directory)."""

from __future__ import annotations

import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError

# Trained checkpoints shipped inside the package (package data under trio_edge/assets/).
SHIPPED = {
    "trio-tiny": Path(__file__).resolve().parent.parent / "assets" / "trio-tiny",
    "trio-tiny-qwen": Path(__file__).resolve().parent.parent / "assets" / "trio-tiny-qwen",
    "trio-tiny-qwen3": Path(__file__).resolve().parent.parent / "assets" / "trio-tiny-qwen3",
}

ALIASES = {
    "llava-next-7b": "llava-hf/llava-v1.6-vicuna-7b-hf",
    "llava-next-mistral-7b": "llava-hf/llava-v1.6-mistral-7b-hf",
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Instruct",
    "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct",
    "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct",
    "tiny-random": None,  # built in code on first use
    "tiny-random-qwen": None,  # a tiny random Qwen2.5-VL, built in code on first use
    "tiny-random-qwen3": None,  # a tiny random Qwen3-VL, built in code on first use
    "trio-tiny": str(SHIPPED["trio-tiny"]),  # trained on the synthetic VQA task, shipped in the package
    "trio-tiny-qwen": str(SHIPPED["trio-tiny-qwen"]),  # a Qwen2.5-VL trained on the same task, shipped likewise
    "trio-tiny-qwen3": str(SHIPPED["trio-tiny-qwen3"]),  # a Qwen3-VL (DeepStack) trained on the same task, likewise
}


def cache_dir() -> Path:
    return Path(os.environ.get("TRIO_EDGE_CACHE", Path.home() / ".cache" / "trio-edge"))


@dataclass
class LoadedModel:
    name: str  # what the user typed
    source: str  # resolved hub id or directory
    model: object
    processor: object
    adapter: object

    @property
    def revision(self) -> str | None:
        return getattr(self.model.config, "_commit_hash", None)


def resolve(name: str) -> str:
    """Alias -> hub id or directory; local directories win over aliases of the same name."""
    if Path(name).is_dir():
        if (Path(name) / "manifest.json").is_file():  # artifact.manifest.is_export_dir, which models may not import
            raise ModelNotFoundError(f"{name} is an export directory (it has manifest.json), not a model: this command "
                                     "runs the PyTorch model, so pass the model it was exported from (trio-run, "
                                     "trio-bench and trio-serve take export directories)")
        return str(Path(name))
    if name in ALIASES:
        if name in SHIPPED:
            if not (SHIPPED[name] / "config.json").is_file():
                raise ModelNotFoundError(f"{name!r} should be shipped at {SHIPPED[name]} but is missing there; "
                                         "reinstall trio-edge (its package data holds the weights)")
            return str(SHIPPED[name])
        if ALIASES[name] is None:
            return str(_built_in(name))
        return ALIASES[name]
    if "/" in name and not Path(name).exists() and name.count("/") == 1 and not name.startswith((".", "/")):
        folder = name.split("/")[0]
        if Path(folder).is_dir():  # e.g. exports/llava-next-7b with an exports/ folder here
            raise _missing_directory(name, f" (the folder {folder}/ does)")
        return name  # looks like a hub id
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # spelled as a path
        raise _missing_directory(name)
    raise ModelNotFoundError(
        f"unknown model {name!r}: not a directory, not an alias ({', '.join(ALIASES)}), not a hub id (owner/name)"
    )


def _missing_directory(name: str, where: str = "") -> ModelNotFoundError:
    return ModelNotFoundError(f"{name} does not exist{where}: pass an export directory (trio-export MODEL -o {name} "
                              "writes one) or a model directory")


def _built_in(name: str) -> Path:
    from .tiny import make_tiny_llava_next
    from .tiny_qwen import make_tiny_qwen2_5_vl
    from .tiny_qwen3 import make_tiny_qwen3_vl

    builders = {"tiny-random": make_tiny_llava_next, "tiny-random-qwen": make_tiny_qwen2_5_vl,
                "tiny-random-qwen3": make_tiny_qwen3_vl}
    target = cache_dir() / name
    if not (target / "config.json").is_file():
        from transformers.utils import logging as hf_logging

        from ..files import atomic_directory

        hf_logging.disable_progress_bar()  # its "Writing model shards" bar is noise before a command's own output
        with atomic_directory(target) as tmp:
            builders[name](tmp, seed=0)
    return target


def load(name: str, *, dtype=None, device: str = "cpu") -> LoadedModel:
    """Load model + processor + adapter; offline without weights, a clear ModelNotFoundError."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    from .families import adapter_class_for

    source = resolve(name)
    hf_logging.disable_progress_bar()
    kwargs = {"dtype": dtype or torch.float32}
    try:
        # the family first: an unsupported checkpoint is refused before its weights load
        adapter_class = adapter_class_for(_from_pretrained(AutoConfig, source))
        processor = adapter_class.load_processor(lambda auto_class: _from_pretrained(auto_class, source))
        model = _from_pretrained(AutoModelForImageTextToText, source, **kwargs)
    except (OSError, ValueError) as error:  # ValueError: a directory without a checkpoint
        where = f"directory {source}" if Path(source).exists() else (
            f"the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the hub")
        raise ModelNotFoundError(
            f"cannot load {name!r} ({source}) from {where}: {str(error).splitlines()[0]}\n"
            f"  to fix: on a machine with internet run `hf download {source}` and copy the cache here, "
            f"or pass a local directory written by save_pretrained"
        ) from None
    model = model.to(device).eval()
    return LoadedModel(name=name, source=source, model=model, processor=processor, adapter=adapter_class(model.config, processor, model))


def _from_pretrained(auto_class, source: str, **kwargs):
    """Try the local cache first, then the hub only if it answers: an offline machine fails in seconds instead
    of minutes of the hub client's retries (measured: 2 min 24 s for `trio-export llava-next-7b` before)."""
    try:
        return auto_class.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        if Path(source).exists() or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise
    unreachable = hub_unreachable()
    if unreachable:
        raise OSError(f"not in the local cache, and {unreachable}")
    return auto_class.from_pretrained(source, **kwargs)


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the Hugging Face hub ($HF_ENDPOINT, default huggingface.co) cannot be reached from here: its name does
    not resolve or a TCP connection fails within `timeout_s`; None when it answers, or behind a proxy (the
    proxy decides what is reachable)."""
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        return f"the hub at {host}:{port} is unreachable from this machine ({error.strerror or error})"
    return None
