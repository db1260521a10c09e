"""Structure from motion with pycolmap: fixed-pose triangulation helpers (COLMAP scene
building) and incremental SfM trials. Domain code: imports nothing from the engine."""
