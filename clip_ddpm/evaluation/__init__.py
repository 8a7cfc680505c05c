"""Scores and pictures computed on host arrays: metrics, reports, image grids."""
