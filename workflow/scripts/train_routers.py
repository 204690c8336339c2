"""Train Dr.LLM routers on search labels with a frozen base model (docs/method.md#training).

Reads training samples (Parquet, drllm.training.samples.SAMPLES_SCHEMA: prompt_id, input_ids = the prompt tokens as the
search encoded them, labels = per-layer counts 0/1/2), splits them by prompt, builds the teacher-forced feature
cache with one forward pass per sample, trains the routers on it and writes to --out-dir:

  routers.safetensors, router_config.json   the stack of the selected epoch (RouterStack.from_pretrained)
  metrics.parquet                            one row per epoch (drllm.training.training.METRICS_SCHEMA; `selected` marks
                                             the epoch whose routers were saved)
  train_summary.json                         class counts and weights, split sizes, schedule, selected epoch,
                                             notes, timings
  training_curves.png, label_distribution.png
  README.md                                  the model card (drllm.training.card): base model, revision and weights
                                             hash, label statistics, training settings, the selected epoch's fit

The stage itself is drllm.training.train_stage.run_training; this script parses the command line.

Example:
  python workflow/scripts/train_routers.py --model-dir resources/models/smollm2-135m-instruct \\
      --samples results/train/smollm2-135m-instruct/samples.parquet \\
      --config-json '{"epochs": 25, "val_fraction": 0.1}' --out-dir results/routers/smollm2-135m-instruct
"""
from __future__ import annotations

import argparse
import sys

from drllm.core.cli import EXPECTED_ERRORS, json_argument, run_script
from drllm.training.train_stage import TrainRequest, run_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="materialised model (resources/models/<name>)")
    parser.add_argument("--samples", required=True, help="training samples Parquet (prompt_id, input_ids, labels)")
    parser.add_argument("--config-json", default="{}",
                        help="training settings (drllm.training.train_settings.TrainConfig keys) as JSON, "
                             "or a JSON file")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="base model dtype: auto (bf16 on CUDA), float32, ...")
    parser.add_argument("--progress", action="store_true", help="progress bar while building the feature cache")
    args = parser.parse_args(argv)

    def body() -> None:
        config = json_argument(args.config_json, "--config-json", file=True)
        print(run_training(TrainRequest(args.model_dir, args.samples, args.out_dir, config, device=args.device,
                                        dtype=args.dtype, progress=args.progress)))

    return run_script("train_routers", body, EXPECTED_ERRORS + (OSError,))  # OSError: the model's files


if __name__ == "__main__":
    sys.exit(main())
