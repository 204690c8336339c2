"""Router training (docs/method.md#training): focal loss on MCTS labels, teacher forcing, frozen base model.

The speed trick. The base model is frozen and teacher forcing runs it along the *labelled* path, which does not
depend on the routers. So the window means each router sees are constants of the sample: one forward pass per
sample (`drllm.training.features.build_feature_cache`) gives a tensor [N, L, W, d], and every epoch afterwards is
a few batched matmuls over that tensor (`train_routers`). `drllm.training.full_forward` is the literal version,
which reruns the frozen model along the labelled path at every step and pools on the fly; it exists to show that
both give the same losses.

Decisions where the paper is silent or where we differ (all configurable through `TrainConfig`):
* class weights (`class_weights`): "none" (uniform, the default), "effective" (the paper's effective-number
  weights from the training split's labels, `beta`) or "fixed" (`fixed_weights`), all normalised to sum 3. With a
  few hundred labels beta = 0.999 is close to inverse frequency, so skip and repeat outweigh the execute prior;
  uniform weights measured best there. In "effective" mode a class with no training label gets weight 0 before
  the normalisation (its effective number is 0 and (1-beta)/(1-beta^0) is undefined); such a class never occurs as
  a training target, so only the validation loss sees the 0;
* the learning-rate multiplier for optimizer step s (0-based) is (s+1)/warmup during warm-up, then a half cosine
  from 1 to 0 over the remaining steps, falling at every step (~0 at the last step, exactly 0 one step later, so
  no step is wasted at LR 0). The warm-up is `warmup_fraction` of the total steps (default 5%); an absolute
  `warmup_steps` (paper: 500) is capped at half the total steps, with a note, so the LR always decays (500 steps
  would otherwise outlast a small run);
* the routers kept are those of the epoch with the best validation macro-F1 (`select_epoch`; ties -> the earlier
  epoch), or the last epoch when there is no validation split (with a note);
* AdamW's weight decay applies to all router parameters (weights and biases); no gradient clipping unless
  `max_grad_norm` is set;
* routers, logits and the loss are float32 (the paper's bf16 concerns the base model's forward pass);
* a last effective batch smaller than batch_size x grad_accumulation still makes an optimizer step;
* the validation split is by prompt id (all samples of a prompt on one side), 10% by default.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pyarrow as pa
import torch

from drllm.core.artifacts import ArtifactError, read_parquet, write_parquet
from drllm.training.features import FeatureCache
from drllm.routing.decision import CLASSES, EXECUTE, SKIP
from drllm.routing.router import RouterStack
from drllm.training.train_settings import TrainConfig

METRICS_SCHEMA = pa.schema([
    pa.field("epoch", pa.int64(), nullable=False),
    pa.field("train_loss", pa.float64(), nullable=False),
    pa.field("val_loss", pa.float64()),
    pa.field("val_macro_f1", pa.float64()),
    pa.field("val_recall_skip", pa.float64()),       # null where the validation split has no such label
    pa.field("val_recall_execute", pa.float64()),
    pa.field("val_recall_repeat", pa.float64()),
    pa.field("val_layer_accuracy", pa.float64()),    # over every (sample, layer) decision
    pa.field("val_accuracy_by_layer", pa.list_(pa.float64())),
    pa.field("learning_rate", pa.float64(), nullable=False),  # at the epoch's last optimizer step
    pa.field("steps", pa.int64(), nullable=False),            # optimizer steps so far
    pa.field("seconds", pa.float64(), nullable=False),        # training + validation time of the epoch
    pa.field("selected", pa.bool_(), nullable=False),         # the epoch whose routers were kept (one row)
])
METRIC_COLUMNS = tuple(METRICS_SCHEMA.names)


def write_metrics(path, rows: Sequence[dict], provenance: dict | None = None) -> None:
    """One row per epoch; exactly one row has `selected` true (the routers that were saved)."""
    flags = [row.get("selected") for row in rows]
    if any(not isinstance(flag, bool) for flag in flags) or sum(flags) != 1:
        raise ArtifactError(f"training metrics: the 'selected' column must be true on exactly one row and false "
                            f"on the others, got {flags}")
    write_parquet(path, [{name: row.get(name) for name in METRIC_COLUMNS} for row in rows], METRICS_SCHEMA,
                  "training metrics", provenance)


def read_metrics(path) -> list[dict]:
    rows = read_parquet(path, METRICS_SCHEMA, "training metrics").to_pylist()
    if sum(row["selected"] for row in rows) != 1:
        raise ArtifactError(f"training metrics {path}: 'selected' must be true on exactly one row")
    return rows


def selected_row(rows: Sequence[dict]) -> dict:
    """The metrics row of the epoch whose routers were kept."""
    chosen = [row for row in rows if row.get("selected")]
    if len(chosen) != 1:
        raise ArtifactError(f"training metrics: {len(chosen)} rows are selected, expected exactly one")
    return chosen[0]


# --------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------

def label_counts(labels: torch.Tensor | Sequence[Sequence[int]]) -> list[int]:
    """Number of (sample, layer) labels per class (skip, execute, repeat)."""
    flat = torch.as_tensor(labels, dtype=torch.long).flatten()
    return torch.bincount(flat, minlength=len(CLASSES))[:len(CLASSES)].tolist()


def class_weights(counts: Sequence[int], beta: float = 0.999) -> torch.Tensor:
    """Class-balanced weights alpha_c proportional to (1-beta)/(1-beta^n_c), normalised to sum to 3.

    A class with n_c = 0 gets weight 0 before the normalisation (the remaining classes share the sum of 3).
    beta = 0 gives uniform weights; beta -> 1 approaches inverse class frequency.
    """
    if len(counts) != len(CLASSES):
        raise ValueError(f"need {len(CLASSES)} class counts, got {list(counts)}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if any(int(n) < 0 for n in counts):
        raise ValueError(f"class counts must be >= 0, got {list(counts)}")
    if sum(int(n) for n in counts) == 0:
        raise ValueError("class counts are all zero: no labels")
    raw = [0.0 if int(n) == 0 else (1.0 - beta) / (1.0 - beta ** int(n)) for n in counts]
    total = sum(raw)
    return torch.tensor([len(CLASSES) * w / total for w in raw], dtype=torch.float32)


def train_class_weights(counts: Sequence[int], config: "TrainConfig") -> torch.Tensor:
    """The class weights `config.class_weights` asks for, summing to 3: uniform ("none"), effective-number
    ("effective", `config.beta`) or `config.fixed_weights` normalised ("fixed")."""
    if config.class_weights == "effective":
        return class_weights(counts, config.beta)
    if len(counts) != len(CLASSES):
        raise ValueError(f"need {len(CLASSES)} class counts, got {list(counts)}")
    raw = [1.0] * len(CLASSES) if config.class_weights == "none" else list(config.fixed_weights)
    total = sum(raw)
    return torch.tensor([len(CLASSES) * w / total for w in raw], dtype=torch.float32)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
               gamma: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """-alpha_t (1 - p_t)^gamma log p_t, in float32; mean over every (sample, layer) position.

    logits [..., 3], targets [...] (class ids), weights [3] or None (all 1).
    """
    logits = logits.float().reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1).long().to(logits.device)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
    loss = -((1.0 - logp.exp()).clamp(min=0.0) ** gamma) * logp
    if weights is not None:
        loss = loss * weights.to(device=logits.device, dtype=torch.float32)[targets]
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def safety_loss(logits: torch.Tensor, safety: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the soft target [s, 1 - s, 0] per (sample, layer): -(s log p_skip + (1-s) log p_exec),
    in float32, mean over positions. A proper scoring rule, so P(skip) estimates the chance that skipping the block
    keeps the answer, which is what the threshold decision reads."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    safety = safety.to(device=logp.device, dtype=torch.float32)
    return -(safety * logp[..., SKIP] + (1.0 - safety) * logp[..., EXECUTE]).mean()


def prior_validation_loss(train_safety, val_safety, floor: float = 1e-3) -> float:
    """safety_loss of the per-layer prior on validation prompts: every layer predicts its training safe rate,
    clipped as `init_at_prior` clips it. What routers must beat to route by the prompt rather than by the layer
    (study 3, RESULTS.md: 0.545 vs the routers' 0.541)."""
    rate = torch.tensor(train_safety, dtype=torch.float64).mean(0).clamp(floor, 1 - floor)
    target = torch.tensor(val_safety, dtype=torch.float64)
    return float(-(target * rate.log() + (1 - target) * (1 - rate).log()).mean())


def safety_classes(safety: torch.Tensor) -> torch.Tensor:
    """Per-layer class ids of safety targets: skip where s >= 0.5, else execute (for counts and metrics)."""
    return torch.where(safety >= 0.5, SKIP, EXECUTE).long()


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------

@dataclass
class TrainHistory:
    epochs: list[dict] = field(default_factory=list)  # one METRICS_SCHEMA row per epoch
    class_counts: list[int] = field(default_factory=list)
    class_weights: list[float] = field(default_factory=list)
    train_samples: int = 0
    val_samples: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    warmup_steps: int = 0  # the warm-up actually used (from warmup_fraction, or warmup_steps after the cap)
    selected_epoch: int = 0  # the epoch whose routers the stack holds after training (1-based)
    step_losses: list[float] = field(default_factory=list)  # mean loss of each optimizer step's effective batch
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_warmup(config: TrainConfig, total_steps: int) -> tuple[int, list[str]]:
    """(warm-up steps, notes) for a run of `total_steps` optimizer steps.

    warmup_fraction: round(fraction x total), at least 1 when the fraction is > 0, and below the total when the
    run has 2+ steps (so at least one step decays). warmup_steps: that count, capped at half the total steps.
    """
    notes = []
    if config.warmup_fraction is not None:
        warmup = round(config.warmup_fraction * total_steps)
        if config.warmup_fraction > 0:
            warmup = max(warmup, 1)
        if total_steps >= 2 and warmup >= total_steps:
            notes.append(f"warm-up of {warmup} steps ({config.warmup_fraction:g} of {total_steps}) cut to "
                         f"{total_steps - 1} so the LR decays")
            warmup = total_steps - 1
        return warmup, notes
    warmup = min(config.warmup_steps, total_steps // 2)
    if warmup < config.warmup_steps:
        notes.append(f"warm-up capped from {config.warmup_steps} to {warmup} steps (half of the run's {total_steps} "
                     f"optimizer steps) so the LR decays")
    return warmup, notes


def lr_multiplier(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor of optimizer step `step` (0-based): linear warm-up reaching 1 at step warmup-1, then a half
    cosine falling at every step, to ~0 at the last step and 0 one step later (so no step runs at LR 0)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps + 1) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Per-class recall, macro-F1 (over classes present in labels or predictions), accuracy overall and by layer.

    logits [N, L, 3], labels [N, L].
    """
    predictions = logits.argmax(-1)
    labels = labels.to(predictions.device)
    confusion = torch.zeros((len(CLASSES), len(CLASSES)), dtype=torch.long)
    flat = (labels.flatten() * len(CLASSES) + predictions.flatten()).cpu()
    confusion += torch.bincount(flat, minlength=len(CLASSES) ** 2).view(len(CLASSES), len(CLASSES))
    recalls, f1s = {}, []
    for c, name in enumerate(CLASSES):
        true_positive = int(confusion[c, c])
        support = int(confusion[c].sum())
        predicted = int(confusion[:, c].sum())
        recalls[name] = true_positive / support if support else None
        if support or predicted:
            f1s.append(2 * true_positive / (support + predicted))
    correct = (predictions == labels).float()
    return {"recall": recalls, "macro_f1": sum(f1s) / len(f1s), "accuracy": float(correct.mean()),
            "accuracy_by_layer": correct.mean(0).tolist()}


def train_loop(stack: RouterStack, labels: torch.Tensor, loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               config: TrainConfig, evaluate: Callable[[torch.Tensor], dict] | None, val_count: int,
               log: Callable[[str], None] | None) -> TrainHistory:
    """Shared by the cached and the full-forward trainers: same shuffling, batching, schedule, metrics."""
    count = labels.shape[0]
    if count == 0:
        raise ArtifactError("no training samples")
    counts = label_counts(labels)
    weights = train_class_weights(counts, config).to(stack.device)
    steps_per_epoch = math.ceil(count / config.effective_batch)
    total_steps = steps_per_epoch * config.epochs
    warmup, notes = resolve_warmup(config, total_steps)
    history = TrainHistory(class_counts=counts, class_weights=weights.tolist(), train_samples=count,
                           val_samples=val_count, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                           warmup_steps=warmup, notes=notes)
    select = config.select_epoch
    if select != "last" and (evaluate is None or not val_count):
        history.notes.append(f"select_epoch {select!r} needs validation samples and there are none: "
                             "the last epoch's routers are kept")
        select = "last"
    best_key, best_epoch, best_state = None, 0, None
    if log:
        for note in history.notes:
            log(f"note: {note}")
    optimizer = torch.optim.AdamW(stack.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, warmup, total_steps))
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        stack.train()
        order = torch.randperm(count, generator=generator)
        epoch_loss = 0.0
        last_lr = optimizer.param_groups[0]["lr"]
        for start in range(0, count, config.effective_batch):
            effective = order[start:start + config.effective_batch]
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro_start in range(0, len(effective), config.batch_size):
                micro = effective[micro_start:micro_start + config.batch_size]
                loss = loss_of(micro, weights)
                (loss * (len(micro) / len(effective))).backward()
                step_loss += float(loss.detach()) * len(micro)
            epoch_loss += step_loss
            history.step_losses.append(step_loss / len(effective))
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(stack.parameters(), config.max_grad_norm)
            last_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            step += 1
        row = {"epoch": epoch, "train_loss": epoch_loss / count, "val_loss": None, "val_macro_f1": None,
               "val_recall_skip": None, "val_recall_execute": None, "val_recall_repeat": None,
               "val_layer_accuracy": None, "val_accuracy_by_layer": None, "learning_rate": last_lr, "steps": step,
               "selected": False}
        if evaluate is not None and val_count:
            stack.eval()
            with torch.no_grad():
                result = evaluate(weights)
            row.update({"val_loss": result["loss"], "val_macro_f1": result["macro_f1"],
                        "val_recall_skip": result["recall"]["skip"],
                        "val_recall_execute": result["recall"]["execute"],
                        "val_recall_repeat": result["recall"]["repeat"],
                        "val_layer_accuracy": result["accuracy"],
                        "val_accuracy_by_layer": result["accuracy_by_layer"]})
        if stack.device.type == "cuda":
            torch.cuda.synchronize(stack.device)
        if select != "last":
            # lower is better; a NaN metric never beats a number; strict '<' keeps the earlier epoch on a tie
            value = row[select]
            if value is None or math.isnan(value):
                key = math.inf
            else:
                key = -value if select == "val_macro_f1" else value
            if best_key is None or key < best_key:
                best_key, best_epoch = key, epoch
                best_state = {name: tensor.detach().clone() for name, tensor in stack.state_dict().items()}
        row["seconds"] = time.perf_counter() - started
        history.epochs.append(row)
        if log:
            val = "" if row["val_loss"] is None else (f"  val loss {row['val_loss']:.4f}  macro-F1 "
                                                      f"{row['val_macro_f1']:.3f}  acc {row['val_layer_accuracy']:.4f}")
            log(f"epoch {epoch}/{config.epochs}  train loss {row['train_loss']:.4f}{val}  "
                f"lr {last_lr:.2e}  {row['seconds']:.2f}s")
    if select == "last":
        best_epoch = config.epochs
    else:
        stack.load_state_dict(best_state)
    history.selected_epoch = best_epoch
    history.epochs[best_epoch - 1]["selected"] = True
    if log:
        chosen = history.epochs[best_epoch - 1]
        detail = "" if select == "last" else f" ({select} {chosen[select]:.4f})"
        log(f"kept the routers of epoch {best_epoch}/{config.epochs}{detail}")
    stack.eval()
    return history


def check_stack(stack: RouterStack, num_layers: int, windows: int, config: TrainConfig) -> None:
    """The router stack agrees with the features on layers and windows, and with the config on its kind (both
    trainers check it)."""
    if stack.num_layers != num_layers:
        raise ArtifactError(f"router stack has {stack.num_layers} routers, the features have {num_layers} layers")
    if windows != config.windows:
        raise ValueError(f"features were pooled into {windows} windows, the config says {config.windows}")
    if stack.config.kind != config.router_kind:
        raise ValueError(f"router stack is of kind {stack.config.kind!r}, train.router_kind says {config.router_kind!r}")


def evaluate_cache(stack: RouterStack, cache: FeatureCache, weights: torch.Tensor | None = None,
                   gamma: float = 2.0, batch_size: int = 256, target: str = "path") -> dict[str, Any]:
    """Loss (focal on path labels, or the safety loss) and classification metrics of `stack` on a feature cache
    (no gradients); for the safety target the classes are the thresholded safety targets (`safety_classes`)."""
    logits = []
    with torch.no_grad():
        for start in range(0, len(cache), batch_size):
            index = torch.arange(start, min(start + batch_size, len(cache)))
            means, window_mask, _ = cache.batch(index, stack.device)
            logits.append(stack(means, window_mask, cache.last_states_of(index, stack.device)))
    logits = torch.cat(logits)
    if target == "safety":
        safety = cache.safety_targets(torch.arange(len(cache)), logits.device)
        return {"loss": float(safety_loss(logits, safety)), **classification_metrics(logits, safety_classes(safety))}
    labels = cache.labels.to(logits.device)
    return {"loss": float(focal_loss(logits, labels, weights, gamma)), **classification_metrics(logits, labels)}


def skip_probabilities(stack: RouterStack, cache: FeatureCache, batch_size: int = 256) -> torch.Tensor:
    """P(skip) [N, L] of every cached prompt at every layer (features along the cached path)."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(cache), batch_size):
            index = torch.arange(start, min(start + batch_size, len(cache)))
            means, window_mask, _ = cache.batch(index, stack.device)
            last = cache.last_states_of(index, stack.device)
            chunks.append(torch.softmax(stack(means, window_mask, last).float(), dim=-1)[..., 0])
    return torch.cat(chunks).cpu()


def matched_threshold(skip_probs: torch.Tensor, target_skips: float) -> float:
    """The smallest tau (the most skips) at which skipping where P(skip) >= tau skips at most `target_skips` blocks
    per prompt on average; 1.0 when even the most confident block alone exceeds it."""
    values = torch.unique(skip_probs.flatten()).sort(descending=True).values.tolist()
    chosen = 1.0
    for tau in values:
        if float((skip_probs >= tau).sum(-1).float().mean()) > target_skips + 1e-9:
            break
        chosen = tau
    return float(min(1.0, chosen))


def feature_statistics(cache: FeatureCache, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation [L, d] of the valid window means of a cache, per layer and dimension."""
    weights = cache.window_mask.to(torch.float32)[:, None, :, None]  # [N, 1, W, 1]
    count = weights.sum()
    means = cache.means.float()
    mean = (means * weights).sum((0, 2)) / count
    var = (((means - mean[None, :, None, :]) ** 2) * weights).sum((0, 2)) / count
    return mean, var.sqrt().clamp(min=eps)


def standardized(cache: FeatureCache, mean: torch.Tensor, std: torch.Tensor) -> FeatureCache:
    """The cache with each window mean standardised: (x - mean[l]) / std[l] (float32)."""
    scaled = (cache.means.float() - mean[None, :, None, :].to(cache.means.device)) / std[None, :, None, :].to(
        cache.means.device)
    return FeatureCache(cache.prompt_ids, scaled, cache.window_mask, cache.labels, cache.safety,
                        cache.last_states)  # the last-token states stay raw: a read takes them as the model has them


def fold_standardization(stack: RouterStack, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make routers trained on standardised features take raw ones (the router kind changes its parameters so,
    e.g. mlp's first layer), so inference needs no extra step."""
    stack.kind.fold_standardization(stack.routers, mean, std)


def train_routers(stack: RouterStack, cache: FeatureCache, config: TrainConfig,
                  val_cache: FeatureCache | None = None, log: Callable[[str], None] | None = None) -> TrainHistory:
    """Train `stack` in place on cached teacher-forced features; returns the per-epoch history.

    AdamW (lr, weight_decay), cosine schedule with warm-up, `epochs` passes in a seeded order (torch.Generator
    seeded with config.seed), micro-batches of batch_size accumulated grad_accumulation times per step, focal
    loss with `config.class_weights` weights. At the end `stack` holds the routers of the selected epoch
    (`config.select_epoch`, history.selected_epoch). Only `stack`'s parameters are touched.
    """
    if len(cache) == 0:
        raise ArtifactError("no training samples in the feature cache")
    check_stack(stack, cache.num_layers, cache.means.shape[2], config)
    device = stack.device
    if config.standardize:  # raw residual-stream means have norms in the hundreds: fresh routers saturate
        mean, std = feature_statistics(cache)
        cache = standardized(cache, mean, std)
        if val_cache is not None:
            val_cache = standardized(val_cache, mean, std)
        history = _train(stack, cache, config, val_cache, log, device)
        fold_standardization(stack, mean, std)
        return history
    return _train(stack, cache, config, val_cache, log, device)


def init_at_prior(stack: RouterStack, safety: torch.Tensor, floor: float = 1e-3) -> None:
    """Each router set to predict its layer's mean safety whatever the input: log-probabilities [log p, log(1 - p),
    log floor] (p clipped to [floor, 1 - floor]), set by the router kind (mlp: output weights 0, these biases)."""
    rate = safety.float().mean(0).clamp(floor, 1.0 - floor)
    log_probs = torch.tensor([[math.log(p), math.log(1.0 - p), math.log(floor)] for p in rate.tolist()])
    stack.kind.init_at_prior(stack.routers, log_probs)


def _train(stack: RouterStack, cache: FeatureCache, config: TrainConfig, val_cache: FeatureCache | None,
           log: Callable[[str], None] | None, device) -> TrainHistory:
    if config.prior_init:
        init_at_prior(stack, cache.safety_targets(torch.arange(len(cache)), device))

    def loss_of(indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        means, window_mask, labels = cache.batch(indices, device)
        logits = stack(means, window_mask, cache.last_states_of(indices, device))
        if config.target == "safety":
            return safety_loss(logits, cache.safety_targets(indices, device))
        return focal_loss(logits, labels, weights, config.gamma)

    evaluate = None
    if val_cache is not None and len(val_cache):
        check_stack(stack, val_cache.num_layers, val_cache.means.shape[2], config)

        def evaluate(weights):
            return evaluate_cache(stack, val_cache, weights, config.gamma, target=config.target)

    labels = cache.labels
    if config.target == "safety":
        labels = safety_classes(cache.safety_targets(torch.arange(len(cache)), cache.labels.device))
    return train_loop(stack, labels, loss_of, config, evaluate, 0 if val_cache is None else len(val_cache), log)
