"""Hooks of the Cutout.Pro provider."""
