"""The release card: a trained router directory's model card (drllm.training.card) completed for release with the
search settings, the search summary, the certified operating point and the evaluation table (rules/report.smk,
release_routers)."""
from __future__ import annotations

import json
from typing import Any, Sequence

from drllm.calibration.calibration import certified_summary
from drllm.core.artifacts import ArtifactError
from drllm.core.tables import markdown_table
from drllm.training.card import EVALUATION_HEADING


def labelled_by(settings: Sequence[dict[str, Any]]) -> str:
    """Which labeler and reward made the labels, as the shards' search settings name them (a labeler's one-line
    summary where its table entry has one)."""
    from drllm.search.labelers import LABELERS

    pairs = sorted({(block.get("labeler", "mcts"), (block.get("reward") or {}).get("kind", "binary"))
                    for block in settings})
    parts = []
    for labeler, reward in pairs:
        summary = LABELERS.get(labeler).summary if labeler in LABELERS else ""
        parts.append(f"the `{labeler}` labeler{f' ({summary})' if summary else ''} judged by the `{reward}` reward")
    return " and ".join(parts) or "the search"


def release_card(card: str, search_settings: Sequence[str], search_table: str,
                 evaluation: Sequence[dict[str, Any]], certified: dict | None = None) -> str:
    """The training card completed for release: its evaluation pointer replaced by the search settings (each
    distinct `search_config` of the shards), the search summary table, the certified operating point (the
    calibration file's `certified` object, when calibrated with `certify`) and the evaluation table (base and
    router rows of the report summary, REPORT_SUMMARY_SCHEMA of evaluation.summary)."""
    if EVALUATION_HEADING not in card:
        raise ArtifactError(f"the router card has no '{EVALUATION_HEADING}' section to complete")
    head = card[:card.index(EVALUATION_HEADING)]
    given = [json.loads(text) for text in sorted(set(search_settings))]
    settings = [json.dumps(block, indent=2, sort_keys=True) for block in given]
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
        f"The labels came from {labelled_by(given)}, with these settings (one block per distinct setting):",
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
