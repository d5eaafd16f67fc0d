"""dlt sources declared in ``sources.yml``, one package per kind; ``ingestion.run.ingest_source``
loads one.

Stands alone: nothing here imports the runner (``dusk``), and this package file imports nothing,
so reading a result type (:mod:`ingestion.result`) never loads dlt. The layering is checked by
import-linter (``make lint``)."""
