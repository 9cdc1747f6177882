"""Data files the model core reads at run time (package data, never downloaded)."""
