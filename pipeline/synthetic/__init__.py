"""Synthetic scenes with known answers: ray-cast rooms, trajectories, pose and depth
error models, and the bundled sample / stress set writers. Domain code: imports
nothing from the engine."""
