"""Helpers for the medical LLM fine-tuning course.

The notebooks hold the lesson; this package holds the plumbing they share. Importing it is
cheap (no torch) so that the first cell of a notebook runs even before anything is installed.
"""

from helpers.errors import CourseError, show_course_errors_briefly

__all__ = ["CourseError"]

show_course_errors_briefly()
