"""The server's settings: `drllm serve --config` reads a YAML file holding them (all optional), the command line
sets the common ones, and a Ray Serve config (`serve run` / `serve deploy`) passes the same mapping as the
application's `args` (drllm.serving.app:build_app). Built and validated once (drllm.core.settings)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from drllm.core.settings import check_fields, from_block, setting

BATCHING = ("mixed", "grouped", "by_path")  # see drllm.serving.engine.decode_groups
DEFAULT_MODEL = {"name": "smollm2-135m-instruct", "source": "embedded"}


@dataclass(frozen=True)
class ServeSettings:
    """What a served model is and how it is served (docs/serving.md lists every key)."""

    # the model: the pipeline's `model:` block (embedded, gguf, local, hub), materialised once into model_dir
    model: dict = setting(kind="mapping", factory=lambda: dict(DEFAULT_MODEL))
    model_dir: str | None = setting(None, "str", nullable=True)      # default resources/models/<model.name>
    routers: str | None = setting(None, "str", nullable=True)        # release folder, run's routers dir, hub id
    routers_revision: str | None = setting(None, "str", nullable=True)
    # operating points served; the first is the default. Any evaluation method that maps a prompt to a path.
    operating_points: list = setting(kind="list", factory=lambda: ["base"])
    calibration: str | None = setting(None, "str", nullable=True)    # default <routers>/calibration.json
    influence: str | None = setting(None, "str", nullable=True)      # static@k: block influence; safest@k: safety
    served_model_name: str | None = setting(None, "str", nullable=True)  # default model.name
    device: str = setting("auto", "str")
    dtype: str = setting("auto", "str")
    threads: int | None = setting(None, "int", low=1, nullable=True)  # torch threads per replica (None: torch's)
    # request batching (Ray Serve's @serve.batch) and how a batch's rows are grouped by path
    max_batch_size: int = setting(8, "int", low=1)
    batch_wait_timeout_s: float = setting(0.01, "number", low=0)
    batching: str = setting("mixed", "str", choices=BATCHING)
    max_tokens_limit: int = setting(2048, "int", low=1)              # the largest max_tokens a request may ask
    default_max_tokens: int = setting(16, "int", low=0)              # completions without max_tokens (OpenAI: 16)
    max_logprobs: int = setting(20, "int", low=0)                    # the largest `logprobs` a request may ask
    # scaling: replicas (fixed, or autoscaling's min/max/target) on a local Ray or a running cluster
    num_replicas: int = setting(1, "int", low=1)
    autoscaling: dict | None = setting(None, "mapping", nullable=True)  # Ray Serve autoscaling_config
    replica_cpus: float = setting(1.0, "number", low=0)
    max_ongoing_requests: int = setting(64, "int", low=1)
    ray_address: str | None = setting(None, "str", nullable=True)    # None: a local Ray; "auto" or host:port
    host: str = setting("127.0.0.1", "str")
    port: int = setting(8000, "int", low=0, high=65535)
    app_name: str = setting("drllm", "str")

    def __post_init__(self) -> None:
        check_fields(self, "serve")
        if not self.operating_points or not all(isinstance(p, str) and p for p in self.operating_points):
            raise ValueError(f"serve.operating_points must be a non-empty list of method names, got "
                             f"{self.operating_points!r}")
        if len(set(self.operating_points)) != len(self.operating_points):
            raise ValueError(f"serve.operating_points lists a point twice: {self.operating_points!r}")
        if not self.model.get("name"):
            raise ValueError(f"serve.model.name is required (it names the materialised model), got {self.model!r}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"serve.default_max_tokens ({self.default_max_tokens}) exceeds serve.max_tokens_limit "
                             f"({self.max_tokens_limit})")
        if self.autoscaling is not None:
            allowed = ("min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests",
                       "upscale_delay_s", "downscale_delay_s")
            unknown = sorted(set(self.autoscaling) - set(allowed))
            if unknown:
                raise ValueError(f"serve.autoscaling: unknown key(s) {unknown}; expected some of {list(allowed)}")

    @classmethod
    def from_dict(cls, block: Mapping[str, Any] | None) -> "ServeSettings":
        block = dict(block or {})
        if isinstance(block.get("operating_points"), str):  # one point may be given as a string
            block["operating_points"] = [block["operating_points"]]
        return from_block(cls, block, "serve")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def name(self) -> str:
        return self.served_model_name or str(self.model["name"])
