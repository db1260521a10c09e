"""Metric depth: Depth Anything V2 loading, batched inference and sampling of depth
maps at observations. Domain code: imports nothing from the engine."""
