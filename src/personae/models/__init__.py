"""Resolve and load base models and their add-ons; build the tiny test model."""
