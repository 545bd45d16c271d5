"""Evaluations: task scorers, knowledge QA, retention probes, and a bridge to lm-evaluation-harness."""

from .knowledge import QAItem, load_knowledge, qa_accuracy, score_qa
from .retention import Probe, RetentionCallback, load_probes, mc_accuracy
from .scorers import SCORERS, contains_answer, science_answer, task_accuracy, toolcall_format

__all__ = ["QAItem", "load_knowledge", "qa_accuracy", "score_qa", "Probe", "RetentionCallback", "load_probes",
           "mc_accuracy", "SCORERS", "contains_answer", "science_answer", "task_accuracy", "toolcall_format"]
