"""Instances: per-block labelling (actor side) and the seam merge (driver side)."""
