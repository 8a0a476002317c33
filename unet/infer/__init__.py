"""Inference without Ray: the pooling-grid tile plan and the tile loop (`predict_image`)."""
