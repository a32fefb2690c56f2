"""Data: sources, pipeline steps, tokenizers, encoding and the prepared-data store."""
