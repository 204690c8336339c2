"""`drllm serve`: start the OpenAI-compatible server (drllm.serving.app) on a local Ray or a running cluster.

    drllm serve                                   # the embedded SmolLM2, every layer, http://127.0.0.1:8000
    drllm serve --routers results/routers/smollm2-135m-instruct --operating-point router@certified \\
        --operating-point base --num-replicas 2
    drllm serve --config serve.yaml --ray-address auto   # settings from a file; join `ray start --head`
    drllm serve --config serve.yaml --print-config > app.yaml   # the same as a Ray Serve config: serve deploy app.yaml

Flags override the file's settings (drllm.serving.settings.ServeSettings; docs/serving.md)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import yaml

from drllm.core.cli import EXPECTED_ERRORS, fail
from drllm.serving.settings import BATCHING, ServeSettings

FLAGS = {  # flag dest -> settings key
    "model_dir": "model_dir", "routers": "routers", "operating_point": "operating_points",
    "calibration": "calibration", "influence": "influence", "served_model_name": "served_model_name",
    "host": "host", "port": "port", "num_replicas": "num_replicas", "ray_address": "ray_address",
    "batching": "batching", "max_batch_size": "max_batch_size", "device": "device", "dtype": "dtype",
    "threads": "threads",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="drllm", description="Dr.LLM command line")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a (routed) model over an OpenAI-compatible HTTP API",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--config", help="YAML file of serve settings (a mapping, or one under a `serve:` key)")
    serve.add_argument("--model-source", choices=("embedded", "gguf", "local", "hub"),
                       help="model.source (with --model-path and --model-name; default: the embedded SmolLM2)")
    serve.add_argument("--model-path", help="model.path: a .gguf file, a model directory or a hub id")
    serve.add_argument("--model-name", help="model.name: names resources/models/<name>, where it is materialised")
    serve.add_argument("--model-dir", help="an already materialised model directory (drllm.core.models)")
    serve.add_argument("--routers", help="routers: a release folder, a run's routers directory or a hub id")
    serve.add_argument("--operating-point", action="append",
                       help="an operating point to serve (repeatable; the first is the default): base, router, "
                            "router@<p>, router@t<tau>, router@calibrated, router@certified, static@<k>, safest@<k>")
    serve.add_argument("--calibration", help="calibration file (default <routers>/calibration.json)")
    serve.add_argument("--influence", help="static@k: block influence Parquet; safest@k: layer safety Parquet")
    serve.add_argument("--served-model-name", help="the model id clients name (default model.name)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--num-replicas", type=int)
    serve.add_argument("--ray-address", help="join a running Ray cluster (`auto` or host:port) instead of a local one")
    serve.add_argument("--batching", choices=BATCHING)
    serve.add_argument("--max-batch-size", type=int)
    serve.add_argument("--device")
    serve.add_argument("--dtype")
    serve.add_argument("--threads", type=int, help="torch threads per replica")
    serve.add_argument("--in-process", action="store_true",
                       help="serve from this process without Ray (one replica, the same routes and batching)")
    serve.add_argument("--print-config", action="store_true",
                       help="print the settings as a Ray Serve config (for serve run / serve deploy) and exit")
    return top


def settings_from(args: argparse.Namespace) -> ServeSettings:
    block: dict = {}
    if args.config:
        with open(args.config) as handle:
            loaded = yaml.safe_load(handle) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config}: expected a mapping of serve settings, got "
                             f"{type(loaded).__name__}")
        block = dict(loaded.get("serve", loaded)) if set(loaded) == {"serve"} else dict(loaded)
    for dest, key in FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            block[key] = value
    if args.model_source or args.model_path or args.model_name:
        model = dict(block.get("model") or {})
        for key, value in (("source", args.model_source), ("path", args.model_path), ("name", args.model_name)):
            if value is not None:
                model[key] = value
        model.setdefault("name", "served-model")
        block["model"] = model
    return ServeSettings.from_dict(block)


def serve_config(settings: ServeSettings) -> dict:
    """The settings as a Ray Serve config file: one application built by drllm.serving.app:build_app."""
    return {"proxy_location": "EveryNode", "http_options": {"host": settings.host, "port": settings.port},
            "applications": [{"name": settings.app_name, "route_prefix": "/",
                              "import_path": "drllm.serving.app:build_app", "args": settings.to_dict()}]}


def start(settings: ServeSettings, blocking: bool = True) -> None:
    """Start Ray (local, or join settings.ray_address) and run the application; blocks until interrupted."""
    import ray
    from ray import serve

    from drllm.search.workers import join_cluster
    from drllm.serving.app import build_app

    if settings.ray_address:
        join_cluster(settings.ray_address, "serve.ray_address", "the server")
    elif not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=True)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(settings.to_dict()), name=settings.app_name, route_prefix="/")
    print(f"drllm serve: {settings.name} on http://{settings.host}:{settings.port}/v1 "
          f"(operating points {settings.operating_points}; Ctrl-C stops)", flush=True)
    if blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    from drllm.search.workers import RayClusterError

    args = parser().parse_args(argv)
    try:
        settings = settings_from(args)
        if args.print_config:
            yaml.safe_dump(serve_config(settings), sys.stdout, sort_keys=False)
            return 0
        if args.in_process:
            from drllm.serving.app import serve_in_process

            running = serve_in_process(settings)
            print(f"drllm serve: {settings.name} on http://{settings.host}:{settings.port}/v1 in process "
                  f"(operating points {settings.operating_points}; Ctrl-C stops)", flush=True)
            try:
                while running.started and not running.should_exit:
                    time.sleep(1)
            except KeyboardInterrupt:
                running.should_exit = True
            return 0
        start(settings)
    except (*EXPECTED_ERRORS, RayClusterError) as exc:
        return fail("drllm serve", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
