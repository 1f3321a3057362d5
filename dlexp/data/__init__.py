"""Datasets: point tables (files or generated spirals) and image folders/zips."""
