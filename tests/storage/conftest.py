"""The storage tests' fixtures (a real PostgreSQL server, `database_url` of each kind, the S3 endpoint) live
in tests/conftest.py: the flow tests use them too."""
