"""Release stage: the trained routers as one self-describing directory to share (copy it, or push it to the hub):
weights, router_config.json, calibration.json and a model card completed with the search settings, the search
summary and the evaluation table of the report.

Example:
  python workflow/scripts/release_routers.py --router-dir results/routers/smollm2-135m-instruct \\
      --shards results/search/smollm2-135m-instruct/*/shard-*.parquet \\
      --search-summary results/search/smollm2-135m-instruct/summary.md \\
      --report-summary results/report/smollm2-135m-instruct/summary.parquet --out-dir results/release/smollm2-135m-instruct
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from drllm.core.artifacts import ArtifactError, atomic_path, read_json, read_parquet, write_text
from drllm.core.cli import run_script
from drllm.evaluation.summary import REPORT_SUMMARY_SCHEMA
from drllm.routing.router import CALIBRATION_FILE, CARD_FILE, CONFIG_FILE, WEIGHTS_FILE
from drllm.release.card import release_card
from drllm.search.shards import read_shard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--router-dir", required=True, help="the training stage's router directory")
    parser.add_argument("--shards", nargs="+", required=True, help="the search shards the labels came from")
    parser.add_argument("--search-summary", required=True, help="the search stage's summary.md (Table 2)")
    parser.add_argument("--report-summary", required=True, help="the report's summary.parquet")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    router_dir, out_dir = Path(args.router_dir), Path(args.out_dir)

    def body() -> None:
        for name in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, CALIBRATION_FILE):
            if not (router_dir / name).is_file():
                raise ArtifactError(f"router directory {router_dir}: {name} missing (run the training and "
                                    "calibration stages first)")
        summary_md = Path(args.search_summary)
        if not summary_md.is_file():
            raise ArtifactError(f"search summary not found: {summary_md}")
        settings = [row["search_config"] for path in args.shards for row in read_shard(path)]
        evaluation = read_parquet(args.report_summary, REPORT_SUMMARY_SCHEMA, "report summary").to_pylist()
        calibration = read_json(router_dir / CALIBRATION_FILE, "router calibration file")
        card = release_card((router_dir / CARD_FILE).read_text(), settings,
                            summary_md.read_text().split("\n", 1)[-1], evaluation, calibration.get("certified"))
        for name in (WEIGHTS_FILE, CONFIG_FILE, CALIBRATION_FILE):
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(router_dir / name, tmp)
        write_text(out_dir / CARD_FILE, card)  # last: its presence marks a complete release
        print(f"release_routers: {router_dir} -> {out_dir} ({len(evaluation)} report rows, "
              f"{len(set(settings))} search setting(s))")

    return run_script("release_routers", body)


if __name__ == "__main__":
    sys.exit(main())
