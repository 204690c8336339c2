"""Study 4: skips spent where the answer is sure, against the safest static blocks at equal compute (issue 30).

Three roles of ARC prompts (cloze, the embedded model by default):
  rank   ARC validation prompts: every single skip evaluated (which blocks are safe alone: the ranking), and the
         early reads that fit each budget's margin threshold (drllm.routing.allocation.fit_threshold).
  calib  the other ARC validation prompts: every candidate path, for Learn-then-Test over the family of budgets.
  eval   held-out ARC test items (the `test_eval` halves): every candidate path, for the comparison.
Per prompt the full forward runs once with its states kept; the confidence is read from it at each read layer
(the states entering block R are the ones a routed forward computes), and each candidate path resumes from the
longest shared prefix. The policies are then compared offline on the same per-prompt outcomes:
  safest@k        the k blocks most often safe alone, removed for every prompt (no read);
  safest>=R@k     the same among blocks >= R;
  sure-<lens>(R)@b  the allocation: K = b / share skips (safest blocks >= R) for prompts whose lens margin at R clears
                  the fitted threshold, none for the rest; its saving is net of the read's cost;
  ceiling@b       the same split by the full model's own final margin (an upper bound, not a method).

    python bench/confidence_allocation.py run --out results/study4 --role rank    # then calib and eval (any order
    python bench/confidence_allocation.py run --out results/study4 --role calib   #  after rank), resumable, and
    python bench/confidence_allocation.py run --out results/study4 --role eval    #  --worker i --workers n splits
    python bench/confidence_allocation.py report --out results/study4             # tables, certificate, figure

Also measured on the rank prompts: what an epsilon condition on the agreement reward (the kept option's score
within epsilon of the full model's) does to each block's safe rate.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

READ_LAYERS = (8, 12)           # --read-layers; the run's values are kept in <out>/settings.json
MEAN_BUDGETS = (1.0, 2.0, 4.0)  # --budgets
SHARE = 0.5
STATIC_K = (2, 4)
STATIC_K_AFTER_READ = (2, 4)  # safest>=R@k; the allocation's own K-sets add 8
EPSILONS = (0.1, 0.2, 0.5)
MARGIN = 0.02  # the agreement reward's margin (search.reward.margin)


# ----------------------------------------------------------------------------------------------------------------
# Prompts

# Out of domain (role ood): benchmark -> (split, format, format options), the shipped config's eval entries
OOD = {
    "mmlu": ("test", "cloze", {"normalize": "chars"}),
    "gpqa": ("test", "cloze", {"normalize": "chars"}),
    "piqa": ("validation", "cloze", {"normalize": "chars"}),
    "gsm8k": ("test", "gsm8k", {"max_new_tokens": 64}),
    "aime": ("test", "boxed", {"max_new_tokens": 15}),
    "truthfulqa": ("validation", "qa", {"max_new_tokens": 16}),
    "squad": ("test", "qa", {"max_new_tokens": 16}),
}
FIT_GENERATION = ("dart", "train", "boxed", {"max_new_tokens": 15})  # role fitgen: the generation margins' fit


def role_format(benchmark: str):
    from drllm.formats.answers import get_format

    if benchmark in OOD:
        _, name, options = OOD[benchmark]
        return get_format(name, **options)
    if benchmark == FIT_GENERATION[0]:
        return get_format(FIT_GENERATION[2], **FIT_GENERATION[3])
    return get_format("cloze", normalize="chars")


def role_examples(role: str, sizes: dict) -> list:
    """(benchmark, example) pairs of a role: validation split into rank (first) and calib (the rest) by a seeded
    shuffle; eval from the test_eval halves. With calib_extra 'test', calib also takes every ARC test question
    that eval does not (test_search, and the test_eval items past eval's sample). ood: a seeded sample of each OOD
    benchmark; fitgen: DART training prompts (the generation margins' fit)."""
    from drllm.data.registry import load_benchmark

    if role in ("ood", "fitgen"):
        specs = ({name: spec[0] for name, spec in OOD.items()} if role == "ood"
                 else {FIT_GENERATION[0]: FIT_GENERATION[1]})
        count = sizes["ood"] if role == "ood" else sizes["fitgen"]
        pairs = []
        for name, split in specs.items():
            examples = load_benchmark(name, split)
            order = np.random.default_rng(2).permutation(len(examples))[:count]
            pairs += [(name, examples[i]) for i in sorted(order)]
        return [pairs[i] for i in np.random.default_rng(1).permutation(len(pairs))]
    rng = np.random.default_rng(0)
    pairs = []
    for name in ("arc_easy", "arc_challenge"):
        if role in ("rank", "calib"):
            examples = load_benchmark(name, "validation")
            order = rng.permutation(len(examples))
            cut = sizes[f"rank_{name}"]
            chosen = order[:cut] if role == "rank" else order[cut:cut + sizes[f"calib_{name}"]]
            pairs += [(name, examples[i]) for i in sorted(chosen)]
        else:
            examples = load_benchmark(name, "test_eval")
            order = rng.permutation(len(examples))
            pairs += [(name, examples[i]) for i in sorted(order[:sizes[f"eval_{name}"]])]
    if role == "calib" and sizes["calib_extra"] == "test":
        evaluated = {example.id for _, example in role_examples("eval", sizes)}  # never shared with eval
        for name in ("arc_easy", "arc_challenge"):
            pairs += [(name, e) for e in load_benchmark(name, "test_eval") if e.id not in evaluated]
            pairs += [(name, example) for example in load_benchmark(name, "test_search")]
    # a seeded order mixing the benchmarks, so a run stopped early leaves a random subset, not one benchmark
    return [pairs[i] for i in np.random.default_rng(1).permutation(len(pairs))]


# ----------------------------------------------------------------------------------------------------------------
# Per-prompt measurement

def rank_vocabulary(sizes: dict, tokenizer) -> list[int]:
    """Every token the rank prompts' options contain: the fixed normaliser of the `vocabulary` lens."""
    from drllm.formats.answers import get_format

    fmt = get_format("cloze")
    tokens = set()
    for _, example in role_examples("rank", sizes):
        tokens.update(fmt.encode(example, tokenizer).batch.targets.tolist())
    return sorted(tokens)


def reread(out: Path, worker: int, workers: int, sizes: dict, model_dir: str) -> None:
    """The reads again with the `vocabulary` lens (the rank prompts' option tokens), for every prompt measured."""
    import torch

    from drllm.core.executor import PathExecutor
    from drllm.core.models import load_model
    from drllm.formats.answers import get_format
    from drllm.routing.confidence import prefix_state, read_confidence

    torch.set_num_threads(1)
    model, tokenizer, _ = load_model(model_dir, device="cpu", dtype="float32")
    executor = PathExecutor(model)
    fmt = get_format("cloze", normalize="chars")
    vocabulary = torch.tensor(rank_vocabulary(sizes, tokenizer))
    done = {record["id"] for record in load(out, "reads")}
    with (out / f"reads-{worker}.jsonl").open("a") as sink:
        pairs = [pair for role in ("rank", "calib", "eval") for pair in role_examples(role, sizes)]
        for index, (_, example) in enumerate(pairs):
            if index % workers != worker or example.id in done:
                continue
            encoded = fmt.encode(example, tokenizer)
            state = prefix_state(executor, encoded, max(READ_LAYERS))
            reads = {}
            for layer in READ_LAYERS:
                read = read_confidence(executor, fmt, encoded, layer, "vocabulary", state=state, vocabulary=vocabulary)
                reads[str(layer)] = {"margin": read.margin, "cost": read.cost_blocks,
                                     "vocabulary": read.lens_vocabulary}
            sink.write(json.dumps({"id": example.id, "reads": reads}) + "\n")
            sink.flush()


def outcome_record(outcome) -> dict:
    """What the analysis reads of an outcome: the option and its scores (choice formats) or the answer text, and the
    metric's per-example value (`score`: 1/0, or token F1 for qa)."""
    record = {"choice": outcome.choice, "correct": bool(outcome.correct),
              "score": float(outcome.score if outcome.score is not None else outcome.correct)}
    if outcome.scores is not None:
        record["scores"] = list(outcome.scores)
    else:
        record["prediction"] = (outcome.prediction or "").strip()
    return record


def read_records(executor, fmt, encoded, state, full_lens: bool) -> dict:
    from drllm.routing.confidence import read_confidence

    reads = {}
    for layer in READ_LAYERS:
        read = read_confidence(executor, fmt, encoded, layer, "options", state=state)
        reads[str(layer)] = {"margin": read.margin, "saturation": read.saturation, "choice": read.choice,
                             "cost": read.cost_blocks, "vocabulary": read.lens_vocabulary}
        if full_lens and encoded.batch is not None:
            full = read_confidence(executor, fmt, encoded, layer, "full", state=state)
            reads[str(layer)] |= {"margin_full": full.margin, "cost_full": full.cost_blocks}
    return reads


def candidate_paths(num_layers: int, ranking: dict) -> dict[str, list[int]]:
    """Name -> skipped blocks, for every path a policy of the study can take."""
    from drllm.routing.allocation import safe_order, skips_for

    safety = ranking["safe_rate"]
    paths = {f"safest@{k}": safe_order(safety, 0)[:k] for k in STATIC_K}
    for layer in READ_LAYERS:
        order = safe_order(safety, layer)
        counts = set(STATIC_K_AFTER_READ) | {skips_for(b, SHARE, len(order)) for b in MEAN_BUDGETS}
        for k in sorted(counts):
            paths[f"ge{layer}@{k}"] = order[:k]
    return paths


def measure(role: str, out: Path, worker: int, workers: int, sizes: dict, model_dir: str, full_lens: int) -> None:
    import torch

    from drllm.core.executor import PathExecutor
    from drllm.core.models import load_model
    from drllm.routing.confidence import prefix_state
    from drllm.search.rewards import PathRewarder
    from drllm.search.safety import skip_path

    torch.set_num_threads(1)
    model, tokenizer, _ = load_model(model_dir, device="cpu", dtype="float32")
    executor = PathExecutor(model)
    num_layers = executor.num_layers
    paths, layer, family = {}, READ_LAYERS[-1], {}
    if role not in ("rank", "fitgen"):
        ranking = json.loads((out / "ranking.json").read_text())
        paths = candidate_paths(num_layers, ranking)
        family = families(ranking, {"choices": load(out, "rank"), "generate": load(out, "fitgen")}, layer)
        if role == "ood" and "generate" not in family:
            raise SystemExit("role ood needs the fitgen role's reads first (the generation margins' fit)")
    pairs = role_examples(role, sizes)
    target = out / f"{role}-{worker}.jsonl"
    done = {record["id"] for record in load(out, role)}  # any worker's: the split may have changed since
    started, count = time.time(), 0
    with target.open("a") as sink:
        for index, (benchmark, example) in enumerate(pairs):
            if index % workers != worker or example.id in done:
                continue
            fmt = role_format(benchmark)
            encoded = fmt.encode(example, tokenizer, chat_template=True)
            record = {"id": example.id, "benchmark": benchmark, "role": role, "gold": example.gold_index,
                      "kind": encoded.kind}
            if encoded.kind != "choices":
                # generation: every path resumes from one run of blocks 0..R-1 (the run the read takes)
                state = prefix_state(executor, encoded, min(READ_LAYERS))
                record["reads"] = read_records(executor, fmt, encoded, state, False)
                if role != "fitgen":
                    outcomes, needed = {}, needed_paths(record, family, layer, role)
                    for name, skipped in paths.items():
                        if needed is not None and name not in needed:
                            continue
                        key = tuple(skipped)
                        if key not in outcomes:
                            path = skip_path(num_layers, skipped)
                            resume = min(READ_LAYERS) if all(s >= min(READ_LAYERS) for s in skipped) else 0
                            outcomes[key] = outcome_record(fmt.evaluate(
                                executor, encoded, path, resume=state if resume else None, resume_step=resume)[0])
                        record.setdefault("paths", {})[name] = outcomes[key]
                    record["base"] = outcome_record(fmt.evaluate(executor, encoded, executor.default_path(),
                                                                 resume=state, resume_step=min(READ_LAYERS))[0])
            else:
                rewarder = PathRewarder(executor, fmt, encoded, cache_size=8)
                default = executor.default_path()
                base = rewarder.outcome(default)
                state = rewarder.states[tuple(default)]
                record |= {"base": outcome_record(base),
                           "reads": read_records(executor, fmt, encoded, state, full_lens > 0 and index < full_lens)}
                if role == "rank":
                    skips = {}
                    for layer in reversed(range(num_layers)):
                        skips[str(layer)] = outcome_record(rewarder.outcome(skip_path(num_layers, [layer])))
                    record["skips"] = skips
                elif role != "fitgen":
                    # later first edits first: each resumes from the full run or a run sharing more of its prefix
                    needed = needed_paths(record, family, layer, role)
                    ordered = sorted(((name, skipped) for name, skipped in paths.items()
                                      if needed is None or name in needed), key=lambda item: -min(item[1]))
                    record["paths"] = {name: outcome_record(rewarder.outcome(skip_path(num_layers, skipped)))
                                       for name, skipped in ordered}
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            count += 1
            if count % 20 == 0:
                print(f"{role}-{worker}: {count} prompts, {(time.time() - started) / count:.2f} s each",
                      file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Offline analysis

def load(out: Path, role: str) -> list[dict]:
    records = {}
    for file in sorted(out.glob(f"{role}-*.jsonl")):
        for line in file.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["id"]] = record
    return [records[key] for key in sorted(records)]


CHOICES = SimpleNamespace(kind="choices", format="cloze")  # what the reward reads of an encoded cloze prompt


def as_outcome(record: dict):
    from drllm.formats.grading import Outcome

    return Outcome(correct=record["correct"], prediction="", layer_applications=0, new_tokens=0,
                   choice=record["choice"], scores=tuple(record["scores"]))


def agrees(outcome: dict, base: dict, margin: float, epsilon: float | None) -> bool:
    """The search's agreement reward (drllm.search.rewards.agrees) on recorded outcomes."""
    from drllm.search.rewards import agrees as reward_agrees

    return reward_agrees(as_outcome(outcome), as_outcome(base), CHOICES, margin, min_f1=0.5,
                         epsilon=math.inf if epsilon is None else epsilon)


def final_margin(record: dict) -> float:
    from drllm.search.rewards import choice_margin

    return choice_margin(record["base"]["scores"], record["base"]["choice"])


def build_ranking(rank: list[dict], num_layers: int) -> dict:
    safe = np.zeros(num_layers)
    for record in rank:
        for layer in range(num_layers):
            safe[layer] += agrees(record["skips"][str(layer)], record["base"], MARGIN, None)
    return {"safe_rate": (safe / max(1, len(rank))).tolist(), "prompts": len(rank), "reward": "agreement",
            "margin": MARGIN}


def epsilon_table(rank: list[dict], num_layers: int) -> list[dict]:
    rows = []
    for epsilon in (None,) + EPSILONS:
        rates = [float(np.mean([agrees(r["skips"][str(layer)], r["base"], MARGIN, epsilon) for r in rank]))
                 for layer in range(num_layers)]
        rows.append({"epsilon": epsilon, "rates": rates})
    return rows


def policy_outcome(record: dict, name: str | None) -> dict:
    return record["base"] if name is None else record["paths"][name]


def same_answer(outcome: dict, base: dict) -> bool:
    """The option for choice formats, the answer text for generation (drllm.calibration.calibration.same_answer)."""
    if "scores" in base:
        return outcome["choice"] == base["choice"]
    return outcome["prediction"] == base["prediction"]


def value(outcome: dict) -> float:
    """The metric's per-example value: 1/0, or token F1 for qa."""
    return float(outcome.get("score", outcome["correct"]))


def evaluate_policy(records: list[dict], choose) -> dict:
    """choose(record) -> (path name or None, skips, read cost): agreement, accuracy, mean net saving."""
    agree, correct, saved, base_correct, costs = [], [], [], [], []
    for record in records:
        name, skips, cost = choose(record)
        outcome = policy_outcome(record, name)
        agree.append(float(same_answer(outcome, record["base"])))
        correct.append(value(outcome))
        base_correct.append(value(record["base"]))
        saved.append(skips - cost)
        costs.append(cost)
    return {"agree": np.array(agree), "correct": np.array(correct), "base_correct": np.array(base_correct),
            "saved": float(np.mean(saved)), "cost": float(np.mean(costs)), "n": len(records)}


def families(ranking: dict, fits: dict[str, list[dict]], layer: int, key: str = "margin") -> dict:
    """Per prompt kind, the allocation points at read layer R (drllm.routing.allocation.allocation_family), each
    kind's thresholds fitted on its own fitting prompts: the rank prompts for choices, fitgen's for generation."""
    from drllm.routing.allocation import allocation_family, safe_order

    available = len(safe_order(ranking["safe_rate"], layer))
    result = {}
    for kind, fit in fits.items():
        if fit and all(key in r["reads"][str(layer)] for r in fit):
            margins = [r["reads"][str(layer)][key] for r in fit]
            result[kind] = allocation_family(margins, MEAN_BUDGETS, SHARE, available)
    return result


def record_kind(record: dict) -> str:
    return record.get("kind", "choices")


def needed_paths(record: dict, family: dict, layer: int, role: str) -> set[str] | None:
    """The candidate paths a prompt's policies can take (None: all of them). calib needs only the allocation's
    paths; ood also the static baselines; eval and rank everything (the ceiling splits by the final margin)."""
    if role not in ("calib", "ood"):
        return None
    margin = record["reads"][str(layer)]["margin"]
    names = {f"ge{layer}@{point.budget(margin)}" for point in family.get(record_kind(record), [])
             if point.budget(margin) > 0}
    if role == "ood":
        names |= {f"safest@{k}" for k in STATIC_K}
    return names


def policies(ranking: dict, fits: dict[str, list[dict]], num_layers: int) -> dict:
    """Name -> choose(record), with the thresholds fitted per prompt kind (`families`)."""
    from drllm.routing.allocation import allocation_family, safe_order

    result = {"base": lambda r: (None, 0, 0.0)}
    for k in STATIC_K:
        result[f"safest@{k}"] = (lambda k: lambda r: (f"safest@{k}", k, 0.0))(k)
    for layer in READ_LAYERS:
        for k in STATIC_K_AFTER_READ:
            result[f"safest>={layer}@{k}"] = (lambda n: lambda r: (n, int(n.rsplit("@", 1)[1]), 0.0))(
                f"ge{layer}@{k}")
        for lens, key in LENS_KEYS.items():
            by_kind = families(ranking, fits, layer, key)
            if "choices" not in by_kind:
                continue
            for index, point in enumerate(by_kind["choices"]):
                def choose(r, index=index, layer=layer, key=key, cost=COST_KEYS[lens], by_kind=by_kind):
                    read = r["reads"][str(layer)]
                    points = by_kind.get(record_kind(r))
                    skips = points[index].budget(read[key]) if points and key in read else 0
                    return (f"ge{layer}@{skips}" if skips else None), skips, read[cost]
                result[f"sure-{lens}(R={layer})@{point.mean_budget:g}"] = choose
    finals = [final_margin(r) for r in fits["choices"]]
    available = len(safe_order(ranking["safe_rate"], READ_LAYERS[-1]))
    for point in allocation_family(finals, MEAN_BUDGETS, SHARE, available):
        def ceiling(r, point=point):
            skips = point.budget(final_margin(r))
            return (f"ge{READ_LAYERS[-1]}@{skips}" if skips else None), skips, 0.0
        result[f"ceiling(R={READ_LAYERS[-1]})@{point.mean_budget:g}"] = ceiling
    return result


LENS_KEYS = {"options": "margin", "vocabulary": "margin_vocab"}  # lens -> its margin's key in a record's reads
COST_KEYS = {"options": "cost", "vocabulary": "cost_vocab"}


def merge_rereads(out: Path, records: list[dict]) -> None:
    """Add the `vocabulary` lens reads (reread) to the records' reads, where measured."""
    rereads = {r["id"]: r["reads"] for r in load(out, "reads")}
    for record in records:
        for layer, read in rereads.get(record["id"], {}).items():
            record["reads"][layer] |= {"margin_vocab": read["margin"], "cost_vocab": read["cost"],
                                       "vocabulary_size": read["vocabulary"]}


def flips(records: list[dict], choose) -> dict:
    """What an accuracy drop nets: the share of prompts a policy turns from right to wrong (losses) and from wrong
    to right (gains), and the full model's accuracy on the prompts it skips against the rest."""
    skipped, kept, losses, gains = [], [], 0, 0
    for record in records:
        name, _, _ = choose(record)
        base, outcome = record["base"], policy_outcome(record, name)
        (skipped if name else kept).append(value(base))
        losses += value(base) > value(outcome)
        gains += value(base) < value(outcome)
    n = max(1, len(records))
    return {"losses": losses / n, "gains": gains / n, "skipped": len(skipped) / n,
            "skipped_accuracy": float(np.mean(skipped)) if skipped else float("nan"),
            "kept_accuracy": float(np.mean(kept)) if kept else float("nan")}


def flip_lines(sets: dict[str, list[dict]], chosen: dict) -> list[str]:
    """The flips table: the allocation (each read layer, options lens) and, held out, the ceiling and safest@k."""
    lines = ["## What the accuracy drop nets: right-to-wrong minus wrong-to-right (share of prompts, points)", "",
             "| prompts | policy | skipped share | full model's accuracy: skipped / the rest | right -> wrong | "
             "wrong -> right | drop |", "|---|---|---|---|---|---|---|"]
    for set_name, records in sets.items():
        names = [name for name in chosen if name.startswith("sure-options")]
        if set_name == "eval":  # every candidate path was run on the held-out prompts only
            names += [name for name in chosen if name.startswith(("ceiling", "safest@"))]
        for name in names:
            f = flips(records, chosen[name])
            rest = "–" if math.isnan(f["kept_accuracy"]) else f"{100 * f['kept_accuracy']:.1f}"
            lines.append(f"| {set_name} (n={len(records)}) | {name} | {f['skipped']:.2f} | "
                         f"{100 * f['skipped_accuracy']:.1f} / {rest} | "
                         f"{100 * f['losses']:.2f} | {100 * f['gains']:.2f} | "
                         f"{100 * (f['losses'] - f['gains']):+.2f} |")
    return lines + [""]


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def report(out: Path, epsilon: float, delta: float) -> None:
    from drllm.evaluation.metrics import paired_bootstrap_delta
    from drllm.calibration.certify import CertifyConfig, certify, upper_bound

    rank, calib, held = load(out, "rank"), load(out, "calib"), load(out, "eval")
    merge_rereads(out, rank + calib + held)
    num_layers = len(rank[0]["skips"])
    ranking = json.loads((out / "ranking.json").read_text())
    fitgen, ood = load(out, "fitgen"), load(out, "ood")
    chosen = policies(ranking, {"choices": rank, "generate": fitgen}, num_layers)
    lines = [f"# Study 4: rank {len(rank)}, calib {len(calib)}, eval {len(held)}, ood {len(ood)}, fitgen "
             f"{len(fitgen)} prompts; read layers {list(READ_LAYERS)}, mean budgets {list(MEAN_BUDGETS)}", ""]

    lines += ["## Early read against the final margin (Spearman)", "", "| read | rank+calib+eval | vs full lens |",
              "|---|---|---|"]
    everything = rank + calib + held
    for layer in READ_LAYERS:
        key = str(layer)
        lens = [r["reads"][key]["margin"] for r in everything]
        full = [r for r in everything if "margin_full" in r["reads"][key]]
        versus = (f"{spearman([r['reads'][key]['margin'] for r in full], [r['reads'][key]['margin_full'] for r in full]):.3f}"
                  f" (n={len(full)}; full lens vs final {spearman([r['reads'][key]['margin_full'] for r in full], [final_margin(r) for r in full]):.3f})"
                  if len(full) > 2 else "-")
        cost = np.mean([r["reads"][key]["cost"] for r in everything])
        lines.append(f"| lens R={layer} (each prompt's option tokens, {cost:.4f} block-eq.) | "
                     f"{spearman(lens, [final_margin(r) for r in everything]):.3f} | {versus} |")
        reread = [r for r in everything if "margin_vocab" in r["reads"][key]]
        if reread:
            size = int(np.mean([r["reads"][key]["vocabulary_size"] for r in reread]))
            cost = np.mean([r["reads"][key]["cost_vocab"] for r in reread])
            with_full = [r for r in reread if "margin_full" in r["reads"][key]]
            versus = (f"{spearman([r['reads'][key]['margin_vocab'] for r in with_full], [r['reads'][key]['margin_full'] for r in with_full]):.3f}"
                      if len(with_full) > 2 else "-")
            lines.append(f"| lens R={layer} (the rank prompts' option tokens, ~{size} tokens, {cost:.4f} block-eq.) | "
                         f"{spearman([r['reads'][key]['margin_vocab'] for r in reread], [final_margin(r) for r in reread]):.3f}"
                         f" (n={len(reread)}) | {versus} |")
    lines.append("")

    rows, results = [], {}
    for name, choose in chosen.items():
        results[("eval", name)] = evaluate_policy(held, choose)
        if name.startswith("sure-") or name == "base":  # calib holds the allocation's paths only
            results[("calib", name)] = evaluate_policy(calib, choose)
    lines += ["## Held-out ARC test (eval): policies at their net saving", "",
              "| policy | net layers saved | read cost | agreement | accuracy | delta vs base (95% CI) |",
              "|---|---|---|---|---|---|"]
    for name in chosen:
        r = results[("eval", name)]
        d = paired_bootstrap_delta(r["correct"], r["base_correct"], seed=0)
        rows.append({"policy": name, "split": "eval", "saved": r["saved"], "cost": r["cost"],
                     "agreement": float(r["agree"].mean()), "accuracy": float(r["correct"].mean())})
        lines.append(f"| {name} | {r['saved']:.2f} | {r['cost']:.3f} | {r['agree'].mean():.3f} | "
                     f"{100 * r['correct'].mean():.1f} | {100 * d[0]:+.1f} ({100 * d[1]:+.1f}, {100 * d[2]:+.1f}) |")
    lines.append("")

    lines += ["## Agreement at equal budget: allocation minus safest@k (eval, paired 95% CI)", "",
              "| mean budget | read layer | sure - safest@k | sure - safest>=R@k | ceiling - safest@k |", "|---|---|---|---|---|"]
    for b in MEAN_BUDGETS:
        if b != int(b) or int(b) not in STATIC_K:
            continue
        for layer, lens in ((layer, lens) for layer in READ_LAYERS for lens in LENS_KEYS):
            if ("eval", f"sure-{lens}(R={layer})@{b:g}") not in results:
                continue
            sure = results[("eval", f"sure-{lens}(R={layer})@{b:g}")]
            static = results[("eval", f"safest@{int(b)}")]
            static_r = results.get(("eval", f"safest>={layer}@{int(b)}"), static)
            ceil = results[("eval", f"ceiling(R={READ_LAYERS[-1]})@{b:g}")]
            cells = []
            for other, mine in ((static, sure), (static_r, sure), (static, ceil)):
                d = paired_bootstrap_delta(mine["agree"], other["agree"], seed=0)
                cells.append(f"{100 * d[0]:+.1f} ({100 * d[1]:+.1f}, {100 * d[2]:+.1f})")
            lines.append(f"| {b:g} | {layer}, {lens} lens | " + " | ".join(cells) + " |")
    lines.append("")

    config = CertifyConfig(epsilon=epsilon, delta=delta, loss="accuracy_drop")
    lines += [f"## Certified (Learn-then-Test on calib, accuracy drop <= {100 * epsilon:g} point(s), delta {delta:g})",
              ""]
    certificates = {}
    for layer, lens in ((layer, lens) for layer in READ_LAYERS for lens in LENS_KEYS):
        family = [name for name in chosen if name.startswith(f"sure-{lens}(R={layer})@")]
        if not family:
            continue
        points = []
        for name in family:
            r = results[("calib", name)]
            points.append((float(name.rsplit("@", 1)[1]), (r["base_correct"] - r["correct"]).tolist(), r["saved"]))
        certificate = certify(points, config)
        certificates[(layer, lens)] = certificate
        tested = "; ".join(f"b={p.parameter:g}: drop {100 * p.risk:+.2f} pts, p {p.p_value:.3f}"
                           for p in certificate.points)
        lines.append(f"- R={layer}, {lens} lens, calibration: {tested}")
        picked = certificate.parameter
        if picked is None:
            lines.append(f"- R={layer}, {lens} lens: refused ({certificate.reason if hasattr(certificate, 'reason') else 'no point'}); "
                         f"the base model")
            continue
        r = results[("eval", f"sure-{lens}(R={layer})@{picked:g}")]
        d = paired_bootstrap_delta(r["correct"], r["base_correct"], seed=0)
        c = results[("calib", f"sure-{lens}(R={layer})@{picked:g}")]
        bound = upper_bound((c["base_correct"] - c["correct"]).tolist(), config)
        observed = float(r["base_correct"].mean() - r["correct"].mean())
        lines.append(f"- R={layer}, {lens} lens: mean budget {picked:g} certified (calib n={c['n']}, drop "
                     f"{100 * (c['base_correct'].mean() - c['correct'].mean()):.2f} points, net {c['saved']:.2f} "
                     f"layers saved; upper bound on its risk {100 * bound:.2f} points). Held-out: net "
                     f"{r['saved']:.2f} layers saved, accuracy delta {100 * d[0]:+.1f} ({100 * d[1]:+.1f}, "
                     f"{100 * d[2]:+.1f}), observed drop {100 * observed:+.2f} points "
                     f"({'inside' if observed <= epsilon else 'OUTSIDE'} epsilon {100 * epsilon:g}), "
                     f"agreement {r['agree'].mean():.3f}")
        for benchmark in ("arc_easy", "arc_challenge"):
            part = [x for x in held if x["benchmark"] == benchmark]
            if part:
                rb = evaluate_policy(part, chosen[f"sure-{lens}(R={layer})@{picked:g}"])
                lines.append(f"  - {benchmark} (n={rb['n']}): drop "
                             f"{100 * (rb['base_correct'].mean() - rb['correct'].mean()):+.2f} points, net "
                             f"{rb['saved']:.2f} layers saved")
    lines.append("")
    lines += flip_lines({"calib": calib, "eval": held}, chosen)
    if ood:
        lines += ood_section(ood, chosen, certificates, {record_kind(r) for r in calib})
    lines.append("")

    lines += ["## An epsilon condition on the agreement reward: single-skip safe rate per block (rank prompts)", "",
              "| epsilon | " + " | ".join(str(layer) for layer in range(num_layers)) + " | mean |",
              "|---|" + "---|" * (num_layers + 1)]
    for row in epsilon_table(rank, num_layers):
        label = "none" if row["epsilon"] is None else f"{row['epsilon']:g}"
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in row["rates"]) + f" | {np.mean(row['rates']):.3f} |")
    lines.append("")
    (out / "study4.md").write_text("\n".join(lines) + "\n")
    (out / "study4.json").write_text(json.dumps({"rows": rows, "ranking": ranking}, indent=1))
    figure(out, results, chosen, certificates, epsilon)
    print("\n".join(lines))


def ood_section(ood: list[dict], chosen: dict, certificates: dict, covered: set[str]) -> list[str]:
    """Per OOD benchmark: each allocation point and the static removal at equal compute against the full model;
    then the certified point as `sure@certified` applies it: only to the kinds of prompt its calibration prompts
    were (`covered`), the others run the full model."""
    from drllm.evaluation.metrics import paired_bootstrap_delta

    layer = READ_LAYERS[-1]
    picked = certificates.get((layer, "options"))
    certified = picked.parameter if picked is not None and picked.certified else None
    names = [f"sure-options(R={layer})@{b:g}" for b in MEAN_BUDGETS] + [f"safest@{k}" for k in STATIC_K]
    chosen = dict(chosen)
    if certified is not None:
        at_certified = chosen[f"sure-options(R={layer})@{certified:g}"]
        name = f"certified b={certified:g}, {'/'.join(sorted(covered))} prompts only"
        chosen[name] = lambda r: at_certified(r) if record_kind(r) in covered else (None, 0, 0.0)
        names.append(name)
    lines = [f"## Out of domain: metric change against the full model, points (paired 95% CI); agreement; net "
             f"layers saved (generation thresholds fitted on {FIT_GENERATION[0]} {FIT_GENERATION[1]} prompts)", "",
             "| benchmark | n | base | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    deltas: dict[str, list[float]] = {name: [] for name in names}
    for benchmark in OOD:
        part = [r for r in ood if r["benchmark"] == benchmark]
        if not part:
            continue
        cells = []
        for name in names:
            r = evaluate_policy(part, chosen[name])
            d = paired_bootstrap_delta(r["correct"], r["base_correct"], seed=0)
            deltas[name].append(d[0])
            cells.append(f"{100 * d[0]:+.1f} ({100 * d[1]:+.1f}, {100 * d[2]:+.1f}); {r['agree'].mean():.2f}; "
                         f"{r['saved']:.2f}")
        base = evaluate_policy(part, chosen["base"])
        lines.append(f"| {benchmark} | {len(part)} | {100 * base['correct'].mean():.1f} | " + " | ".join(cells) + " |")
    lines.append("| mean over benchmarks | | | " + " | ".join(
        f"{100 * np.mean(deltas[name]):+.2f}" if deltas[name] else "-" for name in names) + " |")
    lines += ["", f"The certified point (R={layer}, options lens) is b = "
              f"{'none (refused)' if certified is None else f'{certified:g}'}.", ""]
    return lines


def figure(out: Path, results: dict, chosen: dict, certificates: dict, epsilon: float) -> None:
    """Agreement against net layers saved on the held-out prompts, each certified allocation's point starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[str, list] = {}
    for name in chosen:
        line = name.rsplit("@", 1)[0] if "@" in name else name
        r = results[("eval", name)]
        lines.setdefault(line, []).append((r["saved"], r["agree"].mean()))
    for line, points in lines.items():
        points.sort()
        xs, ys = zip(*points)
        style = ":" if line.startswith("ceiling") else "-"
        ax.plot(xs, ys, style, marker="o", label=line + (" (upper bound)" if line.startswith("ceiling") else ""))
    for (layer, lens), certificate in certificates.items():
        if certificate.parameter is None:
            continue
        r = results[("eval", f"sure-{lens}(R={layer})@{certificate.parameter:g}")]
        ax.plot([r["saved"]], [r["agree"].mean()], "*", color="black", markersize=14, zorder=5,
                label=f"certified: sure-{lens}(R={layer})@{certificate.parameter:g} "
                      f"(drop <= {100 * epsilon:g} pt)")
    ax.set_xlabel("layers saved per prompt (net of the read)")
    ax.set_ylabel("agreement with the full model")
    ax.set_title("ARC test (held out), SmolLM2-135M, cloze")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "study4_frontier.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "rank", "reread", "report"],
                        help="run: measure one role's prompts; rank: the ranking from the rank role; report")
    parser.add_argument("--out", required=True)
    parser.add_argument("--role", choices=["rank", "calib", "eval", "ood", "fitgen"])
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--rank-arc-easy", type=int, default=100)
    parser.add_argument("--rank-arc-challenge", type=int, default=50)
    parser.add_argument("--calib-arc-easy", type=int, default=330)
    parser.add_argument("--calib-arc-challenge", type=int, default=190)
    parser.add_argument("--eval-arc-easy", type=int, default=500)
    parser.add_argument("--eval-arc-challenge", type=int, default=500)
    parser.add_argument("--calib-extra", choices=["none", "test"], default="none",
                        help="test: calib also takes every ARC test question eval does not")
    parser.add_argument("--ood", type=int, default=100, help="items per OOD benchmark (role ood)")
    parser.add_argument("--fitgen", type=int, default=100, help="DART prompts the generation margins are fit on")
    parser.add_argument("--read-layers", default="8,12", help="read layers R, comma-separated")
    parser.add_argument("--budgets", default="1,2,4", help="mean skip budgets b, comma-separated")
    parser.add_argument("--full-lens", type=int, default=60, help="also read the full-vocabulary lens on the first N")
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--delta", type=float, default=0.1)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"rank_arc_easy": args.rank_arc_easy, "rank_arc_challenge": args.rank_arc_challenge,
             "calib_arc_easy": args.calib_arc_easy, "calib_arc_challenge": args.calib_arc_challenge,
             "eval_arc_easy": args.eval_arc_easy, "eval_arc_challenge": args.eval_arc_challenge,
             "calib_extra": args.calib_extra, "ood": args.ood, "fitgen": args.fitgen}
    settings = {"read_layers": [int(v) for v in args.read_layers.split(",")],
                "budgets": [float(v) for v in args.budgets.split(",")]} | sizes
    settings_file = out / "settings.json"
    if settings_file.exists():  # every role and the report must use the run's settings
        kept = json.loads(settings_file.read_text())
        if kept != settings:
            parser.error(f"{settings_file} holds other settings: {kept}; pass the same ones or use another --out")
    else:
        settings_file.write_text(json.dumps(settings, indent=1))
    global READ_LAYERS, MEAN_BUDGETS
    READ_LAYERS, MEAN_BUDGETS = tuple(settings["read_layers"]), tuple(settings["budgets"])
    if args.action == "run":
        if args.role is None:
            parser.error("run needs --role")
        measure(args.role, out, args.worker, args.workers, sizes, args.model_dir, args.full_lens)
    elif args.action == "reread":
        reread(out, args.worker, args.workers, sizes, args.model_dir)
    elif args.action == "rank":
        rank = load(out, "rank")
        if not rank:
            parser.error(f"no rank records under {out}")
        ranking = build_ranking(rank, len(rank[0]["skips"]))
        tmp = out / "ranking.json.tmp"
        tmp.write_text(json.dumps(ranking, indent=1))
        os.replace(tmp, out / "ranking.json")
        print(json.dumps(ranking))
    else:
        report(out, args.epsilon, args.delta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
