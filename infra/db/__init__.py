"""The database: table definitions (tables.py), migrations (migrate.py), creating databases (admin.py)."""
