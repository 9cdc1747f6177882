"""codecarbon's grid-intensity files, copied unchanged from its wheel (see SOURCE.md; MIT, LICENSE)."""
