"""Evaluation stage: one benchmark x one method -> one Parquet cell, one row per example (drllm.evaluation.cells).

Methods: base | router | router@<p> (control knob p) | router@t<tau> (threshold decision at tau) |
router@calibrated / router@certified (the point from the calibration file) | static | static@<k> (k layers
removed) | safest / safest@<k> (as static, on the search's layer_safety.parquet) | random | random@<k> (k random
layers per example) | sure@<b> / sure@certified (a skip budget per prompt from the confidence read) | oracle (MCTS
with the gold answer, judged by the oracle settings' reward: the rules pass search.reward) | a plugin's.
Each artifact the method reads (drllm.evaluation.methods: Method.reads, and the router's cell / calibration file
its grammar adds) is one `--artifact <name>=<path>`: routers (the trained router directory), calibration,
router_cell (the router's cell on this benchmark, for static / safest / random without k), influence (block
influence, or layer safety for safest), allocation.
Finished examples are checkpointed (<out>.progress.jsonl), so a killed job resumes where it stopped. An entry with
`lm_eval: {task, metric}` runs that lm-eval task through the drllm lm-eval model instead (base and router methods
only). The stage itself is drllm.evaluation.stage.run_cell; this script parses the command line.

Example:
  python workflow/scripts/evaluate.py --model-dir resources/models/smollm2-135m-instruct \\
      --data resources/data/arc_easy/test.parquet \\
      --entry-json '{"name": "arc_easy", "benchmark": "arc_easy", "split": "test", "format": "cloze"}' \\
      --method router --artifact routers=results/routers/smollm2-135m-instruct \\
      --out results/eval/smollm2-135m-instruct/arc_easy/router.parquet
"""
from __future__ import annotations

import argparse
import sys

from drllm.core.cli import EXPECTED_ERRORS, run_script
from drllm.evaluation.cells import EvaluationError
from drllm.evaluation.methods import grammar
from drllm.evaluation.stage import CellRequest, run_cell


def artifact(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.isidentifier() or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


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
                        help="seed, chat_template, formats (per-format options), prefix_cache and the method's own "
                             "block, e.g. oracle {samples, mcts, reward (the search's; absent: binary)}")
    parser.add_argument("--artifact", action="append", default=[], metavar="NAME=PATH", type=artifact,
                        help="an artifact the method reads (repeat per artifact; see above)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", required=True, help="output cell .parquet (written atomically)")
    args = parser.parse_args(argv)

    artifacts = dict(args.artifact)
    if len(artifacts) != len(args.artifact):
        parser.error("--artifact: each name once")
    given = {key: value for key, value in vars(args).items() if key not in ("no_progress", "artifact")}
    request = CellRequest(**given, artifacts=artifacts, progress=not args.no_progress)
    try:
        return run_script("evaluate", lambda: print(run_cell(request)), EXPECTED_ERRORS + (EvaluationError,))
    except KeyboardInterrupt:
        print("evaluate: interrupted; finished examples are kept for the next run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
