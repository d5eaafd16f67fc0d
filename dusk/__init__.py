"""dusk: a SQL-first nightly ELT runner around dlt and dbt."""

__version__ = "0.1.0"
