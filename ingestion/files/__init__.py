"""File sources: CSV, JSONL and Parquet files (optionally gzipped) dropped into a landing folder.

Each file is loaded **exactly once**, identified by its name *and the SHA-256 of its content*: the
ledger table ``_files`` in raw records every (file, hash) loaded, and it is written in the same dlt
load package as the file's rows, so a crash either loads both or neither. A file replaced with new
content has a new hash and is loaded again (its rows replace the old version's by primary key, or
all of the file's rows when the table has no key). Names and sizes are not trusted: a file copied
again with the same content is skipped, whatever its modification time.

A column the files carry but ``sources.yml`` does not declare is not dropped: it lands in raw as
the file's text (nested JSON values as JSON), and the summary names it, so it can be declared
with a type. A declared column a CSV header or Parquet file lacks fails the file; one absent from
every record of a JSONL file is loaded as NULL and named in the summary.

Every row is checked against the declared column types. A row that does not fit (wrong number of
fields, a number or date that does not parse, an empty key, invalid JSON) goes to ``_quarantine``
with the file, line and reason, and the rest of the file loads, unless more than
``max_bad_share`` of its rows are bad: then nothing of the file loads and the source fails naming
it. A file that cannot be read at all (a truncated gzip, bad encoding, a missing column) fails the
same way, never as an empty load. Failed files are tried again on the next run.
"""

from ingestion.files.landing import landing_dir, plan_files
from ingestion.files.source import files_source, prepare

__all__ = ["files_source", "landing_dir", "plan_files", "prepare"]
