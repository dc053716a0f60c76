"""Benchmark data: the question-file format, synthetic benchmarks, converters.

Only the light question-file API is imported here; ``refocus.data.synth`` (PyAV, PIL) and
the converters are imported on use.
"""

from refocus.data.questions import QAItem, item_to_dict, load_questions, write_questions

__all__ = ["QAItem", "item_to_dict", "load_questions", "write_questions"]
