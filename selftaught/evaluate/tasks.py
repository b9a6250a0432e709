"""The `selftaught eval` tasks: each one's config class and the function that runs it."""

from __future__ import annotations

from selftaught.evaluate.config import CurationEvalConfig, DistanceEvalConfig, JudgeEvalConfig, MathEvalConfig
from selftaught.evaluate.curation import run_curation
from selftaught.evaluate.distance import run_distance
from selftaught.evaluate.judge import run_judge
from selftaught.evaluate.math_eval import run_math

TASKS = {
    "math": (MathEvalConfig, run_math),
    "judge": (JudgeEvalConfig, run_judge),
    "distance": (DistanceEvalConfig, run_distance),
    "curation": (CurationEvalConfig, run_curation),
}
