"""A stack of Dr.LLM routers, one per decoder block, and its files.

docs/method.md#routers. Router l sees H^(l-1), the (raw, not normed) hidden states entering block l along the path taken
so far, pooled over the prompt tokens into W windows (drllm.routing.pooling); what a router is comes from its kind
(drllm.routing.kinds: `mlp`, the paper's, by default), and how its probabilities become actions from
drllm.routing.decision.

A trained stack is saved as `routers.safetensors` + `router_config.json` (atomic writes); loading checks that it
was trained for the expected base model and layer count.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drllm.core.artifacts import ArtifactError, atomic_path, canonicalize_safetensors_header, read_json, write_json
from drllm.routing.kinds import ROUTER_KINDS, PackedStep, RouterKind
from drllm.routing.pooling import window_mean_pool
from drllm.routing.router_config import FORMAT_VERSION, RouterConfig

WEIGHTS_FILE = "routers.safetensors"
CONFIG_FILE = "router_config.json"
CARD_FILE = "README.md"   # the model card (drllm.training.card, drllm.release.card)
CALIBRATION_FILE = "calibration.json"  # the calibration stage's operating points (drllm.calibration.calibration)
# what a router directory or release holds, and so all a hub download fetches
ROUTER_FILES = (WEIGHTS_FILE, CONFIG_FILE, CALIBRATION_FILE, CARD_FILE)


class RouterStack(nn.Module):
    """One router per decoder block, of the kind `config.kind` names; float32 parameters whatever the base model's
    dtype. Every forward (training, `route`, the packed inference step) goes through that kind."""

    def __init__(self, config: RouterConfig, seed: int | None = None):
        super().__init__()
        self.config = config
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.kind: RouterKind = ROUTER_KINDS.get(config.kind)  # a plain attribute: no parameters, not saved
        self.routers = self.kind.build_stack(config, generator)
        if len(self.routers) != config.num_layers:
            raise ValueError(f"router kind {config.kind!r} built {len(self.routers)} routers for "
                             f"{config.num_layers} layers")

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def __getitem__(self, layer: int) -> nn.Module:
        return self.routers[layer]

    def route(self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, 3] of router `layer` for the hidden states [B, T, d] entering it (mask = prompt tokens)."""
        if self.kind.reads_last_token:
            raise ValueError(f"router kind {self.config.kind!r} reads earlier blocks' states: route block by block "
                             "with packed().prompt(...).logits(layer, hidden) for every layer in order")
        means, window_mask = window_mean_pool(hidden, attention_mask, self.config.windows,
                                              self.config.pool_exclude_first)
        return self.routers[layer](means, window_mask)

    def forward(self, window_means: torch.Tensor, window_mask: torch.Tensor | None = None,
                last_states: torch.Tensor | None = None) -> torch.Tensor:
        """All routers at once (the training forward): window_means [B, L, W, d], window_mask [B, W] or [B, L, W]
        -> logits [B, L, 3]; equals calling each router on its layer's slice. last_states [B, L, d]: the last
        prompt token's state entering each block, for kinds that read it (RouterKind.reads_last_token)."""
        if window_means.dim() != 4 or window_means.shape[1] != self.num_layers:
            raise ValueError(f"window_means must be [batch, {self.num_layers}, windows, dim], "
                             f"got {tuple(window_means.shape)}")
        if self.kind.reads_last_token:
            if last_states is None:
                raise ValueError(f"router kind {self.config.kind!r} reads the last prompt token's states: pass "
                                 "last_states [batch, layers, dim] (a feature cache built with last_states=True)")
            return self.kind.forward(self.routers, window_means, window_mask, last_states)
        return self.kind.forward(self.routers, window_means, window_mask)

    def packed(self) -> PackedStep:
        """The kind's inference step for these routers (`RouterKind.pack`; for mlp, the packed weights of
        drllm.routing.kinds.mlp.PackedRouters), built on first use and rebuilt when a parameter has changed since
        (in-place update, load_state_dict, a move to another device)."""
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())  # each parameter's storage and version
        cached = self.__dict__.get("_packed")
        if cached is None or cached[0] != key:
            cached = (key, self.kind.pack(self.routers, self.config))
            self.__dict__["_packed"] = cached  # a plain attribute: not a parameter, buffer or state_dict entry
        return cached[1]

    # -- persistence ---------------------------------------------------------------------------------------

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Write routers.safetensors then router_config.json, each atomically."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous()
                   for name, tensor in self.state_dict().items()}
        with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "base_model": self.config.base_model,
                                                   "num_layers": str(self.config.num_layers)})
            canonicalize_safetensors_header(tmp)
        write_json(out_dir / CONFIG_FILE, self.config.to_dict())

    @classmethod
    def for_model(cls, directory: str | os.PathLike, manifest: dict[str, Any],
                  device: str | torch.device = "cpu") -> "RouterStack":
        """Load routers checked against a materialised model's manifest (drllm.core.models): name, layers, width,
        revision and weights hash."""
        return cls.from_pretrained(directory, expected_model=manifest["name"],
                                   expected_layers=int(manifest["num_layers"]),
                                   expected_hidden_size=int(manifest["hidden_size"]), device=device,
                                   expected_revision=manifest.get("revision"),
                                   expected_sha256=manifest.get("weights_sha256"))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, expected_model: str | None = None,
                        expected_layers: int | None = None, expected_hidden_size: int | None = None,
                        device: str | torch.device = "cpu", expected_revision: str | None = None,
                        expected_sha256: str | None = None) -> "RouterStack":
        """Load a saved stack from a local directory or a Hugging Face hub repository id ("owner/name");
        ArtifactError if files are missing or it was trained for another model, revision, weights or shape."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = resolve_router_dir(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ArtifactError(f"router directory {directory}: {path.name} not found "
                                    "(train routers first: workflow/scripts/train_routers.py)")
        try:
            config = RouterConfig.from_dict(read_json(config_path, "router config"))
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"router config {config_path} is invalid: {exc}") from exc
        if config.format_version != FORMAT_VERSION:
            raise ArtifactError(f"router config {config_path}: format_version {config.format_version}, "
                                f"this code reads {FORMAT_VERSION}")
        if expected_model is not None and config.base_model != expected_model:
            raise ArtifactError(f"routers in {directory} were trained for model {config.base_model!r}, "
                                f"not {expected_model!r}")
        for what, theirs, ours in (("revision", config.base_model_revision, expected_revision),
                                   ("weights (sha256)", config.base_model_sha256, expected_sha256)):
            if theirs is not None and ours is not None and theirs != ours:
                raise ArtifactError(f"routers in {directory} were trained for {config.base_model!r} {what} "
                                    f"{theirs!r}, not {ours!r}")
        if expected_layers is not None and config.num_layers != expected_layers:
            raise ArtifactError(f"routers in {directory} were trained for {config.num_layers} layers, "
                                f"but the model has {expected_layers}")
        if expected_hidden_size is not None and config.hidden_size != expected_hidden_size:
            raise ArtifactError(f"routers in {directory} expect hidden size {config.hidden_size}, "
                                f"but the model has {expected_hidden_size}")
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError) as exc:
            raise ArtifactError(f"router weights {weights_path} are unreadable: {exc}") from exc
        try:
            stack = cls(config)
        except ValueError as exc:  # a kind no module registered: a plugin's, not listed under plugins:?
            raise ArtifactError(f"router config {config_path}: {exc} (a plugin's kind needs its module under the "
                                "config's plugins:)") from exc
        try:
            stack.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"router weights {weights_path} do not match router_config.json "
                                f"({config.num_layers} layers, d={config.hidden_size}, h={config.hidden}): "
                                f"{exc}") from exc
        return stack.to(device).eval()


def resolve_router_dir(source: str | os.PathLike, revision: str | None = None) -> Path:
    """A router directory: `source` itself when it exists locally (or cannot be a hub id), else the hub repository
    "owner/name" downloaded with `download_routers`."""
    path = Path(source)
    if path.exists() or os.path.isabs(str(source)) or str(source).count("/") != 1:
        return path
    return download_routers(str(source), revision)


def download_routers(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot of hub repository `repo_id` at `revision` (default: main), fetched with huggingface_hub
    and restricted to ROUTER_FILES; from the local cache when offline. ArtifactError naming the repository and the
    hub's error (on one line) when it cannot be had."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=list(ROUTER_FILES)))
    except Exception as exc:  # the hub's errors: not found, offline, gated, invalid id
        at = f" at revision {revision!r}" if revision is not None else ""
        detail = " ".join(str(exc).split())  # the hub's messages span lines; an error line should not
        raise ArtifactError(f"routers {repo_id!r}: no such local directory, and not a reachable hub "
                            f"repository{at} ({type(exc).__name__}: {detail})") from exc
