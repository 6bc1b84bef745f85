"""Example pixelgen plugin: a focal frequency loss term (see ``plugin.py``)."""

from .focal_frequency import FocalFrequencyTerm, focal_frequency_distance

__all__ = ["FocalFrequencyTerm", "focal_frequency_distance"]
