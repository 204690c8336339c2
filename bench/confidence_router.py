"""Study 4c: do routers that read the model's confidence route by the prompt? (issue 30, item 2)

Trains router stacks that differ only in their kind on the same search samples, then evaluates each on held-out
ARC next to the base model and to `safest` matched to that router's own saving, with the project's stage scripts
(workflow/scripts/train_routers.py, evaluate.py), and prints one table:

    python bench/confidence_router.py train  --out results/study4c --samples <samples.parquet> --train-json <json>
    python bench/confidence_router.py eval   --out results/study4c --influence <layer_safety.parquet>
    python bench/confidence_router.py report --out results/study4c

`--format listed` evaluates in the listed format (the options in the context; study 4d, whose routers were trained
on a `listed` search): each cell, the base model's included, then scores that format.

Cells run in this process, one after another. To run two drivers side by side (one per benchmark) on 2 cores, give
each `OMP_NUM_THREADS=1`, as Snakemake does for its jobs: with torch's default threads in both, a listed base cell
took 8-12 s an item on this project's VM, against 0.3-0.7 s with one thread each (study 4d).

Arms (`--arms`): `mlp` (the paper's router, study 3's settings) and `confidence@R` (the same plus the confidence
read at layer R). What is compared:
* the validation safety loss against the per-layer prior (the routers' `train_summary.json`): the share of the
  prior's loss a stack removes is how much it routes by the prompt (study 3b: 0.6% for mlp);
* held out, at each router's own matched threshold: net layers saved (read cost included), agreement with the full
  model's answer, and accuracy; against `safest` removing the same mean number of blocks, with a paired 95%
  bootstrap interval on the agreement gain.
Each cell is skipped when its file exists (resumable); the stage scripts write atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from drllm.evaluation.metrics import paired_bootstrap_delta

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
MODEL_DIR = "resources/models/smollm2-135m-instruct"
SETTINGS = {"chat_template": True, "formats": {"cloze": {"normalize": "chars"}}, "seed": 0}


def arm_settings(arm: str, base: dict) -> dict:
    """The train block of one arm: the shared block plus the kind (confidence@R: read layer R)."""
    block = {key: value for key, value in base.items() if key not in ("router_kind", "confidence")}
    if arm == "mlp":
        return block
    kind, _, layer = arm.partition("@")
    if kind != "confidence" or not layer.isdigit():
        raise SystemExit(f"--arms: expected mlp or confidence@<R>, got {arm!r}")
    return {**block, "router_kind": "confidence", "confidence": {"read_layer": int(layer)}}


def train(args) -> None:
    import train_routers

    base = json.loads(Path(args.train_json).read_text()) if Path(args.train_json).is_file() else json.loads(args.train_json)
    for arm in args.arms.split(","):
        out = Path(args.out) / "routers" / arm
        if (out / "train_summary.json").is_file():
            print(f"{arm}: trained already ({out})")
            continue
        code = train_routers.main(["--model-dir", args.model_dir, "--samples", args.samples, "--out-dir", str(out),
                                   "--config-json", json.dumps(arm_settings(arm, base))])
        if code:
            raise SystemExit(f"{arm}: train_routers exited {code}")


def benchmarks(spec: str) -> list[tuple[str, int]]:
    return [(name, int(count)) for name, count in (item.split(":") for item in spec.split(","))]


def evaluate_cell(args, bench: str, samples: int, method: str, out: Path, extra: list[str]) -> None:
    import evaluate

    if out.is_file():
        return
    entry = {"name": bench, "benchmark": bench, "split": "test_eval", "format": args.format, "samples": samples}
    code = evaluate.main(["--model-dir", args.model_dir, "--data", f"resources/data/{bench}/test_eval.parquet",
                          "--entry-json", json.dumps(entry), "--method", method, "--settings-json",
                          json.dumps(SETTINGS), "--no-progress", "--out", str(out), *extra])
    if code:
        raise SystemExit(f"{bench}/{method}: evaluate exited {code}")


def run_eval(args) -> None:
    root = Path(args.out)
    for bench, samples in benchmarks(args.benchmarks):
        cells = root / "eval" / bench
        evaluate_cell(args, bench, samples, "base", cells / "base.parquet", [])
        for arm in args.arms.split(","):
            routers = root / "routers" / arm
            router_cell = cells / f"router-{arm}.parquet"
            evaluate_cell(args, bench, samples, "router", router_cell, ["--artifact", f"routers={routers}"])
            evaluate_cell(args, bench, samples, "safest", cells / f"safest-{arm}.parquet",
                          ["--artifact", f"router_cell={router_cell}", "--artifact", f"influence={args.influence}"])


def rows_by_id(path: Path) -> dict[str, dict]:
    import polars as pl

    return {row["example_id"]: row for row in pl.read_parquet(path).to_dicts()}


def cell_stats(rows: dict[str, dict], base: dict[str, dict]) -> dict[str, np.ndarray]:
    """Per item of the base cell: agreement with the base prediction, net layers saved, score change."""
    ids = sorted(base)
    return {"agree": np.array([rows[i]["prediction"] == base[i]["prediction"] for i in ids], dtype=float),
            "saved": np.array([rows[i]["num_layers"] - rows[i]["path_length"] - (rows[i]["read_blocks"] or 0.0)
                               for i in ids]),
            "delta": np.array([rows[i]["score"] - base[i]["score"] for i in ids])}


def pooled(stats: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([part[key] for part in stats]) for key in stats[0]}


def report_row(arm: str, prior: float, val: float, bench: str, router: dict, safest: dict) -> str:
    gain = router["agree"] - safest["agree"]
    _, low, high = paired_bootstrap_delta(router["agree"], safest["agree"], seed=0, resamples=10000)
    return (f"| {arm} | {prior:.4f} / {val:.4f} | {100 * (prior - val) / prior:+.1f}% | {bench} (n = "
            f"{len(gain)}) | {router['saved'].mean():.2f} / {safest['saved'].mean():.2f} | "
            f"{router['agree'].mean():.3f} / {safest['agree'].mean():.3f} | {100 * gain.mean():+.1f} "
            f"({100 * low:+.1f}, {100 * high:+.1f}) | {100 * router['delta'].mean():+.1f} / "
            f"{100 * safest['delta'].mean():+.1f} |")


def report(args) -> None:
    """One row per arm and benchmark, and with several benchmarks one row over all their items (`safest` stays
    matched per benchmark)."""
    root = Path(args.out)
    lines = ["| arm | validation loss: prior / routers | gain over the prior | benchmark | net layers saved "
             "(router / safest) | agreement: router / safest | gain (paired 95% CI) | accuracy change: "
             "router / safest (points) |", "|---" * 8 + "|"]
    for arm in args.arms.split(","):
        summary = json.loads((root / "routers" / arm / "train_summary.json").read_text())
        prior, val = summary["prior_val_loss"], summary["selected"]["val_loss"]
        routers, safests = [], []
        for bench, _ in benchmarks(args.benchmarks):
            cells = root / "eval" / bench
            base = rows_by_id(cells / "base.parquet")
            routers.append(cell_stats(rows_by_id(cells / f"router-{arm}.parquet"), base))
            safests.append(cell_stats(rows_by_id(cells / f"safest-{arm}.parquet"), base))
            lines.append(report_row(arm, prior, val, bench, routers[-1], safests[-1]))
        if len(routers) > 1:
            lines.append(report_row(arm, prior, val, "all", pooled(routers), pooled(safests)))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["train", "eval", "report"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--arms", default="mlp,confidence@12,confidence@8")
    parser.add_argument("--model-dir", default=MODEL_DIR)
    parser.add_argument("--samples", help="train: the search's samples.parquet (results/routers/<model>/)")
    parser.add_argument("--train-json", help="train: the shared train block, JSON or a JSON file")
    parser.add_argument("--influence", help="eval: the search's layer_safety.parquet (safest's block order)")
    parser.add_argument("--benchmarks", default="arc_easy:500,arc_challenge:500")
    parser.add_argument("--format", default="cloze", choices=["cloze", "listed"],
                        help="eval: the held-out items' format (the routers' search should have used it)")
    args = parser.parse_args(argv)
    {"train": train, "eval": run_eval, "report": report}[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
