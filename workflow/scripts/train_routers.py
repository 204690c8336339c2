"""Train Dr.LLM routers on search labels with a frozen base model (METHOD.md §5).

Reads training samples (Parquet, drllm.routing.samples.SAMPLES_SCHEMA: prompt_id, input_ids = the prompt tokens as the
search encoded them, labels = per-layer counts 0/1/2), splits them by prompt, builds the teacher-forced feature
cache with one forward pass per sample, trains the routers on it and writes to --out-dir:

  routers.safetensors, router_config.json   the stack of the selected epoch (RouterStack.from_pretrained)
  metrics.parquet                            one row per epoch (drllm.routing.training.METRICS_SCHEMA; `selected` marks
                                             the epoch whose routers were saved)
  train_summary.json                         class counts and weights, split sizes, schedule, selected epoch,
                                             notes, timings
  training_curves.png, label_distribution.png
  README.md                                  the model card (drllm.routing.card): base model, revision and weights
                                             hash, label statistics, training settings, the selected epoch's fit

Example:
  python workflow/scripts/train_routers.py --model-dir resources/models/smollm2-135m-instruct \\
      --samples results/train/smollm2-135m-instruct/samples.parquet \\
      --config-json '{"epochs": 25, "val_fraction": 0.1}' --out-dir results/routers/smollm2-135m-instruct
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from drllm.core.artifacts import ArtifactError, write_json
from drllm.core.models import read_manifest, resolve_device, resolve_dtype
from drllm.core.provenance import stage_provenance
from drllm.routing.card import write_card
from drllm.routing.features import build_feature_cache, pick_cache_device
from drllm.routing.plots import plot_curves, plot_label_distribution
from drllm.routing.router import CLASSES, Decision, RouterConfig, RouterStack
from drllm.routing.samples import read_samples, split_samples, validate_samples
from drllm.routing.training import (TrainConfig, label_counts, safety_classes, selected_row, train_class_weights,
                                    train_routers, write_metrics)


def read_config_block(text: str) -> dict:
    """--config-json: a JSON object, or the path of a file holding one."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        path = Path(stripped)
        if not path.is_file():
            raise ValueError(f"--config-json is neither a JSON object nor an existing file: {text!r}")
        stripped = path.read_text()
    block = json.loads(stripped)
    if not isinstance(block, dict):
        raise ValueError("--config-json must be a JSON object")
    return block


def load_base(model_dir: str, device: str, dtype: str):
    """The frozen base model of a materialised directory (no tokenizer needed: samples are token ids)."""
    from transformers import AutoModelForCausalLM

    manifest = read_manifest(model_dir)
    torch_device = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, torch_device))
    model.to(torch_device).eval()
    model.requires_grad_(False)
    return model, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="materialised model (resources/models/<name>)")
    parser.add_argument("--samples", required=True, help="training samples Parquet (prompt_id, input_ids, labels)")
    parser.add_argument("--config-json", default="{}",
                        help="training settings (drllm.routing.training.TrainConfig keys) as JSON, or a JSON file")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="base model dtype: auto (bf16 on CUDA), float32, ...")
    parser.add_argument("--progress", action="store_true", help="progress bar while building the feature cache")
    args = parser.parse_args(argv)

    try:
        config_block = read_config_block(args.config_json)
        config = TrainConfig.from_dict(config_block)
        manifest = read_manifest(args.model_dir)
        provenance = stage_provenance("train_routers", config_block, manifest)
        num_layers, hidden_size = int(manifest["num_layers"]), int(manifest["hidden_size"])
        samples = read_samples(args.samples)
        validate_samples(samples, num_layers)
        train, val = split_samples(samples, config.val_fraction, config.seed)
        model, manifest = load_base(args.model_dir, args.device, args.dtype)
    except (ArtifactError, ValueError, OSError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"train_routers: error: {exc}", file=sys.stderr)
        return 2

    from drllm.core.executor import PathExecutor

    try:
        executor = PathExecutor(model)
        if executor.num_layers != num_layers:
            raise ArtifactError(f"{args.model_dir}: manifest says {num_layers} layers, the model has "
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
        print(f"train_routers: {manifest['name']} ({num_layers} layers, d={hidden_size}); {len(train)} train / "
              f"{len(val)} validation samples (split by prompt, seed {config.seed})")
        print("train_routers: class counts " + ", ".join(f"{n}={c}" for n, c in zip(CLASSES, counts)))
        mode = {"effective": f"effective, beta {config.beta}"}.get(config.class_weights, config.class_weights)
        print(f"train_routers: class weights ({mode}) "
              + ", ".join(f"{n}={w:.4f}" for n, w in zip(CLASSES, weights.tolist())))
        if config.teacher_force == "default":  # every sample's features along the full path
            train, val = ([dataclasses.replace(s, labels=[1] * num_layers) for s in part] for part in (train, val))
        started = time.perf_counter()
        cache_device = pick_cache_device(len(samples), num_layers, config.windows, hidden_size, config.cache_dtype,
                                         executor.device)
        cache = build_feature_cache(executor, train, config.windows, config.cache_batch_size, config.cache_dtype,
                                    device=cache_device, progress=args.progress,
                                    exclude_first=config.pool_exclude_first)
        val_cache = (build_feature_cache(executor, val, config.windows, config.cache_batch_size, config.cache_dtype,
                                         device=cache_device, exclude_first=config.pool_exclude_first)
                     if val else None)
        cache_seconds = time.perf_counter() - started
        print(f"train_routers: feature cache {cache.nbytes / 2**20:.1f} MiB (+ validation "
              f"{0 if val_cache is None else val_cache.nbytes / 2**20:.1f} MiB) on {cache_device} in "
              f"{cache_seconds:.1f}s")
        del executor, model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

        stack = RouterStack(RouterConfig(base_model=manifest["name"], num_layers=num_layers, hidden_size=hidden_size,
                                         base_model_revision=manifest.get("revision"),
                                         base_model_sha256=manifest.get("weights_sha256"),
                                         windows=config.windows, hidden=config.hidden, label_counts=counts,
                                         training=config.to_dict(), pool_exclude_first=config.pool_exclude_first,
                                         decision=(Decision("threshold", config.threshold).to_dict()
                                                   if config.target == "safety" else Decision().to_dict())),
                               seed=config.seed)
        stack.to(resolve_device(args.device))
        print(f"train_routers: {stack.num_parameters():,} router parameters")
        history = train_routers(stack, cache, config, val_cache, log=lambda m: print(f"train_routers: {m}"))
        train_seconds = sum(row["seconds"] for row in history.epochs)

        out = Path(args.out_dir)
        stack.save_pretrained(out)
        write_metrics(out / "metrics.parquet", history.epochs, provenance)
        summary = {key: value for key, value in history.to_dict().items() if key not in ("epochs", "step_losses")}
        summary.update({"model": manifest["name"], "num_layers": num_layers, "hidden_size": hidden_size,
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
        print(f"train_routers: wrote {out}")
    except (ArtifactError, ValueError) as exc:
        print(f"train_routers: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
