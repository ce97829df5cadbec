"""ingest_gateway package."""
