"""Scale statistics: frame and clip factors, their bootstrap, shrinkage and
uncertainty terms. Domain code: imports nothing from the engine."""
