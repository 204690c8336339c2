"""What every stage script (workflow/scripts) shares: its `--*-json` arguments parsed one way (`json_argument`),
and one path from an expected error to `<script>: error: <message>` on stderr and exit code 2 (`run_script`,
`fail`). The scripts stay argument parsing and I/O; the stages themselves live in the library."""
from __future__ import annotations

import json
import reprlib
import sys
from pathlib import Path
from typing import Any, Callable

from drllm.core.artifacts import ArtifactError, read_json

# bad input, not a bug: a missing or malformed artifact, a wrong setting or argument (ArtifactError is a
# ValueError; both are listed to say what is meant). A script adds its own, e.g. EvaluationError.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ArtifactError, ValueError)

_EXPECTED = {dict: "a JSON object", list: "a JSON list"}
_REPR = reprlib.Repr()  # a huge argument stays one short line in the message
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 60, 60, 4, 4


def json_argument(text: str | None, flag: str, kind: type = dict, *, null: bool = False, file: bool = False,
                  items: type | None = None, what: str | None = None) -> Any:
    """The value of the argument `flag` (e.g. `--settings-json`), whose top level must be `kind` (dict or list).

    null: JSON null, or no text at all, is allowed and gives None. file: text that is not JSON may name a file
    holding the value. items: the type of every element of a list. what: how the error describes the expected
    value (default "a JSON object" / "a JSON list"). Every error is a ValueError naming the flag."""
    if null and (text is None or not text.strip()):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if not file:
            raise ValueError(f"{flag} is not valid JSON: {exc}") from exc
        if not Path(text.strip()).is_file():
            raise ValueError(f"{flag} is neither valid JSON ({exc}) nor an existing file: {text!r}") from exc
        value = read_json(text.strip(), f"{flag} file")
    if value is None and null:
        return None
    if not isinstance(value, kind) or (items is not None and not all(isinstance(v, items) for v in value)):
        expected = what or _EXPECTED.get(kind, kind.__name__)
        raise ValueError(f"{flag} must be {'null or ' if null else ''}{expected}, got {_REPR.repr(value)}")
    return value


def fail(script: str, exc: BaseException, code: int = 2) -> int:
    """Report an expected error as the scripts do: `<script>: error: <message>` on stderr; returns `code`."""
    print(f"{script}: error: {exc}", file=sys.stderr)
    return code


def run_script(script: str, body: Callable[[], int | None],
               errors: tuple[type[BaseException], ...] = EXPECTED_ERRORS) -> int:
    """Run a script's body and return its exit code (None counts as 0); an error of the `errors` types goes
    through `fail` (exit 2). Anything else propagates with its traceback: that is a bug, not bad input."""
    try:
        code = body()
    except errors as exc:
        return fail(script, exc)
    return 0 if code is None else code


def named_paths(items: list[str], flag: str) -> dict[str, str]:
    """`NAME=PATH` arguments (e.g. --data arc_easy=resources/data/arc_easy/validation.parquet) as a mapping."""
    pairs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} takes NAME=PATH pairs, got {item!r}")
        pairs[name] = path
    return pairs
