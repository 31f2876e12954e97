"""Datasets: pretraining corpora and downstream evaluation tasks."""
