"""Measuring results: pixel and structural similarity, prompt suites, grids, reports."""
