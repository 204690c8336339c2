"""The served model without the server: requests checked into jobs, and a batch of jobs generated together.

`Engine.run(jobs)` is what one Ray Serve batch executes. Jobs are split by operating point; each point's rows
are prefilled as one left-padded batch (a routed point routes during that prefill, every row on its own
prompt), then decoded in groups (`decode_groups`, setting serve.batching):

  mixed    every row of the point in one exact mixed-path batch (drllm.core.path_batch)
  grouped  rows that share a path decode together as a plain batch; the rest as one mixed-path batch
  by_path  each distinct path as its own batch (the paper's batching by path)

Every row's numbers are those of the row alone along its path (up to float rounding) whichever the grouping, so
the choice is one of speed only (bench/serve.py). Decoding is greedy and stops per row: at EOS, at a stop
string (the text is cut before it) or at the row's max_tokens; finished rows leave their batch (their cache rows
are dropped) once a quarter of it has finished. `run` yields after every decode step one event per job (None
when it has nothing new), so streams advance token by token."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from drllm.core import path_batch
from drllm.core.paths import LayerPath
from drllm.routing.inference import pad_left
from drllm.serving.points import OperatingPoint, build_point
from drllm.serving.settings import ServeSettings

ROLES = ("system", "user", "assistant")


class RequestError(ValueError):
    """A bad request: an HTTP 4xx with an OpenAI-style error body naming the field (`param`)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value", status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": self.code}}


@dataclass
class Job:
    """One prompt to complete: its tokens, operating point, limits and what to return."""

    prompt_ids: list[int]
    point: str
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    echo: bool = False
    logprobs: int | None = None   # top alternatives per token (None: no logprobs)
    ignore_eos: bool = False      # extension (as vLLM's): decode to max_tokens through EOS (benchmarks)


@dataclass
class Event:
    """What a job has produced since its previous event: new text (stop strings held back until they cannot
    match), and when finished the totals."""

    text: str
    finished: bool = False
    finish_reason: str | None = None
    token_ids: list[int] | None = None        # finished: every generated token (up to the stop)
    logprobs: dict | None = None              # finished, when asked: OpenAI completions logprobs
    path: LayerPath | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def decode_groups(paths: Sequence[LayerPath], batching: str) -> list[list[int]]:
    """Row indices decoded together: one mixed-path batch (mixed), one batch per distinct path (by_path), or rows
    sharing a path together and the rest as one mixed-path batch (grouped)."""
    if batching == "mixed":
        return [list(range(len(paths)))]
    by_path: dict[LayerPath, list[int]] = {}
    for row, path in enumerate(paths):
        by_path.setdefault(path, []).append(row)
    if batching == "by_path":
        return list(by_path.values())
    if batching != "grouped":
        raise ValueError(f"batching must be mixed, grouped or by_path, got {batching!r}")
    shared = [rows for rows in by_path.values() if len(rows) > 1]
    alone = sorted(row for rows in by_path.values() if len(rows) == 1 for row in rows)
    return shared + ([alone] if alone else [])


class _Row:
    """One job's decoding state."""

    def __init__(self, job: Job, path: LayerPath, tokenizer, eos: set[int], stop_hold: int):
        self.job, self.path, self.tokenizer, self.eos = job, path, tokenizer, eos
        self.tokens: list[int] = []        # generated, up to (without) EOS
        self.scored: list[int] = []        # with logprobs asked: every chosen token, the ending EOS included
        self.token_logprobs: list[float] = []
        self.top: list[dict] = []
        self.text, self.sent = "", 0
        self.finish_reason: str | None = None
        self.stop_hold = stop_hold
        self.done_event = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add(self, token: int, logprobs_row: torch.Tensor | None) -> None:
        if logprobs_row is not None:
            self.scored.append(token)
            self.token_logprobs.append(float(logprobs_row[token]))
            self.top.append(_top(self.tokenizer, logprobs_row, self.job.logprobs, token))
        if token in self.eos:
            self.finish_reason = "stop"
            return
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for i in (self.text.find(stop) for stop in self.job.stop if stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.finish_reason = self.text[:cut], "stop"
        elif len(self.tokens) >= self.job.max_tokens:
            self.finish_reason = "length"

    def event(self) -> Event | None:
        if self.done_event:
            return None
        if self.finished:
            self.done_event = True
            delta, self.sent = self.text[self.sent:], len(self.text)
            return Event(delta, True, self.finish_reason, list(self.tokens), None, self.path,
                         len(self.job.prompt_ids), len(self.tokens))
        safe = len(self.text) - self.stop_hold
        while safe > self.sent and self.text[safe - 1] == "\ufffd":  # an incomplete UTF-8 character
            safe -= 1
        if safe <= self.sent:
            return None
        delta, self.sent = self.text[self.sent:safe], safe
        return Event(delta)


def _top(tokenizer, logprobs_row: torch.Tensor, k: int, chosen: int) -> dict:
    """{token text: logprob} of the k likeliest tokens and the chosen one (OpenAI's top_logprobs)."""
    top: dict[str, float] = {}
    if k > 0:
        values, ids = logprobs_row.topk(k)
        for value, token in zip(values.tolist(), ids.tolist()):
            top.setdefault(tokenizer.decode([token]), value)
    top.setdefault(tokenizer.decode([chosen]), float(logprobs_row[chosen]))
    return top


class Engine:
    """A model, its routers and operating points, loaded once per replica."""

    def __init__(self, settings: ServeSettings):
        from drllm.core.executor import PathExecutor
        from drllm.core.models import ModelSpec, load_model, materialize, read_manifest, MANIFEST

        self.settings = settings
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        model_dir = Path(settings.model_dir or Path("resources/models") / str(settings.model["name"]))
        if not (model_dir / MANIFEST).is_file():
            materialize(ModelSpec.from_config(dict(settings.model)), model_dir)
        elif read_manifest(model_dir).get("name") != settings.model["name"]:
            raise ValueError(f"serve.model_dir {str(model_dir)!r} holds model "
                             f"{read_manifest(model_dir).get('name')!r}, not serve.model.name "
                             f"{settings.model['name']!r}")
        model, self.tokenizer, self.manifest = load_model(model_dir, device=settings.device, dtype=settings.dtype)
        # requests are parsed on the server's event loop while a batch decodes in a worker thread: each side has
        # its own tokenizer (a Rust tokenizer object refuses use from two threads at once)
        self.request_tokenizer = copy.deepcopy(self.tokenizer)
        self.model_dir = model_dir
        self.executor = PathExecutor(model)
        routers, routers_dir = None, None
        if settings.routers:
            from drllm.release.imported import resolve_router_source
            from drllm.routing.router import RouterStack

            routers_dir = resolve_router_source(settings.routers, settings.routers_revision)
            routers = RouterStack.for_model(routers_dir, self.manifest, device=self.executor.device)
        self.points: dict[str, OperatingPoint] = {}
        for name in settings.operating_points:
            point = build_point(name, self.executor, self.tokenizer, self.manifest["name"], routers,
                                str(routers_dir) if routers_dir else None, settings.calibration,
                                settings.influence)
            self.points[point.name] = point
        self.default_point = next(iter(self.points))
        self.aliases = {name: self.points[point] for name, point in zip(settings.operating_points, self.points)}
        config = self.executor.config
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 2048)
        ids = {self.tokenizer.eos_token_id}
        config_eos = model.generation_config.eos_token_id
        ids |= set(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
        self.eos_ids = sorted(int(i) for i in ids if i is not None)
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                          else self.eos_ids[0] if self.eos_ids else 0)
        self.vocab_size = int(self.executor.model.get_output_embeddings().weight.shape[0])

    @property
    def name(self) -> str:
        return self.settings.name

    def model_ids(self) -> list[str]:
        """The model ids a request may name: the served name (the default point) and <name>:<point> per point."""
        return [self.name] + [f"{self.name}:{point}" for point in self.points]

    # -- requests -> jobs -------------------------------------------------------------------------------------

    def resolve_point(self, body: dict) -> str:
        """The operating point of a request: from `model` (<name> or <name>:<point>) and the extension field
        `operating_point` (which wins)."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RequestError(f"'model' is required: a string, one of {self.model_ids()}", "model",
                               "missing_required_parameter" if model is None else "invalid_type")
        name, _, point = model.partition(":")
        if name != self.name:
            raise RequestError(f"model {model!r} does not exist; this server serves {self.model_ids()}", "model",
                               "model_not_found", 404)
        asked = body.get("operating_point")
        if asked is not None:
            if not isinstance(asked, str):
                raise RequestError(f"'operating_point' must be a string, one of {list(self.points)}",
                                   "operating_point", "invalid_type")
            point = asked
        if not point:
            return self.default_point
        found = self.aliases.get(point) or self.points.get(point)
        if found is None:
            raise RequestError(f"operating point {point!r} is not served; this server serves {list(self.points)} "
                               f"(model ids {self.model_ids()})", "operating_point", "unknown_operating_point")
        return found.name

    def _int(self, body: dict, key: str, default: int | None, low: int, high: int) -> int | None:
        value = body.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise RequestError(f"'{key}' must be an integer in [{low}, {high}], got {value!r}", key)
        return value

    def _common(self, body: dict) -> tuple[str, list[str], int | None, bool]:
        """(operating point, stop strings, max_tokens or None, ignore_eos) after the checks every endpoint
        shares."""
        point = self.resolve_point(body)
        ignore_eos = body.get("ignore_eos", False)
        if not isinstance(ignore_eos, bool):
            raise RequestError(f"'ignore_eos' must be true or false, got {ignore_eos!r}", "ignore_eos")
        temperature = body.get("temperature")
        if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                        or not 0 <= temperature <= 2):
            raise RequestError(f"'temperature' must be a number in [0, 2], got {temperature!r}", "temperature")
        if temperature:
            raise RequestError(f"'temperature' must be 0: this server decodes greedily, got {temperature!r}",
                               "temperature", "unsupported_value")
        self._int(body, "n", 1, 1, 1)
        stop = body.get("stop")
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(f"'stop' must be a non-empty string or a list of at most 4 such strings, got "
                               f"{body.get('stop')!r}", "stop")
        limit = self.settings.max_tokens_limit
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        return point, stop, self._int(body, key, None, 0, limit), ignore_eos

    def _check_length(self, ids: list[int], max_tokens: int, field_name: str) -> None:
        if len(ids) > self.context_length:
            raise RequestError(f"'{field_name}' is {len(ids)} tokens; the model's context is {self.context_length}",
                               field_name, "context_length_exceeded")
        if len(ids) + max_tokens > self.context_length:
            raise RequestError(f"'{field_name}' ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                               f"model's context of {self.context_length} tokens", "max_tokens",
                               "context_length_exceeded")

    def completion_jobs(self, body: dict) -> list[Job]:
        """The jobs of a /v1/completions request, one per prompt."""
        point, stop, max_tokens, ignore_eos = self._common(body)
        max_tokens = self.settings.default_max_tokens if max_tokens is None else max_tokens
        echo = body.get("echo", False)
        if not isinstance(echo, bool):
            raise RequestError(f"'echo' must be true or false, got {echo!r}", "echo")
        logprobs = self._int(body, "logprobs", None, 0, self.settings.max_logprobs)
        if max_tokens == 0 and not echo:
            raise RequestError("'max_tokens' must be at least 1 unless echo is true (scoring the prompt)",
                               "max_tokens")
        prompts = self._prompts(body.get("prompt"))
        jobs = []
        for ids in prompts:
            self._check_length(ids, max_tokens, "prompt")
            jobs.append(Job(ids, point, max_tokens, stop, echo, logprobs, ignore_eos))
        return jobs

    def _prompts(self, prompt: Any) -> list[list[int]]:
        expected = ("'prompt' must be a non-empty string, a list of such strings, a non-empty list of token ids "
                    "or a list of such lists")
        if prompt is None:
            raise RequestError(f"'prompt' is required: {expected[9:]}", "prompt", "missing_required_parameter")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise RequestError(f"{expected}, got {_short(prompt)}", "prompt")
        out = []
        for item in prompt:
            if isinstance(item, str) and item:
                ids = list(self.request_tokenizer(item)["input_ids"])
            elif isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool)
                                                         for t in item):
                bad = [t for t in item if not 0 <= t < self.vocab_size]
                if bad:
                    raise RequestError(f"'prompt' holds token ids outside [0, {self.vocab_size}): {bad[:5]}",
                                       "prompt")
                ids = list(item)
            else:
                raise RequestError(f"{expected}, got an item {_short(item)}", "prompt")
            if not ids:
                raise RequestError(f"'prompt' {_short(item)} tokenises to no tokens", "prompt")
            out.append(ids)
        return out

    def chat_job(self, body: dict) -> Job:
        """The job of a /v1/chat/completions request: the messages through the model's chat template."""
        point, stop, max_tokens, ignore_eos = self._common(body)
        if max_tokens == 0:
            raise RequestError("'max_tokens' must be at least 1 for a chat completion", "max_tokens")
        messages = body.get("messages")
        if messages is None:
            raise RequestError("'messages' is required: a non-empty list of {role, content} objects", "messages",
                               "missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise RequestError(f"'messages' must be a non-empty list of {{role, content}} objects, got "
                               f"{_short(messages)}", "messages")
        clean = []
        for index, message in enumerate(messages):
            where = f"messages[{index}]"
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise RequestError(f"'{where}' must be an object whose role is one of {list(ROLES)}, got "
                                   f"{_short(message)}", where)
            content = message.get("content")
            if isinstance(content, list):  # content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise RequestError(f"'{where}.content' parts must be {{type: text, text}} objects (text only)",
                                       f"{where}.content")
                content = "".join(p["text"] for p in content)
            if not isinstance(content, str):
                raise RequestError(f"'{where}.content' must be a string, got {_short(content)}", f"{where}.content")
            clean.append({"role": message["role"], "content": content})
        if not any(m["content"] for m in clean):
            raise RequestError("'messages' are all empty: give some content", "messages")
        tokenizer = self.request_tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in clean) + "\nassistant:"
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        max_tokens = self.context_length - len(ids) if max_tokens is None else max_tokens
        max_tokens = max(1, min(max_tokens, self.settings.max_tokens_limit))
        self._check_length(ids, max_tokens, "messages")
        return Job(ids, point, max_tokens, stop, ignore_eos=ignore_eos)

    # -- generation -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def run(self, jobs: Sequence[Job]) -> Iterator[list[Event | None]]:
        """Generate every job; yields after the prefill and after each decode step one entry per job (an Event,
        or None when a job has nothing new). A job's last Event has finished=True."""
        by_point: dict[str, list[int]] = {}
        for index, job in enumerate(jobs):
            by_point.setdefault(job.point, []).append(index)
        rows: list[_Row | None] = [None] * len(jobs)
        groups = []  # (decoding state, job indices of its rows, last logits [rows, vocab])
        prompt_logprobs: dict[int, dict] = {}
        eos = set(self.eos_ids)
        for indices in by_point.values():
            point = self.points[jobs[indices[0]].point]
            point_jobs = [jobs[i] for i in indices]
            input_ids, mask = pad_left([job.prompt_ids for job in point_jobs], self.pad_id)
            echo = any(job.echo and job.logprobs is not None for job in point_jobs)
            logits = "all" if echo else "last"
            if point.routed is not None:
                state = point.routed.prefill(input_ids, mask, use_cache=True, logits=logits)
            else:
                state = path_batch.prefill(self.executor, input_ids, mask, [point.path] * len(point_jobs),
                                           use_cache=True, logits=logits)
            paths = state.paths()
            if echo:
                for row, (index, job) in enumerate(zip(indices, point_jobs)):
                    if job.echo and job.logprobs is not None:
                        prompt_logprobs[index] = self._prompt_logprobs(state.logits[row], job)
            for row, index in enumerate(indices):
                job = jobs[index]
                rows[index] = _Row(job, paths[row], self.tokenizer, set() if job.ignore_eos else eos,
                                   max((len(s) - 1 for s in job.stop), default=0))
            last = state.logits[:, -1]
            for group in decode_groups(paths, self.settings.batching):
                group_state = state if len(group) == len(indices) else path_batch.select_batch_rows(
                    self.executor, state, group)
                groups.append([group_state, [indices[row] for row in group], last[group]])
        for row in rows:  # echo-only scoring: nothing to generate
            if row.job.max_tokens == 0:
                row.finish_reason = "length"
        while True:
            live_groups = []
            for group in groups:
                group_state, members, logits = group
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                next_tokens = logits.argmax(-1)
                for position, index in enumerate(members):
                    row = rows[index]
                    if not row.finished:
                        row.add(int(next_tokens[position]), logprobs[position] if row.job.logprobs is not None
                                else None)
                live = [position for position, index in enumerate(members) if not rows[index].finished]
                if not live:
                    continue
                if 4 * (len(members) - len(live)) >= len(members):  # a quarter finished: drop them
                    group_state = path_batch.select_batch_rows(self.executor, group_state, live)
                    members = [members[p] for p in live]
                group[0], group[1] = group_state, members
                live_groups.append(group)
            events = [self._event(index, row, prompt_logprobs) for index, row in enumerate(rows)]
            yield events
            if not live_groups:
                return
            for group in live_groups:
                group_state, members, _ = group
                tokens = torch.tensor([rows[i].tokens[-1] if rows[i].tokens else self.pad_id for i in members],
                                      dtype=torch.long, device=self.executor.device)
                group[2] = path_batch.decode_step(self.executor, group_state, tokens)
            groups = live_groups

    def _event(self, index: int, row: _Row, prompt_logprobs: dict[int, dict]) -> Event | None:
        event = row.event()
        if event is None or not event.finished:
            return event
        job = row.job
        if job.logprobs is not None:
            generated = {"tokens": [self.tokenizer.decode([t]) for t in row.scored],
                         "token_logprobs": list(row.token_logprobs), "top_logprobs": list(row.top)}
            echoed = prompt_logprobs.get(index)
            if echoed is not None:
                generated = {key: echoed[key] + generated[key] for key in generated}
            offsets, offset = [], 0
            for token in generated["tokens"]:
                offsets.append(offset)
                offset += len(token)
            generated["text_offset"] = offsets
            event.logprobs = generated
        return event

    def _prompt_logprobs(self, logits: torch.Tensor, job: Job) -> dict:
        """The echoed prompt's logprobs: None for its first token, then log p(token | the tokens before it)."""
        ids = job.prompt_ids
        width = logits.shape[0]
        own = logits[width - len(ids):].float()  # left padding first
        logprobs = torch.log_softmax(own, dim=-1)
        tokens = [self.tokenizer.decode([t]) for t in ids]
        values: list[float | None] = [None]
        tops: list[dict | None] = [None]
        for position in range(1, len(ids)):
            row = logprobs[position - 1]
            values.append(float(row[ids[position]]))
            tops.append(_top(self.tokenizer, row, job.logprobs, ids[position]))
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
