"""The frozen model and what every stage shares: layer paths, the path executor (one path or a mixed-path
batch), model assets, atomic Parquet artifacts and their provenance."""
