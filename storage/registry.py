"""Model versions by name: a fine-tuned model is published as a folder in object storage and a row in
SQL, and any worker turns the name back into a local folder it can load."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy import select
from sqlalchemy.orm import Session

from gvmgen.home import home
from gvmgen.model.config import PRESETS

from . import repository as repo
from .models import ModelVersion
from .objects import fetch_copy, open_store

EVERY_FILE = ("",)  # list() keeps keys ending in one of these


def publish(session: Session, name: str, base: str, directory: Path, store_uri: str, metrics: dict) -> ModelVersion:
    """Upload the checkpoint folder to `store_uri`/models/`name`/ and register it under `name`.

    Results are keyed by model version, so other weights under a name published before make a new
    version: the old one keeps its files and its outputs under `name@<its time>`, and a catalog scored
    with `name` is scored again, never given the old weights' music. The same weights again (a rerun
    that resumed at its end) stay the same version."""
    fingerprint = _fingerprint(Path(directory))
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if row is not None and row.metrics.get("fingerprint") == fingerprint:
        row.base, row.metrics = base, {**metrics, "fingerprint": fingerprint}
        session.commit()
        return row
    folder = f"models/{name}"
    if row is not None:
        row.name = f"{name}@{row.created_at:%Y%m%dT%H%M%S}"
        folder = f"models/{name}@{repo.utcnow():%Y%m%dT%H%M%S}"
        session.flush()
    store = open_store(store_uri)
    for path in sorted(Path(directory).iterdir()):
        store.upload(path, f"{folder}/{path.name}")
    row = ModelVersion(name=name, base=base, checkpoint_uri=store.uri(folder), created_at=repo.utcnow(),
                       metrics={**metrics, "fingerprint": fingerprint})
    session.add(row)
    session.commit()
    return row


def _fingerprint(directory: Path) -> str:
    """What makes the model: its weights and configuration (not the loss curve drawn beside them)."""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.suffix in (".safetensors", ".json"):
            with open(path, "rb") as f:
                digest.update(path.name.encode() + hashlib.file_digest(f, "sha256").digest())
    return "sha256:" + digest.hexdigest()


def local_checkpoint(session: Session, name: str) -> Path | None:
    """A registered model's folder on this machine (downloaded once into GVMGEN_HOME/models, a folder
    per published version), or None when `name` is not a published model version."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if row is None or row.checkpoint_uri.startswith("preset:"):
        return None
    target = home() / "models" / unquote(row.checkpoint_uri.rstrip("/").rsplit("/", 1)[-1])
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
