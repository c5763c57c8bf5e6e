"""Teachers: sources of long chains of thought behind one interface (see ``base``)."""
from .base import FeedbackTeacher, Teacher, make_trace, split_thinking

__all__ = ["Teacher", "FeedbackTeacher", "make_trace", "split_thinking"]
