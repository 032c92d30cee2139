"""Integrations: diffusers pipelines (and, later, transformers models)."""
