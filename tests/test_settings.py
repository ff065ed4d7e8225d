"""One settings object: what every entry point takes, what a run records, what the result key hashes."""

import itertools

import pytest

from gvmgen.settings import ScoreSettings
from storage.repository import settings_hash

# Every leaf of the settings, with a value other than its default.
CHANGES = {
    ("generation", "stitch"): "parallel", ("generation", "seed"): 7, ("generation", "window_s"): 20.0,
    ("generation", "overlap_s"): 6.0, ("generation", "cut_snap_s"): 2.0, ("generation", "condition"): "video",
    ("generation", "batch_size"): 4, ("generation", "guidance_scale"): 2.0, ("generation", "top_k"): 50,
    ("generation", "temperature"): 0.8,
    ("detection", "detector"): "adaptive", ("detection", "threshold"): 30.0, ("detection", "min_shot_s"): 1.0,
    ("target_lufs",): -23.0, ("ceiling_dbtp",): -2.0, ("mux_mode",): "mix", ("duck_db",): 6.0,
    ("delivery", "sample_rate"): 44100, ("delivery", "channels"): 1, ("delivery", "track_format"): "wav",
}


def _changed(path, value) -> dict:
    data = ScoreSettings().to_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def test_every_setting_is_covered_here():
    defaults = ScoreSettings().to_dict()
    leaves = {(k, sub) for k, v in defaults.items() if isinstance(v, dict) for sub in v} | \
             {(k,) for k, v in defaults.items() if not isinstance(v, dict)}
    assert leaves == set(CHANGES)


@pytest.mark.parametrize("path", list(CHANGES), ids=".".join)
def test_changing_any_setting_changes_the_result_key(path):
    changed = ScoreSettings.from_dict(_changed(path, CHANGES[path]))
    assert settings_hash(changed.to_dict()) != settings_hash(ScoreSettings().to_dict())


def test_the_same_settings_give_the_same_key_whatever_their_order_or_omissions():
    full = ScoreSettings().to_dict()
    reordered = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(list(full.items()))}
    assert settings_hash(reordered) == settings_hash(full)
    assert ScoreSettings.from_dict({}).to_dict() == full == ScoreSettings.from_dict(full).to_dict()
    assert len({settings_hash(_changed(path, value)) for path, value in CHANGES.items()}) == len(CHANGES)


def test_a_partial_mapping_keeps_the_defaults_it_leaves_out():
    settings = ScoreSettings.from_dict({"target_lufs": -23, "generation": {"seed": 5}})
    assert settings.target_lufs == -23 and settings.generation.seed == 5
    assert settings.generation.stitch == "continue" and settings.delivery.sample_rate == 48000


@pytest.mark.parametrize("data, message", [
    ({"loudness": -23, "speed": 2}, "^settings: unknown key(s) loudness, speed$"),
    ({"generation": {"sed": 1}}, "settings.generation: unknown key(s) sed"),
    ({"delivery": 48000}, "settings.delivery must be a mapping"),
    ({"target_lufs": -4.9}, "the loudness target must lie between -40 and -5 LUFS, got -4.9"),
    ({"target_lufs": -40.1}, "the loudness target must lie between -40 and -5 LUFS"),
    ({"ceiling_dbtp": 0.5}, "the true-peak ceiling must lie between -9 and 0 dBTP"),
    ({"duck_db": -1}, "the duck must lie between 0 and 60 dB"),
    ({"mux_mode": "blend"}, "the mux mode must be one of replace, mix, got 'blend'"),
    ({"delivery": {"channels": 6}}, "channels must be 1 or 2"),
    ({"delivery": {"sample_rate": 7999}}, "the sample rate must lie between 8000 and 192000 Hz, got 7999"),
    ({"delivery": {"sample_rate": 192001}}, "the sample rate must lie between 8000 and 192000 Hz"),
    ({"delivery": {"track_format": "mp3"}}, "the track format must be one of flac, wav, got 'mp3'"),
    ({"detection": {"detector": "histogram"}}, "unknown shot detector"),
    ({"detection": {"min_shot_s": -1}}, "minimum shot length"),
    ({"detection": {"threshold": 0}}, "threshold must be positive"),
])
def test_a_bad_setting_is_refused_by_name(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ScoreSettings.from_dict(data)


@pytest.mark.parametrize("data", [{"target_lufs": -40.0}, {"target_lufs": -5.0}, {"ceiling_dbtp": -9.0},
                                  {"ceiling_dbtp": 0.0}, {"duck_db": 0.0}, {"duck_db": 60.0},
                                  {"delivery": {"sample_rate": 8000}}, {"delivery": {"sample_rate": 192000}}])
def test_the_ends_of_every_range_are_accepted(data):
    assert ScoreSettings.from_dict(data).to_dict() == _merged(ScoreSettings().to_dict(), data)


def _merged(base: dict, change: dict) -> dict:
    return {k: _merged(v, change[k]) if isinstance(v, dict) and k in change else change.get(k, v) for k, v in base.items()}


def test_settings_survive_a_round_trip_through_json():
    import json

    for path, value in itertools.islice(CHANGES.items(), None):
        data = _changed(path, value)
        assert ScoreSettings.from_dict(json.loads(json.dumps(data))).to_dict() == data


def test_the_key_is_the_sha256_of_the_canonical_json():
    # SHA-256 of the two bytes "{}" is 44136fa3...; the key keeps its first 32 hex digits
    assert settings_hash({}) == "44136fa355b3678a1146ad16f7e8649e"


def test_the_settings_import_no_heavy_library():
    """The command line checks its options through these settings before any work: importing them must
    not import torch or the audio libraries (seconds each), or a mistyped option takes ten seconds to say so."""
    import subprocess
    import sys

    heavy = ("torch", "transformers", "scipy", "pyloudnorm", "cv2", "scenedetect")
    done = subprocess.run([sys.executable, "-c", f"import sys, gvmgen.settings; print([m for m in {heavy!r} if m in sys.modules])"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
