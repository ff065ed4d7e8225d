"""Model versions by name: other weights published under a name make a new version, so nothing scored
with the old weights is taken for the new ones'."""

from sqlalchemy.orm import sessionmaker

from storage import registry
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

    second = registry.publish(session, "studio", "tiny", _checkpoint(tmp_path / "b", b"other weights!"), store, {})
    assert second.id != first.id and second.name == "studio" and first.name.startswith("studio@")
    assert (registry.local_checkpoint(session, "studio") / "model.safetensors").read_bytes() == b"other weights!"
    assert (registry.local_checkpoint(session, first.name) / "model.safetensors").read_bytes() == b"first weights"
    session.close()
