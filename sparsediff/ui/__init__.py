"""Gradio app (see DESIGN.md)."""
