"""The paper's two claims as runnable experiments on the bundled model (see runs.py)."""

from .runs import SKILLS, ExperimentConfig, knowledge, pareto, sequential, student_of

__all__ = ["SKILLS", "ExperimentConfig", "knowledge", "pareto", "sequential", "student_of"]
