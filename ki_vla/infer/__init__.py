"""Inference: the fast engine and how predicted chunks become a command stream."""
