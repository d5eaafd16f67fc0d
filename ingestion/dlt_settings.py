"""The dlt settings ingestion relies on (dlt reads its configuration from the environment); no dlt
import here, so the runner's settings can name them without loading dlt."""

from __future__ import annotations

import os

DLT_ENVIRONMENT = {
    "RUNTIME__DLTHUB_TELEMETRY": "false",
    # The database source writes _dlt_load_id into its parquet files itself, so dlt imports them
    # unchanged instead of rewriting every file to add it.
    "NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID": "false",
    # A value the warehouse refuses (a terminal job failure) aborts the package: dlt deletes it,
    # records the load as aborted (its state row then never counts) and rewinds the local state,
    # so the cursor stays where raw is and the next night reads the rows again. Without this the
    # package stays pending and fails again every night: the source is stuck.
    "LOAD__AUTO_ABORT_ON_TERMINAL_ERROR": "true",
    # dlt gzips the files it writes between its steps (the records extracted, the load files
    # of formats other than parquet), and reads them back on the same disk: at 100x the demo,
    # the payments API's 300k records spent ~3 s of the source's ~20 in zlib
    "DATA_WRITER__DISABLE_COMPRESSION": "true",
}
"""The dlt settings ingestion relies on (dlt reads its configuration from the environment)."""


def configure_dlt() -> None:
    """Set :data:`DLT_ENVIRONMENT`, whatever the working directory's .dlt folder says (a value
    the user set in the environment is kept)."""
    for name, value in DLT_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
