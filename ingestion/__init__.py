"""dlt sources, one package per kind of source, driven by ``ingestion/sources.yml``."""
