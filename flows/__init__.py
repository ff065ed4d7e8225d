"""Prefect flows: thin orchestration over `gvmgen` (the work) and `storage` (where it lives)."""
