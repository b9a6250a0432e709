"""Evaluations: math accuracy, distance to a teacher."""
