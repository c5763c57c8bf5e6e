"""Teachers: sources of long chains of thought behind one interface (see ``base``)."""
from .api import APITeacher
from .base import FeedbackTeacher, Teacher, make_trace, split_thinking
from .prompts import PromptedTeacher

__all__ = ["APITeacher", "PromptedTeacher", "Teacher", "FeedbackTeacher", "make_trace", "split_thinking"]
