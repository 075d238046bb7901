"""Post-processors: per-image refinements applied after prediction (the class-map rule, plugins' dense CRF)."""
