"""Camera-control evaluation of generated videos: SfM trials, their metric scale and the
protocol's aggregation. Domain code: imports nothing from the engine."""
