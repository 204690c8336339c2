"""Evaluation stage: one benchmark x one method -> one Parquet cell, one row per example (drllm.evaluation.cells).

Methods: base | router | router@<p> (control knob p) | router@t<tau> (threshold decision at tau) |
router@calibrated / router@certified (the point from --calibration) |
static (needs --router-cell and --influence) | static@<k> (k layers removed; needs --influence) |
safest / safest@<k> (as static, --influence = the search's layer_safety.parquet) |
random (needs --router-cell) | random@<k> (k random layers per example) |
sure@<b> / sure@certified (a skip budget per prompt from the confidence read; needs --allocation) | oracle (MCTS with the gold answer,
judged by the oracle settings' reward: the rules pass search.reward).
Finished examples are checkpointed (<out>.progress.jsonl), so a killed job resumes where it stopped. An entry with
`lm_eval: {task, metric}` runs that lm-eval task through the drllm lm-eval model instead (base and router methods
only). The stage itself is drllm.evaluation.stage.run_cell; this script parses the command line.

Example:
  python workflow/scripts/evaluate.py --model-dir resources/models/smollm2-135m-instruct \\
      --data resources/data/arc_easy/test.parquet \\
      --entry-json '{"name": "arc_easy", "benchmark": "arc_easy", "split": "test", "format": "cloze"}' \\
      --method router --routers results/routers/smollm2-135m-instruct \\
      --out results/eval/smollm2-135m-instruct/arc_easy/router.parquet
"""
from __future__ import annotations

import argparse
import sys

from drllm.core.cli import EXPECTED_ERRORS, run_script
from drllm.evaluation.cells import EvaluationError
from drllm.evaluation.methods import grammar
from drllm.evaluation.stage import CellRequest, run_cell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="materialised model (resources/models/<name>)")
    parser.add_argument("--data", default="", help="benchmark records Parquet from the assets stage "
                                                    "(not for lm-eval tasks)")
    parser.add_argument("--entry-json", required=True,
                        help="the eval.benchmarks entry as JSON: name, benchmark, split, format, samples, levels, "
                             "options")
    parser.add_argument("--method", required=True, help=f"{grammar()} (drllm.evaluation.methods; plugin "
                                                        "methods too, with DRLLM_PLUGINS set)")
    parser.add_argument("--settings-json", default="{}",
                        help="seed, chat_template, formats (per-format options), prefix_cache, "
                             "oracle {samples, mcts, reward (the search's; absent: binary)}")
    parser.add_argument("--routers", default="", help="trained router directory (router, static, random)")
    parser.add_argument("--router-cell", default="", help="the router's cell on this benchmark (static, random)")
    parser.add_argument("--influence", default="", help="block influence Parquet (static, static@<k>); layer "
                                                        "safety Parquet (safest, safest@<k>)")
    parser.add_argument("--calibration", default="",
                        help="router calibration JSON with the operating point (router@calibrated, "
                             "router@certified)")
    parser.add_argument("--allocation", default="",
                        help="allocation JSON: the fitted confidence read and its certified budget (sure@<b>, "
                             "sure@certified)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", required=True, help="output cell .parquet (written atomically)")
    args = parser.parse_args(argv)

    request = CellRequest(**{key: value for key, value in vars(args).items() if key != "no_progress"},
                          progress=not args.no_progress)
    try:
        return run_script("evaluate", lambda: print(run_cell(request)), EXPECTED_ERRORS + (EvaluationError,))
    except KeyboardInterrupt:
        print("evaluate: interrupted; finished examples are kept for the next run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
