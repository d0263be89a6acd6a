"""``export --genai``: ONNX Runtime GenAI folders that generate token-exact like ``transformers`` greedy
``generate``, for dense and every pruned form; tampered folders and mismatches fail with one clear line."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch

from families import tiny_llama_for, tiny_model
from ziplm_deploy.cli import main
from ziplm_deploy.core.checks import TEMP_PREFIX
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.shape import LayerShape, ModelShape
from ziplm_deploy.models import apply_shape, load_model, save_model

og = pytest.importorskip("onnxruntime_genai")
genai = pytest.importorskip("ziplm_deploy.export.genai")

WORDS = ("the capital of france is paris once upon a time there was little girl who lived in village near forest "
         "def add ( a , b ) : return + she liked to walk and sing every morning with her dog").split()

# Per-layer shapes of a 3-layer tiny Llama (4 query heads in 2 KV groups, head_dim 8, FFN 64): one pruned
# form each, in the middle layer (the KV layers GenAI must find: layers with attention, in order).
FULL = LayerShape(4, 64, 2)
FORMS = {
    "dense": (FULL, FULL, FULL),
    "zero-heads": (FULL, LayerShape(0, 64, 0), FULL),
    "dropped": (FULL, LayerShape(dropped=True), FULL),
    "ffn-0": (FULL, LayerShape(4, 0, 2), FULL),
    "gqa-group-removed": (LayerShape(2, 64, 1), LayerShape(2, 48, 2), FULL),
    "flop-ranks": (FULL, LayerShape(4, 64, 2, ranks=(("down", 6), ("gate", 5), ("up", 7))), FULL),
}
EXPECTED_KV = {"zero-heads": [[2, 8], [2, 8]], "dropped": [[2, 8], [2, 8]],
               "gqa-group-removed": [[1, 8], [2, 8], [2, 8]]}


def _tokenizer():
    from families import word_tokenizer

    return word_tokenizer(WORDS, 96)


def _model_dir(root, form: str = "dense", seed: int = 0):
    """A saved tiny Llama of ``form`` with a word-level tokenizer; weights scaled up so that greedy decoding
    wanders over the vocabulary instead of repeating one token."""
    tokenizer = _tokenizer()
    model = tiny_llama_for(tokenizer, layers=3, seed=seed).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    if form != "dense":
        apply_shape(model, ModelShape(FORMS[form]))
    return save_model(model, root / f"{form}-{seed}", tokenizer=tokenizer)


def _export(model_dir, out, *extra) -> int:
    return main(["export", "--model", str(model_dir), "--genai", str(out), *extra])


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """The dense tiny Llama's model directory and its GenAI folder, exported once through the CLI."""
    root = tmp_path_factory.mktemp("genai")
    model_dir = _model_dir(root)
    assert _export(model_dir, root / "dense-genai") == 0
    return model_dir, root / "dense-genai"


def _tampered(dense, tmp_path, edit):
    folder = tmp_path / "tampered"
    shutil.copytree(dense[1], folder)
    config = json.loads((folder / genai.GENAI_CONFIG).read_text())
    edit(config)
    (folder / genai.GENAI_CONFIG).write_text(json.dumps(config))
    return folder


def _logits_dims(folder):
    out = next(o for o in onnx.load(str(folder / genai.GRAPH_FILE)).graph.output if o.name == "logits")
    return [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]


@pytest.mark.parametrize("form", [f for f in FORMS if f != "dense"])
def test_pruned_forms_generate_token_exact(form, tmp_path, capsys):
    model_dir = _model_dir(tmp_path, form)
    extra = ["--genai-full-logits", "--genai-check-tokens", "12"] if form == "dropped" else []
    assert _export(model_dir, tmp_path / "out", *extra) == 0
    assert "equals transformers on 5 prompts" in capsys.readouterr().out
    folder = tmp_path / "out"
    manifest = genai.read_genai_manifest(folder)
    assert manifest["kv_layers"] == EXPECTED_KV.get(form, [[2, 8]] * 3)
    assert manifest["shape"]["layers"] == [s.to_json() for s in FORMS[form]]
    assert manifest["logits"] == ("full" if form == "dropped" else "last")
    assert _logits_dims(folder)[1] == ("sequence" if form == "dropped" else 1)
    # an independent run on a prompt the export did not check
    prompt = [[5, 9, 14, 2, 30, 31, 7]]
    model = load_model(model_dir)
    want = genai.torch_generate(model, prompt, 10)[0]
    want = want[: want.index(2)] if 2 in want else want  # GenAI stops on EOS (id 2) without returning it
    assert genai.genai_generate(folder, prompt, 10) == [want]
    assert not _leftovers(tmp_path)


@pytest.mark.slow  # ~12 s each quiet: three GenAI exports (CI runs -m slow too)
@pytest.mark.parametrize("family", ["gpt2", "qwen2", "qwen3", "gemma3"])
def test_other_decoder_families_generate_token_exact(family, tmp_path):
    """GPT-2 (learned positions; GenAI type "decoder"), Qwen3 (q/k head norms; GenAI type "qwen3") and Gemma 3
    (a 4-token sliding window on renumbered cache slots; "gemma3_text") pruned non-uniformly (a 0-head layer, a
    layer without FFN, GQA groups removed), and Qwen2 (q/k/v biases)."""
    from families import PLANS
    from ziplm_deploy.models import shrink

    model = tiny_model(family, layers=4)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0) if p.dim() == 2 else None
    if family in PLANS:
        shrink(model, PLANS[family])
    result = genai.export_genai(model, tmp_path / "out")
    assert len(result.prompts) == 2 and all(len(o) == 16 for o in result.outputs)  # no tokenizer: synthetic prompts
    assert json.loads((tmp_path / "out" / genai.GENAI_CONFIG).read_text())["model"]["type"] == (
        {"gpt2": "decoder", "gemma3": "gemma3_text"}.get(family, family))
    assert [k.heads for k in result.kv] == {"gpt2": [2, 1, 4], "qwen2": [3, 3, 3, 3], "qwen3": [3, 1, 2],
                                            "gemma3": [3, 1, 2]}[family]


def test_dense_folder_contents(dense):
    model_dir, folder = dense
    assert {"model.onnx", "genai_config.json", "ziplm_genai.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}
    config = json.loads((folder / genai.GENAI_CONFIG).read_text())["model"]
    assert config["type"] == "llama" and config["decoder"]["num_key_value_heads"] == 2
    assert config["decoder"]["head_size"] == 8 and config["decoder"]["num_hidden_layers"] == 3
    assert _logits_dims(folder) == ["batch", 1, config["vocab_size"]]  # trimmed prefill logits
    manifest = genai.read_genai_manifest(folder)
    assert manifest["source_sha256"] and manifest["source"] == str(model_dir.resolve())
    assert manifest["check"]["tokens"] == 16 and len(manifest["check"]["prompts"]) == 5
    outputs = manifest["check"]["outputs"]
    assert sum(len(o) for o in outputs) > 40 and len({t for o in outputs for t in o}) > 8  # not one repeated token
    assert not _leftovers(folder.parent)


def test_mismatch_names_prompt_and_position_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    real = genai.torch_generate

    def off_by_one(model, prompts, tokens):
        out = real(model, prompts, tokens)
        out[1][3] = (out[1][3] + 1) % model.config.vocab_size
        return out

    monkeypatch.setattr(genai, "torch_generate", off_by_one)
    model_dir = _model_dir(tmp_path)
    capsys.readouterr()
    assert _export(model_dir, tmp_path / "out") == 2
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if "it/s]" not in line)  # tqdm bars
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "differs from transformers on prompt 1" in err and "at generated position 3" in err
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_folder_checks_a_different_model_fails(dense, tmp_path):
    other = load_model(_model_dir(tmp_path, seed=1))
    prompts = json.loads((dense[1] / genai.MANIFEST_FILE).read_text())["check"]["prompts"]
    with pytest.raises(genai.GenaiValidationError, match=r"differs from transformers on prompt 0 .* position 0"):
        genai.check_genai_folder(dense[1], other, prompts, 8)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"]["decoder"].update(filename="missing.onnx"),
     r"model.decoder.filename names missing.onnx, which is missing from"),
    (lambda c: c["model"]["decoder"].update(num_key_value_heads=3),
     r"model.decoder.num_key_value_heads is 3, but model.onnx has 2 \(KV layers: 2x8, 2x8, 2x8\)"),
    (lambda c: c["model"]["decoder"].update(head_size=16), r"model.decoder.head_size is 16, but model.onnx has 8"),
    (lambda c: c["model"].update(vocab_size=7), r"model.vocab_size is 7, but model.onnx has 96"),
    (lambda c: c["model"]["decoder"].update(num_hidden_layers=5), r"num_hidden_layers is 5, but model.onnx has 3"),
    (lambda c: c["search"].update(foo=1), r"ONNX Runtime GenAI cannot run .*foo"),
], ids=["missing-graph", "kv-heads", "head-size", "vocab", "layers", "unknown-key"])
def test_tampered_folder_fails_validation(dense, tmp_path, edit, message):
    folder = _tampered(dense, tmp_path, edit)
    model = load_model(dense[0])
    with pytest.raises(UserError, match=message) as info:
        genai.check_genai_folder(folder, model, [[3, 4, 5]], 4)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_a_changed_file_is_refused(dense, tmp_path, name):
    folder = tmp_path / "changed"
    shutil.copytree(dense[1], folder)
    if name == "model.onnx":  # still a valid graph with the same KV: only its hash tells
        proto = onnx.load(str(folder / name))
        proto.metadata_props.add(key="note", value="edited")
        onnx.save(proto, str(folder / name))
    else:
        with open(folder / name, "ab") as f:
            f.write(b" ")
    with pytest.raises(UserError, match=f"ziplm_genai.json: {name} changed since the export"):
        genai.read_genai_manifest(folder)


def test_graph_without_past_inputs_is_refused(dense, tmp_path):
    """A plain decoder graph (no past_key_values.* inputs) put in the folder: refused before GenAI runs it."""
    from onnx import TensorProto, helper

    folder = _tampered(dense, tmp_path, lambda c: None)
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 96])
    node = helper.make_node("Cast", ["input_ids"], ["logits"], to=TensorProto.FLOAT)
    onnx.save(helper.make_model(helper.make_graph([node], "plain", [ids, mask], [logits])), folder / genai.GRAPH_FILE)
    with pytest.raises(UserError, match=r"model.onnx has no past_key_values.0.key input"):
        genai.check_genai_folder(folder, None, [[3]], 2)


def test_model_without_attention_is_refused_before_export(tmp_path):
    model = tiny_llama_for(_tokenizer(), layers=2)
    apply_shape(model, ModelShape((LayerShape(0, 64, 0), LayerShape(0, 32, 0))))
    with pytest.raises(UserError, match="no attention layer left"):
        genai.export_genai(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_manifest_of_another_model_is_refused(dense, tmp_path):
    folder = tmp_path / "swapped"
    shutil.copytree(dense[1], folder)
    manifest = json.loads((folder / genai.MANIFEST_FILE).read_text())
    manifest["kv_layers"] = [[1, 8], [2, 8]]
    (folder / genai.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"kv_layers \[\[1, 8\], \[2, 8\]\] do not match model.onnx's"):
        genai.read_genai_manifest(folder)


def test_overwrite_replaces_the_folder_in_one_rename(tmp_path):
    out, new = tmp_path / "out", tmp_path / f"{TEMP_PREFIX}out.new"
    out.mkdir()
    (out / "old.onnx").write_text("old")
    new.mkdir()
    (new / "model.onnx").write_text("new")
    with pytest.raises(UserError, match="exists and is not empty"):
        genai.check_genai_target(out, overwrite=False)
    genai.check_genai_target(out, overwrite=True)
    genai._publish(new, out)
    assert [p.name for p in out.iterdir()] == ["model.onnx"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def _fails(argv, capsys, message):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and message in err, err


def test_bad_input_exits_2_with_one_line_before_any_work(dense, tmp_path, capsys):
    model_dir = dense[0]
    bert = tmp_path / "bert"
    save_model(tiny_model("bert"), bert)
    _fails(["export", "--model", str(bert), "--genai", str(tmp_path / "b")], capsys, "needs a decoder")
    (tmp_path / "file").write_text("x")
    _fails(["export", "--model", str(model_dir), "--genai", str(tmp_path / "file")], capsys,
           "exists and is not a folder")
    _fails(["export", "--model", str(model_dir), "--genai", str(dense[1])], capsys, "exists and is not empty")
    _fails(["export", "--model", str(model_dir), "--genai", str(tmp_path / "x"), "--out", str(tmp_path / "x.onnx")],
           capsys, "--genai cannot be combined with --out")
    _fails(["export", "--model", str(model_dir), "--genai", str(tmp_path / "x"), "--with-past"], capsys,
           "--genai cannot be combined with --with-past")
    _fails(["export", "--model", str(model_dir), "--out", str(tmp_path / "x.onnx"), "--genai-full-logits"], capsys,
           "need --genai OUTDIR")
    _fails(["export", "--model", str(model_dir)], capsys, "pass --out FILE.onnx or --genai OUTDIR")
    _fails(["export", "--model", str(model_dir), "--genai", str(tmp_path / "x"), "--genai-check-tokens", "0"],
           capsys, "must be >= 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "file"]


def _ziplm_like_shape() -> ModelShape:
    """SmolLM2 (30 layers, 9 heads in 3 KV groups, FFN 1536) the way a ZipLM search leaves it: layers dropped,
    attention removed, 1-3 KV groups with 1-3 heads each, FFN widths down to 0, FLOP ranks in one layer."""
    layers = []
    for i in range(30):
        if i in (3, 9, 14, 20, 25):
            layers.append(LayerShape(dropped=True))
        elif i in (5, 17):
            layers.append(LayerShape(0, 768, 0))
        elif i == 28:
            layers.append(LayerShape(9, 1536, 3, ranks=(("down", 96), ("gate", 128), ("up", 128))))
        else:
            layers.append(LayerShape((9, 4, 3)[i % 3], (1536, 1024, 512, 0)[i % 4], (3, 2, 1)[i % 3]))
    return ModelShape(tuple(layers))


@pytest.fixture(scope="module")
def smollm2_src():
    from ziplm_deploy.models.assets import smollm2_dir

    try:
        return smollm2_dir()
    except UserError as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_smollm2_dense_generates_token_exact_and_ships_its_tokenizer(smollm2_src, tmp_path, capsys):
    from transformers import AutoTokenizer

    assert _export(smollm2_src, tmp_path / "dense", "--genai-check-tokens", "8") == 0
    assert "equals transformers on 5 prompts x 8 tokens" in capsys.readouterr().out
    folder = og.Model(str(tmp_path / "dense"))
    text = "The capital of France is"
    assert list(og.Tokenizer(folder).encode(text)) == AutoTokenizer.from_pretrained(str(smollm2_src))(text)["input_ids"]


@pytest.mark.slow
def test_smollm2_ziplm_like_shrink_generates_token_exact(smollm2_src, tmp_path):
    shape = _ziplm_like_shape()
    model = apply_shape(load_model(smollm2_src), shape)
    result = genai.export_genai(model, tmp_path / "ziplm", check_tokens=8, tokenizer_dir=smollm2_src)
    assert [k.heads for k in result.kv] == [s.kv_heads for s in shape.layers if not s.dropped and s.heads > 0]
    assert {k.head_dim for k in result.kv} == {64} and len(result.kv) == 23
    assert genai.read_genai_manifest(tmp_path / "ziplm")["shape"] == shape.to_json()
