"""Import stage: trained routers from elsewhere, a local directory (a release folder, or another run's router
directory) or a hub repository id, checked against the materialised model (name, revision, weights hash, layers,
width, loadable weights, calibration file) and copied into the router directory that evaluation reads, so that
no search or training is needed. Writes routers.safetensors, router_config.json, calibration.json, README.md
(when the source has one) and, last, source.json (the source, the hub commit, each file's sha256).

Example:
  python workflow/scripts/import_routers.py --source results/release/smollm2-135m-instruct \\
      --model-dir resources/models/smollm2-135m-instruct --out-dir results/routers/smollm2-135m-instruct
  python workflow/scripts/import_routers.py --source owner/smollm2-routers --revision v1 \\
      --model-dir resources/models/smollm2-135m-instruct --out-dir results/routers/smollm2-135m-instruct
"""
from __future__ import annotations

import argparse
import sys

from drllm.core.cli import run_script
from drllm.core.models import read_manifest
from drllm.release.imported import import_routers, resolve_router_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True,
                        help="a local router directory (release folder) or a hub repository id owner/name")
    parser.add_argument("--revision", default=None,
                        help="the hub repository's branch, tag or commit (default: main); hub sources only")
    parser.add_argument("--model-dir", required=True, help="the materialised base model (its drllm_model.json)")
    parser.add_argument("--out-dir", required=True, help="where the routers go (results/routers/<model>)")
    args = parser.parse_args(argv)

    def body() -> None:
        manifest = read_manifest(args.model_dir)
        source_dir = resolve_router_source(args.source, args.revision)
        record = import_routers(source_dir, manifest, args.out_dir, source=args.source, revision=args.revision)
        where = f" (hub commit {record['hub']['commit']})" if record["hub"] else ""
        print(f"import_routers: {args.source}{where} -> {args.out_dir}: routers for {manifest['name']} "
              f"({', '.join(sorted(record['files']))})")

    return run_script("import_routers", body)


if __name__ == "__main__":
    sys.exit(main())
