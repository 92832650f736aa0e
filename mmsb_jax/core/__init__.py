"""Layers 0-4: pure, jittable pages, deltas, semirings, graph and propagation."""
