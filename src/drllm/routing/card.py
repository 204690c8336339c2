"""The model card of a trained router directory (README.md): what the routers belong to and how they were made.

A router directory is meant to travel (copied, or pushed to the Hugging Face hub and loaded with
`RoutedModel.from_pretrained(model_dir, "owner/name")`), so it says which base model, revision and weights it was
trained for (loading checks them, from router_config.json), what it learned from and how well it fits held-out
labels. Training writes the card with a pointer to the evaluation; the release stage (`release_card`) completes it
with the search settings, the search summary and the evaluation table once the report exists.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from drllm.core.artifacts import ArtifactError, write_text
from drllm.core.tables import markdown_table
from drllm.routing.decision import CLASSES
from drllm.routing.router import CARD_FILE
from drllm.routing.router_config import RouterConfig

EVALUATION_HEADING = "## Evaluation"


def render_card(config: RouterConfig, manifest: dict[str, Any], labels: Sequence[Sequence[int]],
                selected: dict[str, Any] | None) -> str:
    """The card's Markdown: base model, label statistics, training settings, the selected epoch's fit."""
    layers = config.num_layers
    counts = config.label_counts or [0] * len(CLASSES)
    mean_length = sum(sum(row) for row in labels) / max(len(labels), 1)
    source = manifest.get("path") if manifest.get("source") == "hub" else None
    front = ["---", "library_name: drllm", "tags: [dr-llm, layer-routing]"] + \
        ([f"base_model: {source}"] if source else []) + ["---", ""]
    rows = [("name", config.base_model), ("source", manifest.get("source")), ("path / hub id", manifest.get("path")),
            ("revision", config.base_model_revision), ("weights sha256", config.base_model_sha256),
            ("architecture", manifest.get("architecture")), ("layers", layers), ("hidden size", config.hidden_size)]
    fit = ""
    if selected:
        number = lambda key: "n/a" if selected.get(key) is None else f"{selected[key]:.3f}"  # noqa: E731
        fit = (f"Selected epoch {selected.get('epoch')}: validation macro-F1 {number('val_macro_f1')}, per-layer "
               f"accuracy {number('val_layer_accuracy')}, recall skip / execute / repeat {number('val_recall_skip')} "
               f"/ {number('val_recall_execute')} / {number('val_recall_repeat')} (metrics.parquet: every epoch).\n")
    return "\n".join(front + [
        f"# Dr.LLM routers for {config.base_model}",
        "",
        f"{layers} per-block routers (window mean pooling over {config.windows} windows, MLP d -> {config.hidden} "
        "-> 3: skip / execute / repeat) trained by drllm on MCTS layer-path labels. "
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


def release_card(card: str, search_settings: Sequence[str], search_table: str,
                 evaluation: Sequence[dict[str, Any]], certified: dict | None = None) -> str:
    """The training card completed for release: its evaluation pointer replaced by the search settings (each
    distinct `search_config` of the shards), the search summary table, the certified operating point (the
    calibration file's `certified` object, when calibrated with `certify`) and the evaluation table (base and
    router rows of the report summary, REPORT_SUMMARY_SCHEMA of evaluation.summary)."""
    from drllm.routing.calibration import certified_summary

    if EVALUATION_HEADING not in card:
        raise ArtifactError(f"the router card has no '{EVALUATION_HEADING}' section to complete")
    head = card[:card.index(EVALUATION_HEADING)]
    settings = [json.dumps(json.loads(text), indent=2, sort_keys=True) for text in sorted(set(search_settings))]
    rows = [row for row in evaluation if row["method"] == "base" or row["method"].startswith("router")]
    body = []
    for row in sorted(rows, key=lambda r: (r["benchmark"], r["method"] != "base", r["method"])):
        delta = "" if row["method"] == "base" or row.get("delta_vs_base") is None else \
            f"{100 * row['delta_vs_base']:+.1f} ({100 * row['delta_ci_low']:+.1f}, {100 * row['delta_ci_high']:+.1f})"
        body.append([row["benchmark"], row["method"], str(row["n"]),
                     f"{100 * row['score']:.1f} ({100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f})", delta,
                     f"{row['mean_path_length']:.2f} of {row['num_layers']}", f"{row['mean_layers_saved']:.2f}"])
    table = markdown_table(["benchmark", "method", "n", "score (95% CI)", "Δ vs base (paired 95% CI)",
                            "blocks run (of L)", "saved"], body)
    return head + "\n".join([
        "## Search",
        "",
        "The labels came from the length-aware MCTS with these settings (one block per distinct setting):",
        "",
        *[f"```json\n{text}\n```" for text in settings],
        "",
        search_table.strip(),
        "",
        *(["## Operating point", "", certified_summary(certified), ""] if certified is not None else []),
        EVALUATION_HEADING,
        "",
        "Scores in % (metric per benchmark as in the report); Δ: paired difference to the base model on the same "
        "items; router@p: the control knob p, router@t<tau>: the threshold decision at tau, router@calibrated: the "
        "point chosen on validation prompts, router@certified: the certified point above.",
        "",
        table if rows else "No base or router cells were evaluated.",
        "",
    ])
