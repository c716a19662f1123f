"""Measuring synthetic images against real ones (`medsynth evaluate`).

Public API: :func:`evaluate` (load, measure, write the report), :func:`evaluate_sets` (on loaded
:class:`ImageSet` objects), :class:`EvaluationConfig`, :class:`EvaluationReport`. The metrics live
in :mod:`.metrics` (numpy/scipy only), the Fréchet feature space in :mod:`.features`.
"""

from medsynth.evaluation.evaluate import EvaluationConfig, EvaluationReport, evaluate, evaluate_sets
from medsynth.evaluation.inputs import ImageSet

__all__ = ["EvaluationConfig", "EvaluationReport", "ImageSet", "evaluate", "evaluate_sets"]
