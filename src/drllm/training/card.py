"""The model card of a trained router directory (README.md): what the routers belong to and how they were made.

A router directory is meant to travel (copied, or pushed to the Hugging Face hub and loaded with
`RoutedModel.from_pretrained(model_dir, "owner/name")`), so it says which base model, revision and weights it was
trained for (loading checks them, from router_config.json), what it learned from and how well it fits held-out
labels. Training writes the card with a pointer to the evaluation; the release stage (drllm.release.card) completes
it with the search settings, the search summary and the evaluation table once the report exists.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from drllm.core.artifacts import write_text
from drllm.core.models import portable_origin
from drllm.routing.decision import CLASSES
from drllm.routing.kinds import ROUTER_KINDS
from drllm.routing.router import CARD_FILE
from drllm.routing.router_config import RouterConfig

EVALUATION_HEADING = "## Evaluation"
# what the routers learned, by train.target (the labeler that made the labels is named in the release card's search
# section, drllm.release.card)
TARGETS = {"path": "the search's label paths (each block's skip / execute / repeat count)",
           "safety": "the search's per-block safety targets (whether skipping a block alone kept the answer)"}


def render_card(config: RouterConfig, manifest: dict[str, Any], labels: Sequence[Sequence[int]],
                selected: dict[str, Any] | None) -> str:
    """The card's Markdown: base model, label statistics, training settings, the selected epoch's fit."""
    layers = config.num_layers
    counts = config.label_counts or [0] * len(CLASSES)
    mean_length = sum(sum(row) for row in labels) / max(len(labels), 1)
    source = manifest.get("path") if manifest.get("source") == "hub" else None
    front = ["---", "library_name: drllm", "tags: [dr-llm, layer-routing]"] + \
        ([f"base_model: {source}"] if source else []) + ["---", ""]
    rows = [("name", config.base_model), ("source", manifest.get("source")), portable_origin(manifest),
            ("revision", config.base_model_revision), ("weights sha256", config.base_model_sha256),
            ("architecture", manifest.get("architecture")), ("layers", layers), ("hidden size", config.hidden_size)]
    target = TARGETS.get(config.training.get("target", "path"), "the search's labels")
    fit = ""
    if selected:
        number = lambda key: "n/a" if selected.get(key) is None else f"{selected[key]:.3f}"  # noqa: E731
        fit = (f"Selected epoch {selected.get('epoch')}: validation macro-F1 {number('val_macro_f1')}, per-layer "
               f"accuracy {number('val_layer_accuracy')}, recall skip / execute / repeat {number('val_recall_skip')} "
               f"/ {number('val_recall_execute')} / {number('val_recall_repeat')} (metrics.parquet: every epoch).\n")
    return "\n".join(front + [
        f"# Dr.LLM routers for {config.base_model}",
        "",
        f"{layers} per-block routers ({ROUTER_KINDS.get(config.kind).describe(config)}) trained by drllm on {target}. "
        "The base model's weights are unchanged; routing is decided once per prompt.",
        "",
        "## Base model",
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {'' if value is None else f'`{value}`'} |" for name, value in rows],
        "",
        "Loading checks the name, layer count, width, revision and weights hash against the base model's drllm "
        "manifest.",
        "",
        "## Use",
        "",
        "```python",
        "from drllm.routing.inference import RoutedModel",
        "routed = RoutedModel.from_pretrained(\"<materialised base model dir>\", \"<this directory or hub id>\")",
        "```",
        "",
        "## Labels",
        "",
        f"{len(labels)} training samples (prompts whose search kept a path); mean labelled path "
        f"{mean_length:.2f} blocks of {layers} ({layers - mean_length:.2f} saved); per-layer labels skip / "
        f"execute / repeat {counts[0]} / {counts[1]} / {counts[2]} (training split).",
        "",
        "## Training",
        "",
        fit,
        "```json",
        json.dumps(config.training, indent=2, sort_keys=True),
        "```",
        "",
        EVALUATION_HEADING,
        "",
        "Benchmark accuracy and layers saved against the base model and baselines: the pipeline's report "
        "(`results/report/<model>/report.md`, `summary.parquet`) for the run that trained these routers.",
        "",
    ])


def write_card(out_dir: str | os.PathLike, config: RouterConfig, manifest: dict[str, Any],
               labels: Sequence[Sequence[int]], selected: dict[str, Any] | None) -> Path:
    path = Path(out_dir) / CARD_FILE
    write_text(path, render_card(config, manifest, labels, selected))
    return path
