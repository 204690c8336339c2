"""The allocation stage, from files to the written allocation JSON: `run_allocation(AllocationRequest)`.
workflow/scripts/allocate.py parses the command line into an AllocationRequest; rules/allocate.smk gives one per
model.

1. The order: blocks at or after the read layer R, safest first by the search's single-skip sweep
   (`layer_safety.parquet`: the share of swept prompts on which skipping the block alone kept the answer).
2. The fit: the confidence read at R (drllm.routing.confidence) on every search prompt. Each mean budget's margin
   threshold is fitted there, per kind of prompt (choice and generation margins are on different scales), so the
   family of points is fixed before any calibration prompt is seen.
3. The curve and the certificate: the calibration sets (the `calibrate:` block's held-out prompts) run at every mean
   budget; Learn-then-Test walks the budgets from the smallest and `sure@certified` takes the largest certified one
   (drllm.calibration.certify). Savings are net of the read's cost. The certificate covers the kinds of prompt
   (choice, generation) the calibration sets hold (`certified.kinds`): `sure@certified` runs the full model on a
   prompt of another kind, since nothing measured how its skips fare.

The written JSON is what `sure@<b>` and `sure@certified` read (drllm.evaluation.policies.sure_policy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from drllm.core.artifacts import ArtifactError, read_json, write_json
from drllm.core.executor import PathExecutor
from drllm.core.models import chat_template_for, load_model, read_manifest
from drllm.data.entries import sample_examples
from drllm.data.examples import read_examples
from drllm.evaluation.baselines import read_influence
from drllm.formats.answers import get_format
from drllm.routing.allocation import AllocationPoint, allocation_path, fit_threshold, safe_order, skips_for
from drllm.routing.allocation_settings import AllocationConfig
from drllm.calibration.calibration import PointLosses, certificate_line, curve_point, curve_records, same_answer
from drllm.calibration.calibration_stage import calibration_config, held_out
from drllm.calibration.certify import certify, upper_bound
from drllm.routing.confidence import check_read_layer, prefix_state, read_confidence
from drllm.search.prompts import PromptEncoding, encode_prompt_row, read_prompts

BUDGET = "budget"  # the curve's axis: the mean skip budget b


@dataclass(frozen=True)
class AllocationRequest:
    model_dir: str
    safety: str                    # the search's layer_safety.parquet
    prompts: tuple[str, ...]       # the search's prompt sets: the read is fitted on them
    data: dict[str, str]           # calibration set name -> its records Parquet
    config: dict                   # the allocate: block
    calibration: dict              # the calibrate: block (sets, seed, certify) with formats and chat_template
    encoding: dict                 # the search's formats and chat_template (how its prompts were encoded)
    out: str
    device: str = "auto"
    dtype: str = "auto"


class Allocation:
    """An allocation JSON read back: the order, the fitted margins per prompt kind, and the points."""

    def __init__(self, record: dict, path: str = "allocation file"):
        try:
            self.read_layer = int(record["read_layer"])
            self.lens = str(record["lens"])
            self.share = float(record["share"])
            self.order = [int(layer) for layer in record["order"]]
            self.fit = {kind: [float(m) for m in margins] for kind, margins in record["fit_margins"].items()}
            self.certified = record.get("certified")
            # files written before `kinds` was recorded: the certificate applied to every fitted kind
            self.certified_kinds = set((self.certified or {}).get("kinds", self.fit))
            self.num_layers = int(record["num_layers"])
            vocabulary = record.get("lens_vocabulary")
            self.vocabulary = None if vocabulary is None else torch.tensor([int(t) for t in vocabulary])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: not an allocation file (missing or malformed {exc})") from exc

    @classmethod
    def read(cls, path) -> "Allocation":
        return cls(read_json(path, "allocation file"), str(path))

    def point(self, mean_budget: float) -> dict[str, AllocationPoint]:
        """Per prompt kind, the point of this mean budget (thresholds from the fitted margins)."""
        skips = skips_for(mean_budget, self.share, len(self.order))
        return {kind: AllocationPoint(mean_budget, skips, fit_threshold(margins, mean_budget, skips))
                for kind, margins in self.fit.items()}

    def certified_points(self) -> dict[str, AllocationPoint]:
        """sure@certified's points: the certified budget's, for the kinds the certificate covers only."""
        budget = self.certified_budget()
        if budget is None:
            return {}
        return {kind: point for kind, point in self.point(budget).items() if kind in self.certified_kinds}

    def skips(self, points: dict[str, AllocationPoint], kind: str, margin: float) -> int:
        """A prompt's skips; a kind no search prompt had gets none (nothing was fitted for its margin's scale)."""
        return points[kind].budget(margin) if kind in points else 0

    def certified_budget(self) -> float | None:
        if not self.certified or not self.certified.get("certified"):
            return None
        return float(self.certified["mean_budget"])


def _fit_margins(executor, tokenizer, rows: list[dict], encoding: PromptEncoding, chat_template: bool,
                 config: AllocationConfig) -> tuple[dict[str, list[float]], list[int] | None]:
    """The read on every fitting prompt, per prompt kind, and the `vocabulary` lens's token set (every token the
    fitting prompts' options contain; None for the other lenses)."""
    encoded_rows = [encode_prompt_row(row, tokenizer, encoding.formats, chat_template) for row in rows]
    vocabulary = None
    if config.lens == "vocabulary":
        tokens = {t for _, encoded in encoded_rows if encoded.batch is not None
                  for t in encoded.batch.targets.tolist()}
        if not tokens:
            raise ArtifactError("allocate.lens 'vocabulary' takes its tokens from the options of the search's "
                                "choice prompts, and the search has none")
        vocabulary = sorted(tokens)
    margins: dict[str, list[float]] = {}
    for answer_format, encoded in encoded_rows:
        read = read_confidence(executor, answer_format, encoded, config.read_layer, config.lens,
                               vocabulary=None if vocabulary is None else torch.tensor(vocabulary))
        margins.setdefault(encoded.kind, []).append(read.margin)
    return {kind: sorted(values) for kind, values in margins.items()}, vocabulary


def allocation_curve(executor, tokenizer, allocation: Allocation, budgets, sets, chat_template: bool):
    """Every calibration prompt at every mean budget (and the base model): the curve per set, the losses per
    budget pooled over the sets (for Learn-then-Test), the mean read cost and the kinds of prompt seen."""
    num_layers = executor.num_layers
    points = {budget: allocation.point(budget) for budget in budgets}
    curve, pooled, costs, kinds = [], {b: PointLosses([], [], []) for b in budgets}, [], set()
    for calibration_set, examples in sets:
        answer_format = get_format(calibration_set.format, **calibration_set.options)
        per_budget = {b: ([], [], [], []) for b in budgets}  # scores, lengths, agree, net saved
        base_scores = []
        for example in examples:
            encoded = answer_format.encode(example, tokenizer, chat_template=chat_template)
            kinds.add(encoded.kind)
            state = prefix_state(executor, encoded, allocation.read_layer)
            read = read_confidence(executor, answer_format, encoded, allocation.read_layer, allocation.lens,
                                   state=state, vocabulary=allocation.vocabulary)
            costs.append(read.cost_blocks)
            outcomes = {}

            def outcome(skips: int):
                if skips not in outcomes:
                    path = allocation_path(num_layers, allocation.order, skips)
                    outcomes[skips] = answer_format.evaluate(executor, encoded, path, resume=state,
                                                             resume_step=allocation.read_layer)[0]
                return outcomes[skips]

            base = outcome(0)
            base_scores.append(base.score)
            for budget in budgets:
                skips = allocation.skips(points[budget], encoded.kind, read.margin)
                routed = outcome(skips)
                scores, lengths, agree, saved = per_budget[budget]
                scores.append(routed.score)
                lengths.append(num_layers - skips)
                agree.append(same_answer(routed, base))
                saved.append(skips - read.cost_blocks)
                pooled[budget].disagreement.append(0.0 if agree[-1] else 1.0)
                pooled[budget].accuracy_drop.append(base.score - routed.score)
                pooled[budget].saved.append(saved[-1])
        for budget in budgets:
            scores, lengths, agree, _ = per_budget[budget]
            curve.append(curve_point(calibration_set.name, budget, scores, base_scores, lengths, num_layers,
                                     BUDGET, agree))
    return curve, pooled, float(np.mean(costs)) if costs else 0.0, sorted(kinds)


def certify_budget(pooled: dict[float, PointLosses], config) -> dict:
    """Learn-then-Test over the budgets, smallest first; the certified budget as the allocation JSON records it."""
    order = sorted(pooled)
    sequence = [(b, pooled[b].losses(config.loss), float(np.mean(pooled[b].saved))) for b in order]
    certificate = certify(sequence, config)
    chosen = float(certificate.parameter) if certificate.certified else None
    losses = pooled[chosen].losses(config.loss) if chosen is not None else None
    return {"mean_budget": chosen, "certified": certificate.certified,
            "point": f"b={chosen:g}" if chosen is not None else "base",
            "mean_layers_saved": float(np.mean(pooled[chosen].saved)) if chosen is not None else 0.0,
            "risk_bound": upper_bound(losses, config) if losses is not None else 0.0,
            "certificate": certificate.to_dict(), "epsilon_auto": config.epsilon is None}


def run_allocation(request: AllocationRequest, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit, calibrate and certify the allocation; write the JSON; returns what was written."""
    config = AllocationConfig.from_dict(request.config)
    calibration = calibration_config(request.calibration)
    encoding = PromptEncoding.from_dict(request.encoding)
    missing = sorted({s.name for s in calibration.sets} - set(request.data))
    if missing:
        raise ValueError(f"--data has no records file for calibration set(s) {missing}")
    manifest = read_manifest(request.model_dir)
    num_layers = int(manifest["num_layers"])
    check_read_layer(config.read_layer, num_layers, "allocate.read_layer")
    safety_rows = read_influence(request.safety, manifest["name"], num_layers)
    safe_rate = [1.0 - row["influence"] for row in safety_rows]
    order = safe_order(safe_rate, config.read_layer)
    for budget in config.budgets:  # a budget the blocks after R cannot hold fails here, naming it
        skips_for(budget, config.share, len(order))
    prompt_rows = [row for path in request.prompts for row in read_prompts(path)]
    if not prompt_rows:
        raise ArtifactError(f"the search prompt sets {list(request.prompts)} hold no prompts to fit the read on")
    sets = []
    for calibration_set in calibration.sets:
        examples = held_out(read_examples(request.data[calibration_set.name]), calibration_set.benchmark,
                            calibration_set.split, prompt_rows)
        if not examples:
            raise ArtifactError(f"calibration set {calibration_set.name!r}: every record was used by the search")
        sets.append((calibration_set, sample_examples(examples, calibration_set, calibration.seed)))
    model, tokenizer, _ = load_model(request.model_dir, device=request.device, dtype=request.dtype)
    executor = PathExecutor(model)
    fit, vocabulary = _fit_margins(executor, tokenizer, prompt_rows, encoding,
                                   chat_template_for(encoding.chat_template, manifest), config)
    record = {"model": manifest["name"], "num_layers": num_layers, "read_layer": config.read_layer,
              "lens": config.lens, "share": config.share, "order": order, "safe_rate": safe_rate,
              "fit_margins": fit, "fit_prompts": len(prompt_rows), "lens_vocabulary": vocabulary}
    allocation = Allocation(record)
    chat_template = chat_template_for(calibration.chat_template, manifest)
    curve, pooled, read_cost, kinds = allocation_curve(executor, tokenizer, allocation, config.budgets, sets,
                                                       chat_template)
    family = []
    for budget in config.budgets:
        points = allocation.point(budget)
        family.append({"mean_budget": budget, "max_skips": next(iter(points.values())).max_skips,
                       "thresholds": {kind: (None if math.isinf(p.threshold) else p.threshold)
                                      for kind, p in points.items()}})
    certified = None
    if calibration.certify is not None:
        certified = {**certify_budget(pooled, calibration.certify), "kinds": kinds}
    record.update({"family": family, "read_cost_blocks": read_cost, "curve": curve_records(curve),
                   "sets": {s.name: {"benchmark": s.benchmark, "split": s.split, "format": s.format,
                                     "examples": [ex.id for ex in examples]} for s, examples in sets},
                   "certified": certified})
    write_json(request.out, record)
    for point in curve:
        log(f"allocate: {point.set} b={point.knob:g}: score {point.score:.4f} (base {point.base_score:.4f}, drop "
            f"{100 * point.drop:+.2f} pts, agreement {point.agreement:.3f}), layers {point.mean_layers:.2f}/"
            f"{point.num_layers}")
    log(f"allocate: read at layer {config.read_layer} costs {read_cost:.3f} block-equivalents per prompt")
    if certified is not None:
        log(f"allocate: certified {certified['point']} ({certified['certificate']['reason']}), net saving "
            f"{certified['mean_layers_saved']:.2f} layers per prompt")
    return record


def certified_summary(allocation: dict) -> str:
    """One line on the allocation's certificate: the budget and its guarantee, or why it saves nothing."""
    certified = allocation.get("certified")
    if not certified:
        return "`sure@certified` is the base model: calibrate.certify is not set"
    budget = certified["mean_budget"]
    names = {"choices": "choice", "generate": "generation"}
    kinds = certified.get("kinds")
    covered = ("" if kinds is None else f" on {' and '.join(names.get(kind, kind) for kind in kinds)} prompts, the "
               "kinds its calibration prompts were (other prompts run the full model)")
    operating = (f"spends a mean budget of {budget:g} skips by the confidence read at layer "
                 f"{allocation['read_layer']} (savings net of the read){covered}" if budget is not None else "")
    return certificate_line("sure@certified", certified, operating)
