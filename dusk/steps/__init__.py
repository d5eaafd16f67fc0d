"""The night's steps, in order: prepare, ingest, build, audit, publish, alert, report.

Each is a module with one entry function that takes the settings (and the warehouse connection
the night holds) and the record so far, and returns its part of the record. Steps never import
each other (import-linter checks it); what one step needs of another's it gets from the record.
"""
