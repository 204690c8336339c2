"""Dr.LLM routers: one tiny MLP per decoder block, fed window means of the residual stream entering it.

METHOD.md §3. Router l sees H^(l-1), the (raw, not normed) hidden states entering block l along the path taken
so far, pooled over the prompt tokens into W windows:

* W_eff = min(W, T) for a prompt of T real tokens; window size T // W_eff; the remainder tokens at the end are
  dropped (the authors' code); each window is averaged.
* MLP: Linear(d -> h) -> GELU(tanh) -> Linear(h -> 3), Xavier-uniform weights, zero biases (h = 128).
* Logit voting: the MLP runs on each window mean and the logits are averaged over the windows.

Classes: 0 = skip, 1 = execute, 2 = repeat. `apply_knob` is the paper's App. C control knob.

A trained stack is saved as `routers.safetensors` + `router_config.json` (atomic writes); loading checks that it
was trained for the expected base model and layer count.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from drllm.core.artifacts import ArtifactError, atomic_path, canonicalize_safetensors_header, read_json, write_json
from drllm.core.blocks import check_keys

SKIP, EXECUTE, REPEAT = 0, 1, 2
CLASSES = ("skip", "execute", "repeat")
WEIGHTS_FILE = "routers.safetensors"
CONFIG_FILE = "router_config.json"
CARD_FILE = "README.md"   # the model card (drllm.routing.card)
CALIBRATION_FILE = "calibration.json"  # the calibration stage's operating points (drllm.routing.calibration)
# what a router directory or release holds, and so all a hub download fetches
ROUTER_FILES = (WEIGHTS_FILE, CONFIG_FILE, CALIBRATION_FILE, CARD_FILE)
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------------------

def window_assignment(mask: torch.Tensor | None, batch: int, length: int, windows: int = 8,
                      device: torch.device | str | None = None,
                      exclude_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooling as a matrix: (assign [B, W_max, T] float32, window_mask [B, W_max] bool).

    exclude_first: leave each row's first real token out of the pooling (when the row has 2+ real tokens). Under
    causal attention the first position's state is the same for every prompt that starts with the same token (BOS
    or the chat template's first token): a constant window with a norm ~20-50x the others' at middle layers of
    SmolLM2 (issue 19), which saturates fresh routers and carries no information about the prompt.

    assign[b, w, t] = 1 / size_b where real token t of row b falls in window w, else 0, so that
    `assign @ hidden` gives the window means (see `window_mean_pool`). It depends only on the mask, so one matrix
    serves every layer of a forward pass.
    """
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if mask is None:
        real = torch.ones((batch, length), dtype=torch.bool, device=device)
    else:
        if tuple(mask.shape) != (batch, length):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match hidden {(batch, length)}")
        real = mask.to(device=device).bool()
    if exclude_first:
        first = real.long().cumsum(-1) == 1
        real = real & ~(first & (real.sum(-1, keepdim=True) > 1))
    counts = real.sum(-1)  # [B]
    counts_cpu = counts.tolist()  # one host sync per call
    if 0 in counts_cpu:
        raise ValueError(f"row(s) {[i for i, n in enumerate(counts_cpu) if n == 0]} have no real tokens to pool")
    w_max = min(windows, max(counts_cpu))
    w_eff = counts.clamp(max=windows)  # [B]
    size = counts // w_eff  # [B], >= 1
    rank = real.long().cumsum(-1) - 1  # [B, T] rank of each real token among its row's real tokens
    window = torch.div(rank, size[:, None], rounding_mode="floor")
    used = real & (window < w_eff[:, None])  # the remainder at the end falls outside the last window
    window = torch.where(used, window, torch.zeros_like(window))
    assign = torch.zeros((batch, w_max, length), dtype=torch.float32, device=real.device)
    assign.scatter_(1, window[:, None, :], (used.float() / size[:, None].float())[:, None, :])
    window_mask = torch.arange(w_max, device=real.device)[None, :] < w_eff[:, None]
    return assign, window_mask


def window_mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None,
                     windows: int = 8, exclude_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Window means of each row's real tokens.

    hidden: [B, T, d]; mask: [B, T] (1 = real prompt token, 0 = padding; left, right or both sides) or None
    (all tokens real). For a row with n real tokens: W_eff = min(windows, n), window size n // W_eff, window w
    averages the real tokens ranked w*size .. (w+1)*size-1 (in sequence order); the last n - W_eff*size real
    tokens are dropped.

    Returns (means [B, W_max, d] float32, window_mask [B, W_max] bool) with W_max = max W_eff over rows; a row
    with fewer windows has zeros and False in the unused slots. Pooling is done in float32 whatever the input.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [batch, tokens, dim], got shape {tuple(hidden.shape)}")
    assign, window_mask = window_assignment(mask, hidden.shape[0], hidden.shape[1], windows, hidden.device,
                                            exclude_first)
    return torch.bmm(assign, hidden.float()), window_mask


# --------------------------------------------------------------------------------------------------------
# Routers
# --------------------------------------------------------------------------------------------------------

def router_parameter_count(num_layers: int, hidden_size: int, hidden: int = 128) -> int:
    """L * (d*h + h + h*3 + 3): the paper's formula (11.0M for Llama-3.2-3B, 16.8M for Llama-3.1-8B)."""
    return num_layers * (hidden_size * hidden + hidden + hidden * 3 + 3)


def _masked_window_mean(window_logits: torch.Tensor, window_mask: torch.Tensor | None) -> torch.Tensor:
    """Average [..., W, 3] logits over the valid windows ([..., W] mask, broadcastable)."""
    if window_mask is None:
        return window_logits.mean(-2)
    weights = window_mask.to(window_logits.dtype)
    while weights.dim() < window_logits.dim() - 1:
        weights = weights.unsqueeze(-2)  # [B, W] -> [B, 1, W] for a [B, L, W, 3] input
    weights = weights.expand(window_logits.shape[:-1])
    total = weights.sum(-1, keepdim=True)
    if bool((total == 0).any()):
        raise ValueError("a row has no valid window (window_mask all False)")
    return (window_logits * weights[..., None]).sum(-2) / total


class Router(nn.Module):
    """Linear(d -> h) -> GELU(tanh) -> Linear(h -> 3), applied per window mean, logits averaged over windows."""

    def __init__(self, hidden_size: int, hidden: int = 128, generator: torch.Generator | None = None):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, len(CLASSES))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for linear in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(linear.weight, generator=generator)
            nn.init.zeros_(linear.bias)

    def window_logits(self, window_means: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(window_means.to(self.fc1.weight.dtype))))

    def forward(self, window_means: torch.Tensor, window_mask: torch.Tensor | None = None) -> torch.Tensor:
        """window_means [B, W, d], window_mask [B, W] bool or None -> logits [B, 3] (logit voting)."""
        return _masked_window_mean(self.window_logits(window_means), window_mask)


@dataclass
class RouterConfig:
    """What a router stack was built for and how it was trained (saved as router_config.json)."""

    base_model: str
    num_layers: int
    hidden_size: int
    windows: int = 8
    hidden: int = 128
    label_counts: list[int] | None = None  # training labels per class (skip, execute, repeat)
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    base_model_revision: str | None = None  # the base model's revision and weights hash (drllm.core.models manifest):
    base_model_sha256: str | None = None    # loading checks them when both sides know them
    pool_exclude_first: bool = False        # pooling leaves each prompt's first token out (window_assignment)
    decision: dict[str, Any] = field(default_factory=lambda: {"rule": "argmax"})  # how probabilities become actions

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "windows", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"router config: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.base_model, str) or not self.base_model:
            raise ValueError(f"router config: base_model must be a non-empty string, got {self.base_model!r}")
        for name in ("base_model_revision", "base_model_sha256"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"router config: {name} must be a string or null, got {getattr(self, name)!r}")
        if not isinstance(self.pool_exclude_first, bool):
            raise ValueError(f"router config: pool_exclude_first must be true or false, got {self.pool_exclude_first!r}")
        self.decision = Decision.from_dict(self.decision).to_dict()
        if self.label_counts is not None:
            if len(self.label_counts) != len(CLASSES):
                raise ValueError(f"router config: label_counts needs {len(CLASSES)} entries, got {self.label_counts}")
            self.label_counts = [int(c) for c in self.label_counts]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, block: dict[str, Any]) -> "RouterConfig":
        if not isinstance(block, dict):
            raise ValueError(f"router config must be a mapping, got {type(block).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        check_keys("router config", block, known)
        missing = sorted({"base_model", "num_layers", "hidden_size"} - set(block))
        if missing:
            raise ValueError(f"router config: missing key(s) {missing}")
        return cls(**block)


class RouterStack(nn.Module):
    """One Router per decoder block; float32 parameters whatever the base model's dtype."""

    def __init__(self, config: RouterConfig, seed: int | None = None):
        super().__init__()
        self.config = config
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.routers = nn.ModuleList(
            [Router(config.hidden_size, config.hidden, generator) for _ in range(config.num_layers)])

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def device(self) -> torch.device:
        return self.routers[0].fc1.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def __getitem__(self, layer: int) -> Router:
        return self.routers[layer]

    def route(self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, 3] of router `layer` for the hidden states [B, T, d] entering it (mask = prompt tokens)."""
        means, window_mask = window_mean_pool(hidden, attention_mask, self.config.windows,
                                              self.config.pool_exclude_first)
        return self.routers[layer](means, window_mask)

    def forward(self, window_means: torch.Tensor, window_mask: torch.Tensor | None = None) -> torch.Tensor:
        """All routers at once: window_means [B, L, W, d], window_mask [B, W] or [B, L, W] -> logits [B, L, 3].

        The routers' weights are stacked so the whole stack is three batched matmuls (the training hot path);
        the result equals calling each router on its layer's slice.
        """
        if window_means.dim() != 4 or window_means.shape[1] != self.num_layers:
            raise ValueError(f"window_means must be [batch, {self.num_layers}, windows, dim], "
                             f"got {tuple(window_means.shape)}")
        w1 = torch.stack([r.fc1.weight for r in self.routers])  # [L, h, d]
        b1 = torch.stack([r.fc1.bias for r in self.routers])  # [L, h]
        w2 = torch.stack([r.fc2.weight for r in self.routers])  # [L, 3, h]
        b2 = torch.stack([r.fc2.bias for r in self.routers])  # [L, 3]
        x = window_means.to(w1.dtype)
        hidden = torch.einsum("blwd,lhd->blwh", x, w1) + b1[None, :, None, :]
        hidden = F.gelu(hidden, approximate="tanh")
        logits = torch.einsum("blwh,lch->blwc", hidden, w2) + b2[None, :, None, :]
        return _masked_window_mean(logits, window_mask)

    def packed(self) -> "PackedRouters":
        """The stack's weights packed for the routing hot path (`PackedRouters`), built on first use and rebuilt
        when a parameter has changed since (in-place update, load_state_dict, a move to another device)."""
        packed = self.__dict__.get("_packed")
        if packed is None or packed.key != PackedRouters.key_of(packed.parameters):
            packed = PackedRouters(self)
            self.__dict__["_packed"] = packed  # a plain attribute: not a parameter, buffer or state_dict entry
        return packed

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
        stack = cls(config)
        try:
            stack.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"router weights {weights_path} do not match router_config.json "
                                f"({config.num_layers} layers, d={config.hidden_size}, h={config.hidden}): "
                                f"{exc}") from exc
        return stack.to(device).eval()


class PackedRouters:
    """A RouterStack's weights packed for inference: what the routing pass runs at every block.

    Router.forward on the window means is ~9 small tensor ops per block, each dispatch-bound at this size on a CPU.
    Packed, one block's router is 4: the pooling matmul, the first layer with its bias (addmm on a pre-transposed,
    contiguous weight), GELU, and one addmm that does the window vote and the output layer with its bias together
    (the vote is linear and comes before the linear output layer, so vote-then-fc2 = one matmul with the output
    weight tiled over the windows and divided by their count). The logits equal Router.forward's up to float32
    rounding (sums taken in another order); `prompt` builds what depends only on the prompt's mask once.
    """

    def __init__(self, stack: RouterStack):
        self.parameters = list(stack.parameters())
        self.key = self.key_of(self.parameters)
        self.windows = stack.config.windows
        self.exclude_first = stack.config.pool_exclude_first
        routers = stack.routers
        with torch.no_grad():
            self.w1t = torch.stack([r.fc1.weight.t() for r in routers]).contiguous()  # [L, d, h]
            self.b1 = torch.stack([r.fc1.bias for r in routers])  # [L, h]
            self.w2t = torch.stack([r.fc2.weight.t() for r in routers]).contiguous()  # [L, h, 3]
            self.b2 = torch.stack([r.fc2.bias for r in routers])  # [L, 3]
        self.dtype = self.w1t.dtype
        self._tiled: dict[int, torch.Tensor] = {}

    @staticmethod
    def key_of(parameters: list[torch.Tensor]) -> tuple:
        """What says the packed copy is stale: each parameter's storage and in-place version counter."""
        return tuple((p.data_ptr(), p._version) for p in parameters)

    def tiled_output(self, windows: int) -> torch.Tensor:
        """[L, windows*h, 3]: fc2's weight, transposed, repeated per window and divided by the window count, so
        that (flattened per-window hidden [B, windows*h]) @ it = fc2 applied to the windows' mean."""
        tiled = self._tiled.get(windows)
        if tiled is None:
            tiled = self._tiled[windows] = (self.w2t / windows).repeat(1, windows, 1)
        return tiled

    def prompt(self, mask: torch.Tensor | None, batch: int, length: int,
               device: torch.device | str | None = None) -> "PromptRouting":
        """The per-prompt part (pooling matrix, window vote), built once for all blocks of one forward pass."""
        assign, window_mask = window_assignment(mask, batch, length, self.windows, device, self.exclude_first)
        return PromptRouting(self, assign, window_mask)


class PromptRouting:
    """`PackedRouters` bound to one batch of prompts: logits(layer, hidden entering it) -> [B, 3]."""

    def __init__(self, packed: PackedRouters, assign: torch.Tensor, window_mask: torch.Tensor):
        self.packed, self.assign = packed, assign
        batch, windows, length = assign.shape
        hidden_size, hidden = packed.w1t.shape[1:]
        self.batch, self.windows = batch, windows
        # Pooling is linear: (P H) W1^T = P (H W1^T). Pool first unless the first layer on every token costs less
        # (only for prompts of a few tokens: d > h); either way in float32, as window_mean_pool pools.
        pool_first = windows * hidden_size * (length + hidden) <= length * hidden * (hidden_size + windows)
        self.pool_first = pool_first or packed.dtype != torch.float32
        if bool(window_mask.all()):  # every row votes over the same windows: one matmul with fc2 tiled
            self.vote, self.tiled = None, packed.tiled_output(windows)
        else:  # rows with fewer windows than others: vote weights per row, then fc2
            self.vote = (window_mask.float() / window_mask.sum(-1, keepdim=True))[:, None, :].to(packed.dtype)
            self.tiled = None

    def logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Router `layer` on the hidden states [B, T, d] entering its block -> logits [B, 3] (logit voting)."""
        packed, batch, windows = self.packed, self.batch, self.windows
        if hidden.dtype != torch.float32:
            hidden = hidden.float()
        if self.pool_first:
            pooled = torch.bmm(self.assign, hidden).view(batch * windows, -1)
            if pooled.dtype != packed.dtype:
                pooled = pooled.to(packed.dtype)
            z = torch.addmm(packed.b1[layer], pooled, packed.w1t[layer])
        else:  # P (H W1^T + b1) = P H W1^T + b1 on each valid window (its weights sum to 1); invalid ones get no vote
            per_token = torch.addmm(packed.b1[layer], hidden.reshape(-1, hidden.shape[-1]), packed.w1t[layer])
            z = torch.bmm(self.assign, per_token.view(batch, -1, per_token.shape[-1])).view(batch * windows, -1)
        z = F.gelu(z, approximate="tanh")
        if self.tiled is not None:
            return torch.addmm(packed.b2[layer], z.view(batch, -1), self.tiled[layer])
        voted = torch.bmm(self.vote, z.view(batch, windows, -1)).view(batch, -1)
        return torch.addmm(packed.b2[layer], voted, packed.w2t[layer])


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


# --------------------------------------------------------------------------------------------------------
# Decisions and the control knob
# --------------------------------------------------------------------------------------------------------

DECISION_RULES = ("argmax", "threshold")


@dataclass(frozen=True)
class Decision:
    """How a router's probabilities become an action (saved in router_config.json as `decision`).

    argmax -- the paper's greedy action (`decide`: a tie with execute goes to execute).
    threshold -- skip block l when P_l(skip) >= `threshold`, else execute (never repeat): routers trained on
      per-layer safety (train.target: safety) give P(skip) = the estimated chance that skipping the block keeps
      the answer. With `budget` k, a prompt skips at most k blocks: the first k that pass the threshold (routing
      runs block by block during the prefill, so later blocks' probabilities are not known yet).
    """

    rule: str = "argmax"
    threshold: float = 0.5
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.rule not in DECISION_RULES:
            raise ValueError(f"router decision: rule must be one of {list(DECISION_RULES)}, got {self.rule!r}")
        value = self.threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"router decision: threshold must be a number in [0, 1], got {value!r}")
        object.__setattr__(self, "threshold", float(value))
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, int)
                                        or self.budget < 0):
            raise ValueError(f"router decision: budget must be an integer >= 0 or null, got {self.budget!r}")

    @classmethod
    def from_dict(cls, block: "dict[str, Any] | Decision | None") -> "Decision":
        if isinstance(block, Decision):
            return block
        block = dict(block or {})
        known = [f.name for f in dataclasses.fields(cls)]
        check_keys("router decision", block, known)
        return cls(**block)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_threshold(self, threshold: float) -> "Decision":
        return dataclasses.replace(self, rule="threshold", threshold=threshold)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)


def decide(probs: torch.Tensor) -> torch.Tensor:
    """Greedy action per row: 0 skip, 1 execute, 2 repeat.

    A tie with execute goes to execute (the default path is the safe choice): the knob's blend at p = 0 ties a
    saturated skip probability with execute exactly, and a plain argmax would then skip. Other ties go to the
    lower class, as argmax does.
    """
    best = probs.argmax(-1)
    execute_ties = probs[..., EXECUTE] >= probs.gather(-1, best.unsqueeze(-1)).squeeze(-1)
    return torch.where(execute_ties, torch.full_like(best, EXECUTE), best)


def knob_affine(p: float, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> tuple[float, torch.Tensor]:
    """The control knob as an affine map of the probabilities: apply_knob(probs, p) = offset + scale * probs,
    with scale 0 where the knob ignores the router (p >= 0.5, p = -1). (scale, offset [3])."""
    p = float(p)
    if not math.isfinite(p) or not -1.0 <= p <= 1.0:
        raise ValueError(f"control knob p must be in [-1, 1], got {p}")
    skip, execute, repeat = torch.eye(len(CLASSES), dtype=dtype, device=device)[[SKIP, EXECUTE, REPEAT]]
    if p <= -0.5:
        t = (p + 1.0) / 0.5
        return t, (1 - t) * skip
    if p <= 0.5:
        t = p + 0.5
        return 1 - t, t * execute
    t = (p - 0.5) / 0.5
    return 0.0, (1 - t) * execute + t * repeat


def apply_knob(probs: torch.Tensor, p: float) -> torch.Tensor:
    """The paper's control knob (App. C): blend router probabilities [..., 3] with one-hot actions.

    p in [-1, -0.5]: (1-t)*skip + t*router, t = (p+1)/0.5   (p=-1 always skip, p=-0.5 the plain router)
    p in (-0.5, 0.5]: (1-t)*router + t*execute, t = p+0.5   (p=0.5 always execute)
    p in (0.5, 1]:   (1-t)*execute + t*repeat, t = (p-0.5)/0.5 (p=1 always repeat)
    """
    if probs.shape[-1] != len(CLASSES):
        raise ValueError(f"probs must have {len(CLASSES)} classes in the last dim, got {tuple(probs.shape)}")
    scale, offset = knob_affine(p, probs.dtype, probs.device)
    if scale == 0.0:
        return offset.expand_as(probs).clone()
    return offset + scale * probs
