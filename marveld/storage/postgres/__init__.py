"""The PostgreSQL backend of the store: the one place that knows psycopg.

Its schema (``schema.py``) and connections (``database.py``) stand beside the SQLite
backend's (``marveld/storage/schema.py``, ``database.py``), statement for statement, so
the two read side by side. psycopg is an optional extra (``marveld[postgres]``): nothing
imports this package unless ``database.url`` is set.
"""
