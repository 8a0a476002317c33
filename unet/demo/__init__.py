"""Synthetic scenes and the one-command demo."""
