"""Assets stage: materialise the configured model as safetensors + tokenizer + manifest.

Example:
  python workflow/scripts/prepare_model.py --model-json '{"name": "smollm2-135m-instruct", "source": "embedded"}' \\
      --out-dir resources/models/smollm2-135m-instruct
  python workflow/scripts/prepare_model.py --model-json '{"name": "my-model", "source": "gguf", "path": "/models/m.gguf"}' \\
      --out-dir resources/models/my-model
"""
from __future__ import annotations

import argparse
import sys
import time

from drllm.core.cli import EXPECTED_ERRORS, json_argument, run_script
from drllm.core.models import ModelSpec, materialize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-json", required=True,
                        help="the config's model block as JSON: name, source (embedded|gguf|hub|local), path, revision")
    parser.add_argument("--out-dir", required=True, help="directory to write (resources/models/<name>)")
    args = parser.parse_args(argv)

    def body() -> None:
        spec = ModelSpec.from_config(json_argument(args.model_json, "--model-json"))
        started = time.perf_counter()
        manifest = materialize(spec, args.out_dir)
        print(f"materialised {manifest['name']} ({manifest['architecture']}, {manifest['num_layers']} layers, "
              f"{manifest['num_parameters'] / 1e6:.1f}M parameters) in {time.perf_counter() - started:.1f}s "
              f"-> {args.out_dir}")

    # TypeError: a model the path executor cannot drive (UnsupportedModelError)
    return run_script("prepare_model", body, EXPECTED_ERRORS + (TypeError,))


if __name__ == "__main__":
    sys.exit(main())
