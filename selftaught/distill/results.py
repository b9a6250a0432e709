"""What a `selftaught distill` run measured: the object `run_distillation` returns, the CLI prints, the model
card cites and the report reads back from eval_results.json (one shape for all four).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MODELS = ("teacher", "student_before", "student_after")  # the held-out evaluation's rows, in order
# Below this held-out accuracy a teacher is not one to learn the task from (the demo's scores 0 on MATH).
SKILLED_TEACHER = 0.5


@dataclass
class DistillResults:
    """Held-out metrics per model ({metric: number}; None where that model was not evaluated), the trained
    student's changes against its start (`evaluate.distance.HeldOutEvaluation.changes`), the warning a run
    that degenerated or drifted away ends with, and the Trainer's numeric statistics."""

    teacher: dict[str, float] | None = None
    student_before: dict[str, float] | None = None
    student_after: dict[str, float] | None = None
    comparisons: list[dict] | None = None
    warning: str | None = None
    train: dict[str, float] = field(default_factory=dict)
    # a teacher with another tokenizer: the alignment and why, the fallback loss, the share on each path
    cross_tokenizer: dict | None = None

    def evaluated(self) -> dict[str, dict[str, float]]:
        """{model: metrics} of the models the held-out evaluation measured, in `MODELS` order."""
        return {name: metrics for name in MODELS if (metrics := getattr(self, name)) is not None}

    def to_json(self) -> dict:
        """eval_results.json's object: the fields that hold something, in the order above."""
        parts = self.evaluated() | {"comparisons": self.comparisons, "warning": self.warning}
        written = {k: v for k, v in parts.items() if v is not None} | {"train": self.train}
        return written | ({"cross_tokenizer": self.cross_tokenizer} if self.cross_tokenizer else {})

    def task_note(self) -> str | None:
        """Said wherever the results are shown when the held-out rows have gold answers and the teacher gets
        fewer than half right: then the distances measure closeness to a teacher that cannot do the task,
        not skill at it, and the student's accuracy is the number to read."""
        accuracy = (self.teacher or {}).get("math_accuracy")
        if accuracy is None or accuracy >= SKILLED_TEACHER:
            return None
        return (
            f"The teacher answers {accuracy:.0%} of the held-out problems right, so getting closer to it is "
            "not skill at this task: read the student's math_accuracy (before, after and its change), not "
            "its distances. Distillation from a teacher that can do its task, with every method compared "
            "on accuracy: BENCHMARKS.md, bench/task_fidelity.py."
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def from_json(cls, value: dict) -> DistillResults:
        """Read back `to_json`'s object, leniently: a field of the wrong type (a file written by hand or by
        another version) is left out rather than failing the report that reads it."""

        def typed(key: str, kind: type):
            item = value.get(key)
            return item if isinstance(item, kind) else None

        return cls(
            **{name: typed(name, dict) for name in MODELS},
            comparisons=typed("comparisons", list),
            warning=typed("warning", str),
            train=typed("train", dict) or {},
            cross_tokenizer=typed("cross_tokenizer", dict),
        )
