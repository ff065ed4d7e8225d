"""Every supported checkpoint format loads into a model with identical outputs; pickles are refused."""

import json
import os
import pickle
import re

import pytest
import torch
import yaml
from transformers import (CLIPVisionModelWithProjection, MusicgenConfig, MusicgenForConditionalGeneration,
                          T5Config)

from gvmgen.model.checkpoints import (BrokenCheckpoint, UnhonouredConfig, UnsafeCheckpoint, WeightsNotFound,
                                      fresh_model, load_audiocraft, load_hf, load_model, save_model)
from gvmgen.model.config import GVMGenConfig, preset
from gvmgen.model.gvmgen import GVMGen


def _randomised(parts=None, seed=123, config=None):
    """A tiny model whose weights differ from a fresh one, so a loader that loads nothing fails."""
    model = fresh_model(config or preset("tiny"))
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if parts is None or name.startswith(parts):
            p.data = torch.randn(p.shape, generator=g) * 0.05
    for name, b in model.named_buffers():
        if name.endswith("codebook.embed") and (parts is None or name.startswith(parts)):
            b.data = torch.randn(b.shape, generator=g)
    return model.eval()


def _outputs(model):
    model.eval()
    g = torch.Generator().manual_seed(7)
    frames = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8, generator=g)
    codes = torch.randint(0, 2048, (1, 4, 12), generator=g)
    with torch.no_grad():
        tokens = model.encode_video_frames(frames)
        logits = model.lm_logits(codes, tokens[None], torch.ones(1, 5, dtype=torch.bool))
        audio = model.decode_audio(codes)
    return tokens, logits, audio


def _assert_same_outputs(a, b):
    for x, y in zip(_outputs(a), _outputs(b)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_our_format_round_trips(tmp_path):
    model = _randomised()
    save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["gvmgen_config.json", "model.safetensors"]
    _assert_same_outputs(model, load_model(tmp_path / "ckpt"))


def _write_hf(model, root):
    clip = CLIPVisionModelWithProjection(model.vision.config)
    clip.vision_model.load_state_dict(model.vision.state_dict())
    clip.visual_projection.load_state_dict(model.visual_projection.state_dict())
    clip.save_pretrained(root / "clip")
    text = T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=model.codec.config.to_dict(),
                            decoder=model.lm.config.to_dict())
    musicgen = MusicgenForConditionalGeneration(config)
    musicgen.decoder.load_state_dict(model.lm.state_dict())
    musicgen.audio_encoder.load_state_dict(model.codec.state_dict())
    musicgen.save_pretrained(root / "musicgen")


def test_hugging_face_format_loads_pretrained_parts(tmp_path):
    # The pretrained parts differ from a fresh model; the new layers are fresh in both.
    model = _randomised(parts=("vision.", "visual_projection.", "lm.", "codec."))
    _write_hf(model, tmp_path)
    _assert_same_outputs(model, load_hf(tmp_path / "clip", tmp_path / "musicgen", base=preset("tiny")))


# -- audiocraft export, written here from the official key names ------------------------------------------
def _to_openai_clip(model) -> dict:
    out = {}
    for k, v in model.vision.state_dict().items():
        k = (k.replace("embeddings.patch_embedding.", "conv1.").replace("embeddings.class_embedding", "class_embedding")
             .replace("embeddings.position_embedding.weight", "positional_embedding")
             .replace("pre_layrnorm.", "ln_pre.").replace("post_layernorm.", "ln_post.")
             .replace("encoder.layers.", "transformer.resblocks.").replace(".layer_norm1.", ".ln_1.")
             .replace(".layer_norm2.", ".ln_2.").replace(".mlp.fc1.", ".mlp.c_fc.").replace(".mlp.fc2.", ".mlp.c_proj.")
             .replace(".self_attn.", ".attn."))
        out[k] = v
    out["proj"] = model.visual_projection.weight.t()
    if model.feature_transformation is None:  # the official code without its Q-Former: the CLS path
        return _fuse_qkv(out, r"\.attn\.")
    out["query_tokens"] = model.feature_transformation.queries
    for k, v in model.feature_transformation.state_dict().items():
        if k == "queries":
            continue
        k = (k.replace("norm.", "layernorm.", 1) if k.startswith("norm.") else k)
        k = (k.replace("layers.", "encoder.layer.").replace(".ffn_in.", ".intermediate_query.dense.")
             .replace(".ffn_out.", ".output_query.dense.").replace(".ffn_norm.", ".output_query.LayerNorm."))
        out["qformer." + k] = v
    return _fuse_qkv(out, r"\.attn\.")


def _fuse_qkv(state, where):
    out = {}
    for k, v in state.items():
        m = re.match(r"(.*)\.q_proj\.(weight|bias)$", k)
        if m and re.search(where, k):
            out[f"{m.group(1)}.in_proj_{m.group(2)}"] = torch.cat(
                [v, state[f"{m.group(1)}.k_proj.{m.group(2)}"], state[f"{m.group(1)}.v_proj.{m.group(2)}"]])
        elif not re.search(r"\.[kv]_proj\.", k) or not re.search(where, k):
            out[k] = v
    return out


def _to_audiocraft_lm(model) -> dict:
    out = {}
    for k, v in model.lm.state_dict().items():
        k = (k.replace("model.decoder.embed_tokens.", "emb.").replace("model.decoder.layer_norm.", "out_norm.")
             .replace("model.decoder.layers.", "transformer.layers.").replace("lm_heads.", "linears.")
             .replace(".encoder_attn_layer_norm.", ".norm_cross.").replace(".encoder_attn.", ".cross_attention.")
             .replace(".self_attn_layer_norm.", ".norm1.").replace(".final_layer_norm.", ".norm2.")
             .replace(".fc1.", ".linear1.").replace(".fc2.", ".linear2."))
        out[k] = v
    return _fuse_qkv(out, r"\.(self_attn|cross_attention)\.")


def _to_audiocraft_encodec(model) -> dict:
    out = {}
    for k, v in model.codec.state_dict().items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g").replace(".parametrizations.weight.original1", ".weight_v")
        k = re.sub(r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook.", k)
        k = re.sub(r"^(encoder|decoder)\.layers\.(\d+)\.(block|shortcut)", r"\1.model.\2.\3", k)
        k = re.sub(r"^(encoder|decoder)\.layers\.(\d+)\.lstm\.", r"\1.model.\2.lstm.", k)
        k = re.sub(r"\.(block\.\d+|shortcut)\.conv\.", r".\1.conv.conv.", k)
        conv = "convtr.convtr" if k.startswith("decoder.") and isinstance(_module(model.codec, k), torch.nn.ConvTranspose1d) else "conv.conv"
        k = re.sub(r"^(encoder|decoder)\.layers\.(\d+)\.conv\.", rf"\1.model.\2.{conv}.", k)
        out[k] = v
    return out


def _module(codec, audiocraft_key):
    m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.", audiocraft_key)
    return getattr(codec, m.group(1)).layers[int(m.group(2))].conv if m else None


def _xp_lm(model, visual=True) -> str:
    lm = model.lm.config
    cfg = {"transformer_lm": {"dim": lm.hidden_size, "num_heads": lm.num_attention_heads,
                              "num_layers": lm.num_hidden_layers, "n_q": 4, "card": 2048, "hidden_scale": 4},
           "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0}}
    if visual:
        c = model.config
        cfg["conditioners"] = {"visual_content": {"model": "video", "video": {"name": "ViT-L/14@336px", "qformer": {
            "query_num": c.num_queries, "qformer_layers": c.ft_layers, "layer_norm_eps": 1e-12,
            "cross_attention_frequency": c.ft_cross_attention_every, "hidden_dropout_prob": 0.1}}}}
    return yaml.safe_dump(cfg)


def _xp_codec(model) -> str:
    c = model.codec.config
    return yaml.safe_dump({"sample_rate": 32000, "channels": 1, "rvq": {"n_q": 4, "bins": 2048},
                           "seanet": {"dimension": c.hidden_size, "n_filters": c.num_filters, "ratios": list(c.upsampling_ratios),
                                      "n_residual_layers": 1, "lstm": c.num_lstm_layers, "true_skip": True,
                                      "causal": False, "norm": "weight_norm", "pad_mode": "reflect"}})


def _write_official_export(model, directory, xp=None, attention_key="{}"):
    """`model` as the official release stores it; `attention_key` spells the LM's attention modules
    ("{}.mha" for audiocraft's non-custom attention)."""
    visual = "condition_provider.conditioners.visual_content."
    state = {re.sub(r"\.(self_attn|cross_attention)\.", lambda m: "." + attention_key.format(m.group(1)) + ".", k): v
             for k, v in _to_audiocraft_lm(model).items()}
    state.update({f"{visual}clip.visual.{k}": v for k, v in _to_openai_clip(model).items()})
    state[f"{visual}output_proj.weight"] = model.output_proj.weight
    state[f"{visual}output_proj.bias"] = model.output_proj.bias
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"xp.cfg": xp or _xp_lm(model), "best_state": state, "exported": True}, directory / "state_dict.bin")
    torch.save({"xp.cfg": _xp_codec(model), "best_state": _to_audiocraft_encodec(model), "exported": True},
               directory / "compression_state_dict.bin")
    return directory


def test_official_gvmgen_export_loads_with_identical_outputs(tmp_path):
    model = _randomised()
    loaded = load_model(_write_official_export(model, tmp_path))
    assert loaded.config.num_queries == model.config.num_queries
    assert loaded.config.feature_transformation == "official"
    _assert_same_outputs(model, loaded)


def test_an_export_with_mha_attention_keys_loads_the_same_weights(tmp_path):
    model = _randomised()
    custom = load_model(_write_official_export(model, tmp_path / "custom"))
    wrapped = _write_official_export(model, tmp_path / "mha", attention_key="{}.mha")
    keys = torch.load(wrapped / "state_dict.bin", weights_only=True)["best_state"]
    assert "transformer.layers.0.self_attn.mha.in_proj_weight" in keys
    assert "transformer.layers.0.cross_attention.mha.out_proj.weight" in keys
    mha = load_model(wrapped)
    a, b = custom.state_dict(), mha.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_export_without_its_qformer_loads_as_the_cls_path(tmp_path):
    config = preset("tiny")
    config.feature_transformation = "cls"
    model = fresh_model(config).eval()
    loaded = load_model(_write_official_export(model, tmp_path))
    assert loaded.config.feature_transformation == "cls" and loaded.feature_transformation is None
    _assert_same_outputs(model, loaded)


def test_the_exports_own_settings_are_applied_and_the_unsupported_ones_named(tmp_path):
    model = _randomised()
    xp = yaml.safe_load(_xp_lm(model))
    xp["transformer_lm"].update(dropout=0.0, attention_dropout=None, norm_first=False)
    xp["fuser"] = {"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 2.0, "cross": ["visual_content"]}
    xp["conditioners"]["visual_content"]["video"]["qformer"]["query_type"] = "sum"
    xp["dataset"] = {"segment_duration": 32}
    with pytest.warns(UnhonouredConfig, match="transformer_lm.norm_first is False"):
        loaded = load_model(_write_official_export(model, tmp_path, xp=yaml.safe_dump(xp)))
    c = loaded.config
    assert c.lm["dropout"] == 0.0 and c.lm["attention_dropout"] == 0.0 and loaded.lm.config.dropout == 0.0
    assert c.cross_attention_pos_emb and c.cross_attention_pos_emb_scale == 2.0
    assert c.ft_query_pooling == "sum" and c.segment_duration == 32.0
    assert c.feature_transformation == "official" and c.num_queries == model.config.num_queries


def test_plain_musicgen_export_takes_clip_and_encodec_from_hugging_face(tmp_path):
    model = _randomised(parts=("vision.", "visual_projection.", "lm.", "codec."))
    _write_hf(model, tmp_path)
    model.codec.save_pretrained(tmp_path / "encodec")
    state = _to_audiocraft_lm(model)
    state["condition_provider.conditioners.description.output_proj.weight"] = torch.zeros(64, 8)  # T5's, unused
    torch.save({"xp.cfg": _xp_lm(model, visual=False), "best_state": state}, tmp_path / "state_dict.bin")
    torch.save({"pretrained": str(tmp_path / "encodec"), "exported": True}, tmp_path / "compression_state_dict.bin")
    _assert_same_outputs(model, load_audiocraft(tmp_path, clip_source=str(tmp_path / "clip"), base=preset("tiny")))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_a_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "state_dict.bin", "wb") as f:
        pickle.dump({"xp.cfg": "{}", "best_state": {}, "payload": _Exploit(marker)}, f)
    with pytest.raises(UnsafeCheckpoint, match="refusing to load"):
        load_model(tmp_path)
    assert not marker.exists()


def test_missing_pretrained_weights_name_the_file_the_place_and_the_fix():
    with pytest.raises(WeightsNotFound) as err:
        load_model("small")
    message = str(err.value)
    assert "openai/clip-vit-large-patch14-336" in message
    assert "model.safetensors" in message and "huggingface" in message
    assert "gvmgen weights fetch small" in message


def test_a_directory_that_is_no_checkpoint_is_named(tmp_path):
    with pytest.raises(WeightsNotFound, match=str(tmp_path)):
        load_model(tmp_path)


# -- a checkpoint of ours, broken as a copy of one can be: each error is one line naming the file ---------------
@pytest.fixture
def saved(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_a_configuration_that_is_not_json_is_named_with_where_it_breaks(saved):
    config = saved / "gvmgen_config.json"
    config.write_text("{\n")
    with pytest.raises(BrokenCheckpoint) as err:
        load_model(saved)
    assert str(err.value) == f"{config}: not valid JSON (line 2, column 1: Expecting property name enclosed in double quotes)"


def test_a_configuration_of_unknown_fields_is_named(saved):
    config = saved / "gvmgen_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "bogus": 1}))
    with pytest.raises(BrokenCheckpoint) as err:
        load_model(saved)
    assert str(err.value) == f"{config}: not a GVMGen configuration (unknown GVMGen config fields: ['bogus'])"


@pytest.mark.parametrize("kept", [0.0, 0.5, 0.99])
def test_cut_off_weights_are_named(saved, kept):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:int(weights.stat().st_size * kept)])
    with pytest.raises(BrokenCheckpoint) as err:
        load_model(saved)
    assert str(err.value).startswith(f"{weights}: not a complete safetensors file (") and "\n" not in str(err.value)


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split(", "))


@pytest.mark.parametrize("section, field", [("lm", "hidden_size"), (None, "num_queries")])
def test_weights_that_do_not_fit_their_configuration_name_the_first_mismatches(saved, tiny_model, section, field):
    """One line: the file, then the first three mismatched weights with both shapes, then how many more."""
    config, weights = saved / "gvmgen_config.json", saved / "model.safetensors"
    settings = json.loads(config.read_text())
    (settings[section] if section else settings)[field] //= 2
    config.write_text(json.dumps(settings))
    with pytest.raises(WeightsNotFound) as err:
        load_model(saved)
    message = str(err.value)
    assert message.startswith(f"{weights}: the model weights do not fit its configuration (gvmgen_config.json): ")
    theirs, ours = tiny_model.state_dict(), GVMGen(GVMGenConfig.from_dict(settings)).state_dict()
    expected = {k: (tuple(v.shape), tuple(ours[k].shape)) for k, v in theirs.items() if v.shape != ours[k].shape}
    named = re.findall(r"size mismatch for ([\w.]+): checkpoint \(([\d, ]*)\), model \(([\d, ]*)\)", message)
    assert named and {k: (_dims(a), _dims(b)) for k, a, b in named} == {k: expected[k] for k, _, _ in named}
    assert len(named) == min(3, len(expected)) and "\n" not in message
    assert message.endswith(f"; ... ({len(expected) - 3} more)") == (len(expected) > 3)


# -- the official names, written down from the official code (official_gvmgen_keys.txt) --------------------
OFFICIAL_KEYS = os.path.join(os.path.dirname(__file__), "official_gvmgen_keys.txt")


def official_names(section: str, sizes: dict, counts: dict) -> dict[str, tuple | None]:
    """The official names of one file of the release, expanded for the given sizes: {name: shape}
    (a shape's None entries, and a None shape, are not checked)."""
    lines, inside = [], False
    with open(OFFICIAL_KEYS) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.startswith("["):
                inside = line == f"[{section}]"
            elif line and inside:
                lines.append(line.split())
    fills = {"k": range(counts["k"]), "l": range(counts["l"]), "r": range(counts["r"]), "q": range(counts["q"]),
             "x": range(0, counts["q"], counts["cf"]), "w": ["weight_g", "weight_v", "bias"],
             "lstm": [f"{p}_l{n}" for n in range(counts["n"]) for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]}
    names = {}
    for template, *spec in lines:
        shape = None if spec == ["-"] else tuple(None if s == "-" else eval(s, {}, dict(sizes)) for s in spec)
        expanded = [template]
        for field, values in fills.items():
            expanded = [n.replace("{%s}" % field, str(v)) for n in expanded for v in values] \
                if any("{%s}" % field in n for n in expanded) else expanded
        names.update({n: shape for n in expanded})
    return names


def _tiny_sizes(model) -> tuple[dict, dict]:
    c, lm, clip = model.config, model.config.lm, model.config.clip
    grid = clip["image_size"] // clip["patch_size"]
    sizes = dict(D=lm["hidden_size"], F=lm["ffn_dim"], C=lm["vocab_size"], W=clip["hidden_size"], G=grid ** 2 + 1,
                 P=clip["patch_size"], E=clip["projection_dim"], Q=c.num_queries)
    counts = dict(k=lm["num_codebooks"], l=lm["num_hidden_layers"], r=clip["num_hidden_layers"], q=c.ft_layers,
                  cf=c.ft_cross_attention_every, n=c.codec["num_lstm_layers"])
    return sizes, counts


def _assert_official(state: dict, expected: dict):
    assert sorted(state) == sorted(expected), (sorted(set(state) - set(expected))[:5], sorted(set(expected) - set(state))[:5])
    for name, shape in expected.items():
        if shape is not None:
            assert len(state[name].shape) == len(shape) and all(
                want is None or got == want for got, want in zip(state[name].shape, shape)), (name, state[name].shape, shape)


def test_the_export_fixture_spells_every_key_as_the_official_code_does(tmp_path):
    """The fixtures above write the official release from our weights; their names and shapes must be the
    official ones, read from the official code, or a loader that agrees with them proves nothing."""
    config = preset("tiny")
    config.clip["intermediate_size"] = 4 * config.clip["hidden_size"]   # OpenAI's CLIP MLP is always 4x wide
    model = _randomised(config=config)
    sizes, counts = _tiny_sizes(model)
    _write_official_export(model, tmp_path)
    lm = torch.load(tmp_path / "state_dict.bin", weights_only=True)["best_state"]
    _assert_official(lm, official_names("state_dict.bin", sizes, counts))
    codec = torch.load(tmp_path / "compression_state_dict.bin", weights_only=True)["best_state"]
    _assert_official(codec, official_names("compression_state_dict.bin", dict(C=2048), counts))
    for name, g in codec.items():   # torch's weight_norm: one norm per output row (dim 0 of the weight)
        if name.endswith("weight_g"):
            v = codec[name.replace("weight_g", "weight_v")]
            assert g.shape == (v.shape[0],) + (1,) * (v.dim() - 1), name


# A reference forward pass of the official model, written from the official code's forward methods
# (module/encoder/model.py VisionTransformer/QFormer*; conditioners.py CLIPConditioner; models/lm.py
# LMModel.forward; modules/transformer.py StreamingTransformer(Layer).forward, create_sin_embedding),
# over the official names: the loaded model must compute the same.
def _mha(state, prefix, q, kv, heads, causal=False):
    """nn.MultiheadAttention / audiocraft's custom attention: fused q, k, v in-projection, batch first."""
    w, b = state[f"{prefix}.in_proj_weight"], state.get(f"{prefix}.in_proj_bias")
    bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
    wq, wk, wv = w.chunk(3)
    split = lambda x: x.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
    q, k, v = (split(torch.nn.functional.linear(x, wt, bt)) for x, wt, bt in ((q, wq, bq), (kv, wk, bk), (kv, wv, bv)))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).flatten(2)
    return torch.nn.functional.linear(out, state[f"{prefix}.out_proj.weight"], state.get(f"{prefix}.out_proj.bias"))


def _ln(state, prefix, x, eps=1e-5):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps)


def _lin(state, prefix, x):
    return torch.nn.functional.linear(x, state[f"{prefix}.weight"], state.get(f"{prefix}.bias"))


def _official_visual(state, frames, xp):
    """uint8 (N, S, S, 3) frames -> (N, D): CLIP's normalisation (module/encoder/encoder.py _transform), the
    VisionTransformer with its Q-Former, then the conditioner's output_proj."""
    s = {k.removeprefix("condition_provider.conditioners.visual_content."): v for k, v in state.items()}
    v = {k.removeprefix("clip.visual."): t for k, t in s.items() if k.startswith("clip.visual.")}
    qf = xp["conditioners"]["visual_content"]["video"]["qformer"]
    eps, every = float(qf["layer_norm_eps"]), qf["cross_attention_frequency"]
    width = v["conv1.weight"].shape[0]
    heads = width // 64
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    x = ((frames.float() / 255 - mean) / std).permute(0, 3, 1, 2)
    x = torch.nn.functional.conv2d(x, v["conv1.weight"], stride=v["conv1.weight"].shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([v["class_embedding"].expand(len(x), 1, -1), x], dim=1) + v["positional_embedding"]
    x = _ln(v, "ln_pre", x)
    blocks = sorted({int(k.split(".")[2]) for k in v if k.startswith("transformer.resblocks.")})
    for i in blocks:
        p = f"transformer.resblocks.{i}"
        h = _ln(v, f"{p}.ln_1", x)
        x = x + _mha(v, f"{p}.attn", h, h, heads)
        h = _lin(v, f"{p}.mlp.c_fc", _ln(v, f"{p}.ln_2", x))
        x = x + _lin(v, f"{p}.mlp.c_proj", h * torch.sigmoid(1.702 * h))         # QuickGELU
    hidden = _ln(v, "qformer.layernorm", v["query_tokens"].expand(len(x), -1, -1), eps)
    layers = sorted({int(k.split(".")[3]) for k in v if k.startswith("qformer.encoder.layer.")})
    for j in layers:
        p = f"qformer.encoder.layer.{j}"
        a = _ln(v, f"{p}.self_output.LayerNorm", _lin(v, f"{p}.self_output.dense", _mha(v, f"{p}.attention", hidden, hidden, heads)), eps)
        if j % every == 0:
            a = _ln(v, f"{p}.cross_output.LayerNorm", _lin(v, f"{p}.cross_output.dense", _mha(v, f"{p}.crossattention", a, x, heads)), eps)
        inter = torch.nn.functional.gelu(_lin(v, f"{p}.intermediate_query.dense", a))
        hidden = _ln(v, f"{p}.output_query.LayerNorm", _lin(v, f"{p}.output_query.dense", inter), eps) + a
    pooled = _ln(v, "ln_post", hidden.mean(dim=1)) @ v["proj"]
    return _lin(s, "output_proj", pooled)


def _official_lm(state, codes, condition, xp):
    """(B, K, T) codes and (B, F, D) condition -> (B, K, T, card) logits (norm_first, sin positions)."""
    lm = xp["transformer_lm"]
    x = sum(torch.nn.functional.embedding(codes[:, k], state[f"emb.{k}.weight"]) for k in range(codes.shape[1]))
    half = x.shape[-1] // 2
    phase = torch.arange(x.shape[1], dtype=torch.float32)[:, None] / 10000 ** (torch.arange(half) / (half - 1))
    x = x + torch.cat([phase.cos(), phase.sin()], dim=-1)
    for i in range(lm["num_layers"]):
        p = f"transformer.layers.{i}"
        h = _ln(state, f"{p}.norm1", x)
        x = x + _mha(state, f"{p}.self_attn", h, h, lm["num_heads"], causal=True)
        x = x + _mha(state, f"{p}.cross_attention", _ln(state, f"{p}.norm_cross", x), condition, lm["num_heads"])
        x = x + _lin(state, f"{p}.linear2", torch.nn.functional.gelu(_lin(state, f"{p}.linear1", _ln(state, f"{p}.norm2", x))))
    out = _ln(state, "out_norm", x)
    return torch.stack([_lin(state, f"linears.{k}", out) for k in range(codes.shape[1])], dim=1)


def test_an_export_built_from_the_official_names_computes_what_the_official_code_computes(tmp_path):
    model = _randomised()
    sizes, counts = _tiny_sizes(model)
    g = torch.Generator().manual_seed(11)
    state = {}
    for name, shape in official_names("state_dict.bin", sizes, counts).items():
        value = torch.randn(shape, generator=g) * (0.5 if name.endswith(("embedding", "query_tokens")) else 0.1)
        if re.search(r"(norm\w*|LayerNorm|ln_\w+)\.weight$", name):
            value = 1 + value
        state[name] = value
    c = model.config
    xp = {"transformer_lm": {"dim": sizes["D"], "num_heads": c.lm["num_attention_heads"], "num_layers": counts["l"],
                             "hidden_scale": sizes["F"] // sizes["D"], "n_q": counts["k"], "card": sizes["C"],
                             "dropout": 0.0, "norm_first": True, "positional_embedding": "sin", "bias_ff": False,
                             "bias_attn": False, "bias_proj": False, "activation": "gelu", "memory_efficient": True},
          "codebooks_pattern": {"modeling": "delay", "delay": {"delays": [0, 1, 2, 3]}},
          "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
          "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "cross": ["visual_content"]},
          "conditioners": {"visual_content": {"model": "video", "video": {
              "name": "ViT-L/14@336px", "video_len": 30, "finetune": True, "is_qformer": True,
              "qformer": {"query_num": sizes["Q"], "query_type": "mean", "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
                          "qformer_layers": counts["q"], "cross_attention_frequency": counts["cf"]}}}}}
    _write_official_export(model, tmp_path / "ours")                # the codec file only: EnCodec is checked above
    (tmp_path / "official").mkdir()
    torch.save({"xp.cfg": yaml.safe_dump(xp), "best_state": state, "exported": True}, tmp_path / "official" / "state_dict.bin")
    os.replace(tmp_path / "ours" / "compression_state_dict.bin", tmp_path / "official" / "compression_state_dict.bin")
    loaded = load_model(tmp_path / "official").eval()

    frames = torch.randint(0, 256, (3, c.image_size, c.image_size, 3), dtype=torch.uint8, generator=g)
    codes = torch.randint(0, sizes["C"], (2, counts["k"], 7), generator=g)
    condition = torch.randn(2, 3, sizes["D"], generator=g)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_video_frames(frames), _official_visual(state, frames, xp), atol=1e-4, rtol=1e-4)
        logits = loaded.lm(input_ids=codes.reshape(-1, codes.shape[-1]), encoder_hidden_states=condition,
                           encoder_attention_mask=torch.ones(2, 3, dtype=torch.long), use_cache=False).logits
        torch.testing.assert_close(logits.reshape(2, counts["k"], 7, -1), _official_lm(state, codes, condition, xp),
                                   atol=1e-4, rtol=1e-4)


def test_an_official_export_without_its_qformer_holds_no_clip_and_loads_as_the_cls_path(tmp_path):
    # module/decoder/modules/conditioners.py, CLIPConditioner.__init__: without is_qformer the CLIP is kept as
    # `self.__dict__['clip']`, outside the module tree, so the release holds only the conditioner's
    # output_proj; the CLIP comes from OpenAI's ViT-L/14@336px (here: the same weights as a Hugging Face folder).
    config = preset("tiny")
    config.feature_transformation = "cls"
    model = _randomised(config=config)
    _write_hf(model, tmp_path)
    export = _write_official_export(model, tmp_path / "export")
    package = torch.load(export / "state_dict.bin", weights_only=True)
    visual = "condition_provider.conditioners.visual_content."
    package["best_state"] = {k: v for k, v in package["best_state"].items() if not k.startswith(visual + "clip.")}
    xp = yaml.safe_load(package["xp.cfg"])
    xp["conditioners"]["visual_content"]["video"] = {"name": "ViT-L/14@336px", "video_len": 30, "finetune": False,
                                                     "is_qformer": False}
    package["xp.cfg"] = yaml.safe_dump(xp)
    torch.save(package, export / "state_dict.bin")
    loaded = load_audiocraft(export, clip_source=str(tmp_path / "clip"), base=preset("tiny"))
    assert loaded.config.feature_transformation == "cls"
    _assert_same_outputs(model, loaded)
