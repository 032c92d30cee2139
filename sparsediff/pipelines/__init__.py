"""Pipelines: model registry, tiny offline models, samplers (see DESIGN.md)."""
