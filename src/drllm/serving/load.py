"""A bounded load test of a running server: a fixed list of requests sent at a fixed concurrency, then it stops.

Every request ends as exactly one of: ok (HTTP 200 with a body), failed (an HTTP error status, or the
connection closed under it: e.g. the replica serving it was killed) or lost (no answer before `timeout_s`).
A server that drops nothing has lost == 0 (bench/serve.py, tests/test_serve.py)."""
from __future__ import annotations

import json
import statistics
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class Outcome:
    """One request: 'ok', 'failed' or 'lost', its latency (s), completion tokens, HTTP status and the body."""

    status: str
    seconds: float
    tokens: int = 0
    code: int | None = None
    body: dict | None = None
    error: str = ""


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0   # wall time of the whole run

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    @property
    def tokens(self) -> int:
        return sum(outcome.tokens for outcome in self.outcomes if outcome.status == "ok")

    def latency(self, q: float) -> float:
        """The q-quantile (0..1) of the ok requests' latencies, nearest rank."""
        values = sorted(outcome.seconds for outcome in self.outcomes if outcome.status == "ok")
        if not values:
            return float("nan")
        return values[min(len(values) - 1, max(0, round(q * len(values) + 0.5) - 1))]

    def summary(self) -> dict:
        return {"requests": len(self.outcomes), "ok": self.count("ok"), "failed": self.count("failed"),
                "lost": self.count("lost"), "seconds": self.seconds, "tokens": self.tokens,
                "tokens_per_s": self.tokens / self.seconds if self.seconds else float("nan"),
                "p50_s": self.latency(0.5), "p95_s": self.latency(0.95),
                "mean_s": statistics.fmean([o.seconds for o in self.outcomes if o.status == "ok"] or [float("nan")])}


def post(url: str, body: dict, timeout_s: float) -> Outcome:
    """POST one JSON request and classify what came back."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = json.loads(response.read())
        tokens = int(payload.get("usage", {}).get("completion_tokens", 0))
        return Outcome("ok", time.perf_counter() - start, tokens, 200, payload)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            payload = {"text": text}
        return Outcome("failed", time.perf_counter() - start, 0, exc.code, payload, f"HTTP {exc.code}")
    except TimeoutError as exc:
        return Outcome("lost", time.perf_counter() - start, error=f"no answer in {timeout_s:g} s: {exc}")
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return Outcome("lost", time.perf_counter() - start, error=f"no answer in {timeout_s:g} s")
        return Outcome("failed", time.perf_counter() - start, error=f"connection: {exc.reason}")
    except (ConnectionError, OSError) as exc:  # the connection closed under the request
        return Outcome("failed", time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")


def run_load(url: str, bodies: list[dict], concurrency: int, timeout_s: float = 300.0,
             on_sent=None) -> LoadResult:
    """Send `bodies` (in order) to `url` with at most `concurrency` in flight; returns once all have ended.
    on_sent(index): called as request `index` starts (e.g. to kill a replica part way)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")

    def one(index: int) -> Outcome:
        if on_sent is not None:
            on_sent(index)
        return post(url, bodies[index], timeout_s)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(one, range(len(bodies))))
    return LoadResult(outcomes, time.perf_counter() - start)
