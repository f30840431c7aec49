"""Operators of the Cutout.Pro provider."""
