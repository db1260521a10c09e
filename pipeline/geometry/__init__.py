"""Camera geometry: pose conventions and relative metric poses, camera-control
metrics. Domain code: imports nothing from the engine."""
