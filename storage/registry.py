"""Model versions by name: a fine-tuned model is published as a folder in object storage and a row in
SQL, and any worker turns the name back into a local folder it can load."""

from __future__ import annotations

import difflib
import hashlib
import re
import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from gvmgen.home import home
from gvmgen.model.config import PRESETS

from . import repository as repo
from .models import ModelVersion
from .objects import fetch_copy, open_store

EVERY_FILE = ("",)  # list() keeps keys ending in one of these


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: str) -> None:
    """A new model's name: letters, digits, '.', '_', '-' (a '/' would make it a path, and '@' marks
    the versions a name held before); never a preset's."""
    if not MODEL_NAME.fullmatch(name) or name in PRESETS:
        raise ValueError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (up to 100), "
                         f"not a preset's name ({', '.join(PRESETS)})")


def publish(session: Session, name: str, base: str, directory: Path, store_uri: str, metrics: dict) -> ModelVersion:
    """Upload the checkpoint folder to `store_uri`/models/`name`/<UTC time, to the microsecond>/ and
    register it under `name`.

    Results are keyed by model version, so other weights under a name published before make a new
    version: the old one keeps its folder and its outputs under `name@<its time>`, and a catalog scored
    with `name` is scored again, never given the old weights' music. The same weights again (a rerun
    that resumed at its end, or a training of an earlier version repeated) are that version again, its
    outputs kept. A version's folder is never written again."""
    fingerprint = _fingerprint(Path(directory))
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    earlier = [v for v in session.scalars(select(ModelVersion).where(ModelVersion.name.startswith(f"{name}@", autoescape=True)))
               if v.metrics.get("fingerprint") == fingerprint]
    same = row if row is not None and row.metrics.get("fingerprint") == fingerprint else next(iter(earlier), None)
    if row is not None and row is not same:
        _keep_as_earlier(session, row)
    if same is not None:
        same.name, same.base, same.metrics = name, base, {**metrics, "fingerprint": fingerprint}
        session.commit()
        return same
    created = repo.utcnow()
    folder = f"models/{name}/{created:%Y%m%dT%H%M%S.%f}"
    store = open_store(store_uri)
    for path in sorted(Path(directory).iterdir()):
        store.upload(path, f"{folder}/{path.name}")
    row = ModelVersion(name=name, base=base, checkpoint_uri=store.uri(folder), created_at=created,
                       metrics={**metrics, "fingerprint": fingerprint})
    session.add(row)
    session.commit()
    return row


def _keep_as_earlier(session: Session, row: ModelVersion) -> None:
    """Rename a version whose name now stands for other weights NAME@TIME (to the second, unless two
    versions share one): its outputs stay its own."""
    name = row.name
    taken = set(session.scalars(select(ModelVersion.name).where(ModelVersion.name.startswith(f"{name}@", autoescape=True))))
    row.name = next(n for n in (f"{name}@{row.created_at:%Y%m%dT%H%M%S}", f"{name}@{row.created_at:%Y%m%dT%H%M%S.%f}")
                    if n not in taken)
    session.flush()


def version_for(session: Session, spec: str) -> ModelVersion:
    """The model version that results made with `spec` (a model as users name it) are recorded under: a
    preset's, a published version's own, or a checkpoint folder's, named by its absolute path (so
    `ckpt` and `./ckpt` are one version) and told apart by its weights: other weights found in the
    folder later are a new version, and the earlier one keeps its outputs as PATH@TIME."""
    if spec in PRESETS:
        return repo.model_version(session, spec, f"preset:{spec}")
    published = session.scalar(select(ModelVersion).where(ModelVersion.name == spec)) if "/" not in spec else None
    if published is not None:
        return published
    folder = Path(spec).resolve()
    fingerprint = _fingerprint(folder)
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == str(folder)))
    if row is not None and row.metrics.get("fingerprint") == fingerprint:
        return row
    if row is not None:
        _keep_as_earlier(session, row)
    row = ModelVersion(name=str(folder), checkpoint_uri=folder.as_uri(), created_at=repo.utcnow(),
                       metrics={"fingerprint": fingerprint})
    session.add(row)
    session.commit()
    return row


def identity(session: Session, spec: str) -> str:
    """What a base model is, for telling trainings apart: a published version's fingerprint (its
    weights), else the preset's name or the folder as given."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == spec))
    return row.metrics["fingerprint"] if row is not None and "fingerprint" in row.metrics else spec


def _fingerprint(directory: Path) -> str:
    """What makes the model: its weights and configuration (not the loss curve drawn beside them)."""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.suffix in (".safetensors", ".json"):
            with open(path, "rb") as f:
                digest.update(path.name.encode() + hashlib.file_digest(f, "sha256").digest())
    return "sha256:" + digest.hexdigest()


def local_checkpoint(session: Session, name: str) -> Path | None:
    """A registered model's folder on this machine, or None when `name` is not a published model
    version. Downloaded once into GVMGEN_HOME/models/<its fingerprint>: versions never share a folder,
    whatever their names, stores or databases, and a download that does not hash to the fingerprint
    recorded at publishing is refused (a damaged or replaced copy in the store)."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if row is None or row.checkpoint_uri.startswith("preset:"):
        return None
    fingerprint = row.metrics.get("fingerprint")
    made = fingerprint or "uri:" + hashlib.sha256(row.checkpoint_uri.encode()).hexdigest()  # one published before fingerprints
    target = home() / "models" / made.replace(":", "-")
    store = open_store(row.checkpoint_uri)
    fetched = False
    for o in (o for o in store.list(EVERY_FILE) if "/" not in o.key):   # a version's own files, not a folder within
        if not ((target / o.key).is_file() and (target / o.key).stat().st_size == o.size):
            fetch_copy(store, o.key, target / o.key)
            fetched = True
    if fetched and fingerprint and _fingerprint(target) != fingerprint:
        shutil.rmtree(target, ignore_errors=True)
        raise ValueError(f"model {name}: {row.checkpoint_uri} no longer holds the weights published as {name} "
                         "(damaged or replaced since): publish it again")
    return target


def resolve(session: Session | None, spec: str) -> str:
    """What load_model takes for a model as users name it: a preset or a path unchanged, a published
    model version's local folder (its name wins over a folder of that name here). With no session, the
    database is opened only for a name that is neither a preset nor a path."""
    if spec in PRESETS or "/" in spec:
        return spec
    if session is None:
        from .db import connect

        try:
            factory = connect()
        except (ConnectionError, ValueError):
            if Path(spec).is_dir():   # no database to ask (generate needs none): the folder here
                return spec
            raise
        with factory() as session:
            return resolve(session, spec)
    local = local_checkpoint(session, spec)
    if local:
        return str(local)
    if Path(spec).is_dir():
        return spec
    names = list(session.scalars(select(ModelVersion.name).where(~ModelVersion.checkpoint_uri.startswith("preset:"))))
    close = difflib.get_close_matches(spec, [*names, *PRESETS], n=1)
    raise ValueError(f"model {spec!r}: neither a preset ({', '.join(PRESETS)}), a published model version, nor a "
                     f"checkpoint folder" + (f"; did you mean {close[0]}?" if close else "")
                     + " (gvmgen models list shows the published ones)")
