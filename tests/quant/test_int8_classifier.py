"""A quantized classifier is judged by accuracy measured in ONNX Runtime on the graph as shipped (torch-free
``ort_accuracy``), the same number PyTorch gives for the fp32 model; ``verify --eval-data labelled.jsonl`` on an
int8 classifier reports accuracy, not a perplexity, and the gate's ``max_accuracy_drop`` reads it."""

from __future__ import annotations

import json

import pytest

from ziplm_deploy.cli import main
SENTENCES = [f"the {a} film was {b} and the {c} was {d}" for a, b, c, d in zip(
    ["long", "short", "new", "old", "odd", "quiet", "loud", "dark", "bright", "slow", "fast", "late"] * 2,
    ["great", "dull", "fine", "awful", "moving", "flat", "sharp", "weak", "warm", "cold", "smart", "silly"] * 2,
    ["cast", "plot", "music", "ending", "script", "pace"] * 4,
    ["superb", "boring", "clever", "messy", "tender", "clumsy", "bold", "tired"] * 3)]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> dict:
    """A tiny random BERT classifier (3 labels) over MiniLM's real tokenizer, its fp32 export, and labelled
    data whose labels are PyTorch's own predictions with the first 5 changed (PyTorch accuracy 19/24)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ziplm_deploy.export import export_onnx
    from ziplm_deploy.models import save_model
    from ziplm_deploy.models.assets import minilm_dir

    root = tmp_path_factory.mktemp("cls")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    torch.manual_seed(3)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=64, num_labels=3)).eval()
    save_model(model, root / "bert", tokenizer=tokenizer)
    with torch.no_grad():
        enc = tokenizer(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
        pred = model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).logits.argmax(-1).tolist()
    labels = [(p + 1) % 3 if i < 5 else p for i, p in enumerate(pred)]
    data = root / "labelled.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(SENTENCES, labels)))
    export_onnx(model, root / "fp32.onnx")
    return {"root": root, "dir": root / "bert", "fp32": root / "fp32.onnx", "data": data, "labels": labels,
            "model": model, "tokenizer": tokenizer}


def test_ort_accuracy_equals_pytorch(classifier):
    from ziplm_deploy.prune.evaluate import accuracy
    from ziplm_deploy.verify.ort_quality import ort_accuracy

    want = accuracy(classifier["model"], classifier["tokenizer"], SENTENCES, classifier["labels"])
    assert want == pytest.approx(19 / 24)
    assert ort_accuracy(classifier["fp32"], classifier["dir"], SENTENCES, classifier["labels"]) == want


def test_ort_accuracy_refuses_what_it_cannot_measure(classifier, tmp_path):
    from ziplm_deploy.core.errors import UserError
    from ziplm_deploy.verify.ort_quality import ort_accuracy

    with pytest.raises(UserError, match="as many labels as texts"):
        ort_accuracy(classifier["fp32"], classifier["dir"], SENTENCES, [0])
    with pytest.raises(UserError, match="beyond the model's 3 classes"):
        ort_accuracy(classifier["fp32"], classifier["dir"], SENTENCES[:1], [7])
    with pytest.raises(UserError, match="has no tokenizer.json"):
        ort_accuracy(classifier["fp32"], tmp_path, SENTENCES[:1], [0])


def test_verify_measures_an_int8_classifier_by_accuracy_in_ort(classifier, tmp_path, capsys):
    int8 = tmp_path / "int8" / "bert.onnx"
    assert main(["export", "--model", str(classifier["dir"]), "--out", str(int8), "--precision", "int8-dynamic"]) == 0
    report = tmp_path / "verify.json"
    code = main(["verify", "--baseline", str(classifier["dir"]), "--candidate", str(int8), "--report", str(report),
                 "--eval-data", str(classifier["data"]), "--rounds", "3", "--warmup", "1", "--seq", "16"])
    assert code == 0, capsys.readouterr()
    q = json.loads(report.read_text())["quality"]
    assert q["metric"] == "accuracy" and q["source"] == "onnxruntime" and q["examples"] == 24
    assert q["precision"] == {"baseline": "fp32", "candidate": "int8-dynamic"}
    assert q["baseline"] == pytest.approx(19 / 24, abs=1e-6)  # the fp32 export agrees with PyTorch
    assert 0.0 <= q["candidate"] <= 1.0

    from ziplm_deploy.verify.policy import Policy, judge
    from ziplm_deploy.verify.report import VerifyReport

    drop = q["baseline"] - q["candidate"]
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nbudgets:\n  max_accuracy_drop: {max(drop, 0) + 0.01}\n")
    [check] = [c for c in judge(Policy.load(policy), VerifyReport.load(report)).checks
               if c.name == "max_accuracy_drop"]
    assert check.passed and check.measured == pytest.approx(drop)
