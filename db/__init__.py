"""Storage: SQLAlchemy 2 models, engine/session setup with migrations, and the queries the jobs need."""
