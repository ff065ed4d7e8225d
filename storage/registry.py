"""Model versions by name: a fine-tuned model is published as a folder in object storage and a row in
SQL, and any worker turns the name back into a local folder it can load."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from gvmgen.home import home
from gvmgen.model.config import PRESETS

from . import repository as repo
from .models import ModelVersion
from .objects import fetch_copy, open_store

EVERY_FILE = ("",)  # list() keeps keys ending in one of these


def publish(session: Session, name: str, base: str, directory: Path, store_uri: str, metrics: dict) -> ModelVersion:
    """Upload the checkpoint folder to `store_uri`/models/`name`/ and register it under `name`."""
    store = open_store(store_uri)
    for path in sorted(Path(directory).iterdir()):
        store.upload(path, f"models/{name}/{path.name}")
    row = repo.model_version(session, name, checkpoint_uri=store.uri(f"models/{name}"), base=base)
    row.checkpoint_uri, row.base, row.metrics = store.uri(f"models/{name}"), base, metrics
    session.commit()
    return row


def local_checkpoint(session: Session, name: str) -> Path | None:
    """A registered model's folder on this machine (downloaded once into GVMGEN_HOME/models), or None
    when `name` is not a published model version."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if row is None or row.checkpoint_uri.startswith("preset:"):
        return None
    target = home() / "models" / name
    store = open_store(row.checkpoint_uri)
    objects = list(store.list(EVERY_FILE))
    for o in objects:
        if not ((target / o.key).is_file() and (target / o.key).stat().st_size == o.size):
            fetch_copy(store, o.key, target / o.key)
    return target


def resolve(session: Session, spec: str) -> str:
    """What load_model takes: a published model's local folder, else `spec` unchanged (a preset or path)."""
    local = local_checkpoint(session, spec) if "/" not in spec and spec not in PRESETS else None
    return str(local) if local else spec
