"""Model versions by name: other weights published under a name make a new version, so nothing scored
with the old weights is taken for the new ones'."""

import shutil
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from storage import registry
from storage import repository as repo
from storage.db import make_engine, upgrade


def _checkpoint(folder, weights: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "gvmgen_config.json").write_text("{}")
    (folder / "loss.png").write_bytes(weights[::-1] + b"drawn anew each time")
    return folder


def test_other_weights_under_a_published_name_are_a_new_version_and_the_old_one_stays(database_url, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("GVMGEN_HOME", str(tmp_path / "home"))
    upgrade(database_url)
    session = sessionmaker(make_engine(database_url), expire_on_commit=False)()
    store = str(tmp_path / "store")
    first = registry.publish(session, "studio", "tiny", _checkpoint(tmp_path / "a", b"first weights"), store, {"steps": 1})
    assert (registry.local_checkpoint(session, "studio") / "model.safetensors").read_bytes() == b"first weights"

    (tmp_path / "a" / "loss.png").write_bytes(b"another curve")       # the same weights: the same version
    assert registry.publish(session, "studio", "tiny", tmp_path / "a", store, {"steps": 2}).id == first.id

    second = registry.publish(session, "studio", "tiny", _checkpoint(tmp_path / "b", b"other weights"), store, {})
    assert second.id != first.id and second.name == "studio" and first.name.startswith("studio@")
    assert (registry.local_checkpoint(session, "studio") / "model.safetensors").read_bytes() == b"other weights"
    assert (registry.local_checkpoint(session, first.name) / "model.safetensors").read_bytes() == b"first weights"
    # each version in a folder of its own under the name, never written again
    folders = sorted((tmp_path / "store" / "models" / "studio").iterdir())
    assert [(f / "model.safetensors").read_bytes() for f in folders] == [b"first weights", b"other weights"]

    again = registry.publish(session, "studio", "tiny", tmp_path / "a", store, {"steps": 3})   # the first weights again
    assert (again.id, again.name, second.name[:7]) == (first.id, "studio", "studio@")     # that version, its outputs kept
    assert len(list((tmp_path / "store" / "models" / "studio").iterdir())) == 2             # nothing uploaded
    session.close()


def test_a_version_is_loaded_only_as_published(tmp_path, monkeypatch):
    """Two teams (two databases, two stores) on one machine publish "promo", weights of the same size:
    each gets its own (the machine's copy is keyed by the weights, not by the name or the size); a store
    copy damaged since publishing is refused, never loaded."""
    monkeypatch.setenv("GVMGEN_HOME", str(tmp_path / "home"))
    teams = []
    for team, weights in (("a", b"team a weights"), ("b", b"team b weights")):
        url = f"sqlite:///{tmp_path / team}.db"
        upgrade(url)
        session = sessionmaker(make_engine(url), expire_on_commit=False)()
        row = registry.publish(session, "promo", "tiny", _checkpoint(tmp_path / team, weights), str(tmp_path / f"store-{team}"), {})
        teams.append((session, row))
    assert [(registry.local_checkpoint(s, "promo") / "model.safetensors").read_bytes() for s, _ in teams] == [
        b"team a weights", b"team b weights"]

    session, row = teams[1]
    published = next((tmp_path / "store-b" / "models" / "promo").iterdir()) / "model.safetensors"
    published.write_bytes(b"rotten weights")                       # the same size, other bytes
    for copy in (tmp_path / "home" / "models").iterdir():
        shutil.rmtree(copy)                                        # a fresh machine
    with pytest.raises(ValueError, match="no longer holds the weights published as promo"):
        registry.local_checkpoint(session, "promo")
    for s, _ in teams:
        s.close()


def test_a_model_is_named_by_a_preset_a_published_name_or_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GVMGEN_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    session = sessionmaker(make_engine(url), expire_on_commit=False)()
    registry.publish(session, "promo", "tiny", _checkpoint(tmp_path / "a", b"weights"), str(tmp_path / "store"), {})
    assert registry.resolve(session, "tiny") == "tiny" and registry.resolve(session, "./x/y") == "./x/y"
    assert (Path(registry.resolve(session, "promo")) / "model.safetensors").read_bytes() == b"weights"
    with pytest.raises(ValueError, match="model 'promoo': neither a preset .*; did you mean promo\\?"):
        registry.resolve(session, "promoo")
    for bad in ("bad/name", "tiny", "a@b", ""):
        with pytest.raises(ValueError, match="model name"):
            registry.check_name(bad)
    # what a base is, for a training's digest: a preset stays its name once something scored with it
    assert registry.identity(session, "tiny") == "tiny"
    repo.model_version(session, "tiny", "preset:tiny")
    assert registry.identity(session, "tiny") == "tiny" and registry.identity(session, "promo").startswith("sha256:")
    session.close()


def test_results_are_recorded_under_one_version_per_preset_published_name_or_folder_weights(tmp_path, monkeypatch):
    """A checkpoint folder is one version however it is spelt (named by its absolute path, never taken
    for a preset), and other weights written into it later are another version, the earlier one kept
    as PATH@TIME with its outputs; presets and published names are their own versions."""
    monkeypatch.setenv("GVMGEN_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    session = sessionmaker(make_engine(url), expire_on_commit=False)()
    folder = _checkpoint(tmp_path / "ckpt", b"first weights")
    first = registry.version_for(session, "ckpt")
    assert (first.name, first.checkpoint_uri) == (str(folder), folder.as_uri())
    assert registry.version_for(session, "./ckpt").id == registry.version_for(session, str(folder)).id == first.id
    (folder / "loss.png").write_bytes(b"a curve drawn again")                    # not the weights: the same
    assert registry.version_for(session, "ckpt").id == first.id

    _checkpoint(folder, b"retrained weights")
    second = registry.version_for(session, "ckpt")
    assert second.id != first.id and second.name == str(folder) and first.name.startswith(f"{folder}@")

    tiny = registry.version_for(session, "tiny")
    assert (tiny.name, tiny.checkpoint_uri) == ("tiny", "preset:tiny")
    promo = registry.publish(session, "promo", "tiny", _checkpoint(tmp_path / "p", b"promo"), str(tmp_path / "store"), {})
    assert registry.version_for(session, "promo").id == promo.id
    session.close()
