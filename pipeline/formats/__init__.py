"""Input formats: RealEstate10K pose files, RGB-D sequences (7-Scenes layout), and
frame decoding. Domain code: imports nothing from the engine."""
