"""One module per pipeline stage; each exposes a ``STAGE`` object (see ``pipeline.stage``)."""
