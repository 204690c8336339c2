"""The training stage, from files to the written router directory: `run_training(TrainRequest)`.
workflow/scripts/train_routers.py parses the command line into a TrainRequest; rules/train.smk gives one per model.

Reads the training samples (drllm.training.samples), splits them by prompt, builds the teacher-forced feature cache
with one forward pass per sample, trains the routers on it and writes to the output directory: the stack of the
selected epoch (routers.safetensors, router_config.json), metrics.parquet, train_summary.json, the two plots and
the model card (README.md).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from drllm.core.artifacts import ArtifactError, write_json
from drllm.core.executor import PathExecutor
from drllm.core.models import read_manifest, resolve_device, resolve_dtype
from drllm.core.provenance import stage_provenance
from drllm.training.card import write_card
from drllm.training.features import build_feature_cache, pick_cache_device
from drllm.training.plots import plot_curves, plot_label_distribution
from drllm.routing.decision import CLASSES, Decision
from drllm.routing.kinds import ROUTER_KINDS
from drllm.routing.router import RouterStack
from drllm.routing.router_config import RouterConfig
from drllm.training.samples import read_samples, split_samples, validate_samples
from drllm.training.train_settings import TrainConfig
from drllm.training.training import (label_counts, matched_threshold, prior_validation_loss, safety_classes,
                                    selected_row, skip_probabilities, train_class_weights, train_routers,
                                    write_metrics)


@dataclass(frozen=True)
class TrainRequest:
    """One router training, as the rule gives it."""

    model_dir: str                 # materialised model (resources/models/<name>)
    samples: str                   # training samples Parquet (prompt_id, input_ids, labels)
    out_dir: str
    config: dict = field(default_factory=dict)  # the train: block as given (TrainConfig keys; the provenance's)
    device: str = "auto"
    dtype: str = "auto"            # base model dtype: auto (bf16 on CUDA), float32, ...
    progress: bool = False         # progress bar while building the feature cache


def stage_log(message: str) -> None:
    print(f"train_routers: {message}")


def load_base(model_dir: str, device: str, dtype: str):
    """The frozen base model of a materialised directory (no tokenizer needed: samples are token ids)."""
    from transformers import AutoModelForCausalLM

    manifest = read_manifest(model_dir)
    torch_device = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, torch_device))
    model.to(torch_device).eval()
    model.requires_grad_(False)
    return model, manifest


def run_training(request: TrainRequest, log: Callable[[str], None] = stage_log) -> str:
    """Train the routers and write the router directory; returns the closing line. Progress goes to `log`.

    Raises ValueError / ArtifactError naming what is wrong (a bad setting, missing or malformed samples); the
    model's loader may raise OSError (missing weights)."""
    config = TrainConfig.from_dict(request.config)
    manifest = read_manifest(request.model_dir)
    provenance = stage_provenance("train_routers", request.config, manifest)
    num_layers, hidden_size = int(manifest["num_layers"]), int(manifest["hidden_size"])
    samples = read_samples(request.samples)
    validate_samples(samples, num_layers)
    train, val = split_samples(samples, config.val_fraction, config.seed)
    model, manifest = load_base(request.model_dir, request.device, request.dtype)

    executor = PathExecutor(model)
    if executor.num_layers != num_layers:
        raise ArtifactError(f"{request.model_dir}: manifest says {num_layers} layers, the model has "
                            f"{executor.num_layers}")
    if config.target == "safety":
        missing = [s.prompt_id for s in samples if s.safety is None]
        if missing:
            raise ArtifactError(f"train.target safety: {len(missing)} samples have no safety targets (e.g. "
                                f"{missing[0]!r}); run the search with search.labeler: safety")
        counts = label_counts(safety_classes(torch.tensor([s.safety for s in train])))
    else:
        counts = label_counts([s.labels for s in train])
    weights = train_class_weights(counts, config)
    log(f"{manifest['name']} ({num_layers} layers, d={hidden_size}); {len(train)} train / "
        f"{len(val)} validation samples (split by prompt, seed {config.seed})")
    log("class counts " + ", ".join(f"{n}={c}" for n, c in zip(CLASSES, counts)))
    mode = {"effective": f"effective, beta {config.beta}"}.get(config.class_weights, config.class_weights)
    log(f"class weights ({mode}) " + ", ".join(f"{n}={w:.4f}" for n, w in zip(CLASSES, weights.tolist())))
    # the joint label paths' skips: what the matched threshold aims for on validation prompts
    label_skips = float(np.mean([sum(1 for c in s.labels if c == 0) for s in (val or train)]))
    if config.teacher_force == "default":  # every sample's features along the full path
        train, val = ([dataclasses.replace(s, labels=[1] * num_layers) for s in part] for part in (train, val))
    started = time.perf_counter()
    cache_device = pick_cache_device(len(samples), num_layers, config.windows, hidden_size, config.cache_dtype,
                                     executor.device)
    kind = ROUTER_KINDS.get(config.router_kind)
    cache = build_feature_cache(executor, train, config.windows, config.cache_batch_size, config.cache_dtype,
                                device=cache_device, progress=request.progress,
                                exclude_first=config.pool_exclude_first, last_states=kind.reads_last_token)
    val_cache = (build_feature_cache(executor, val, config.windows, config.cache_batch_size, config.cache_dtype,
                                     device=cache_device, exclude_first=config.pool_exclude_first,
                                     last_states=kind.reads_last_token)
                 if val else None)
    cache_seconds = time.perf_counter() - started
    log(f"feature cache {cache.nbytes / 2**20:.1f} MiB (+ validation "
        f"{0 if val_cache is None else val_cache.nbytes / 2**20:.1f} MiB) on {cache_device} in {cache_seconds:.1f}s")
    stack = RouterStack(RouterConfig(base_model=manifest["name"], num_layers=num_layers, hidden_size=hidden_size,
                                     base_model_revision=manifest.get("revision"),
                                     base_model_sha256=manifest.get("weights_sha256"),
                                     windows=config.windows, hidden=config.hidden, label_counts=counts,
                                     training=config.to_dict(), pool_exclude_first=config.pool_exclude_first,
                                     # a null threshold is matched after training (below)
                                     decision=(Decision("threshold", config.threshold or 0.0).to_dict()
                                               if config.target == "safety" else Decision().to_dict()),
                                     kind=config.router_kind, kind_settings=dict(config.kind_settings)),
                        seed=config.seed)
    stack.to(resolve_device(request.device))
    kind.prepare(stack.routers, stack.config, executor, cache)  # what the kind takes from the frozen model
    del executor, model  # the routers train on the cache alone: free the base model's memory first
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log(f"{stack.num_parameters():,} router parameters")
    history = train_routers(stack, cache, config, val_cache, log=log)
    threshold_rule = None
    if config.target == "safety" and config.threshold is None:
        tau = matched_threshold(skip_probabilities(stack, val_cache or cache), label_skips)
        stack.config.decision = Decision("threshold", tau).to_dict()
        threshold_rule = {"threshold": tau, "target_skips": label_skips,
                          "prompts": "validation" if val_cache is not None else "train"}
        log(f"decision threshold {tau:.4f}: the routers skip {label_skips:.2f} blocks per "
            f"{threshold_rule['prompts']} prompt on average, as many as their labels jointly kept")
    train_seconds = sum(row["seconds"] for row in history.epochs)

    out = Path(request.out_dir)
    stack.save_pretrained(out)
    write_metrics(out / "metrics.parquet", history.epochs, provenance)
    summary = {key: value for key, value in history.to_dict().items() if key not in ("epochs", "step_losses")}
    if config.target == "safety" and val:  # the routers against each layer's training safe rate
        prior = prior_validation_loss([s.safety for s in train], [s.safety for s in val])
        summary["prior_val_loss"] = prior
        log(f"per-layer prior: validation loss {prior:.4f}; routers {selected_row(history.epochs)['val_loss']:.4f}")
    summary.update({"model": manifest["name"], "num_layers": num_layers, "hidden_size": hidden_size,
                    "matched_threshold": threshold_rule,
                    "router_parameters": stack.num_parameters(), "config": config.to_dict(),
                    "cache_seconds": cache_seconds, "train_seconds": train_seconds,
                    "cache_bytes": cache.nbytes, "selected_epoch": history.selected_epoch,
                    "selected": selected_row(history.epochs), "final": history.epochs[-1]})
    write_json(out / "train_summary.json", summary)
    labels = [list(s.labels) for s in samples]
    write_card(out, stack.config, manifest, labels, summary["selected"])
    plot_curves(out / "training_curves.png", history.epochs)
    plot_label_distribution(out / "label_distribution.png", labels,
                            f"{manifest['name']}: label shares per layer ({len(samples)} samples)")
    return f"train_routers: wrote {out}"
