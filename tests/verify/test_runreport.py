"""report RUNDIR: one table of every model and method, a valid HTML file with embedded SVG plots, Markdown."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from test_gate import REPORT

from ziplm_deploy.cli import main
from ziplm_deploy.verify.runreport import collect, pareto

SHAPE = {"format": "ziplm-deploy/shape", "version": 1,
         "layers": [{"heads": 2, "ffn": 96}, {"dropped": True}, {"heads": 4, "ffn": 192}, {"heads": 0, "ffn": 32}]}


def family(method, members, model):
    return {"format": "ziplm-deploy/family", "version": 1, "method": method, "model": str(model),
            "table_sha256": "0" * 64, "fingerprint": {}, "config": {}, "dense_predicted_ms": 80.0, "seconds": 1.0,
            "members": members}


def member(run, method, target, ppl, speedup, reachable=True):
    path = run / f"{method}-{target:g}x"
    return {"target": target, "reachable": reachable, "max_speedup": 4.0, "path": str(path) if reachable else None,
            "predicted_ms": 80.0 / speedup, "predicted_speedup": speedup, "search_loss": 0.1, "calibration_ppl": ppl,
            "shape": SHAPE if reachable else None}


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dense = tmp_path / "dense"  # the family's model: only its config.json is read (dense heads / FFN width)
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 4, "n_embd": 48, "n_head": 4,
                                                   "n_inner": 192, "vocab_size": 120}))
    (run / "family-ziplm.json").write_text(json.dumps(family("ziplm", [
        member(run, "ziplm", 1.5, 11.0, 1.5), member(run, "ziplm", 2, 12.0, 2.0), member(run, "ziplm", 30, 0, 30, False)],
        dense)))
    (run / "family-magnitude.json").write_text(json.dumps(family("magnitude", [
        member(run, "magnitude", 1.5, 14.0, 1.5), member(run, "magnitude", 2, 19.0, 2.0)], dense)))
    for i, (method, target, measured) in enumerate([("ziplm", 2, 1.9), ("magnitude", 2, 2.1), ("ziplm", 1.5, 1.4)]):
        rep = json.loads(json.dumps(REPORT))
        rep["candidate"]["source"] = str(run / f"{method}-{target:g}x")
        rep["speedup"].update(measured=measured, candidate_ms=80.0 / measured, predicted=float(target),
                              predicted_ms=80.0 / target)
        rep["quality"] = None
        (run / f"{method}-{target:g}x.verify.json").write_text(json.dumps(rep))
    (run / "broken-verify.json").write_text("{not json")
    return run


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))


def test_report_html_with_embedded_plots(run, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--markdown", str(tmp_path / "report.md")]) == 0
    assert "report: " in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    parser = Images()
    parser.feed(text)
    assert {"html", "head", "body", "table"} <= set(parser.tags)
    assert len(parser.images) == 4
    titles = []
    for img in parser.images:
        assert img["src"].startswith("data:image/svg+xml;base64,") and img["alt"]
        svg = ET.fromstring(base64.b64decode(img["src"].split(",", 1)[1]))
        assert svg.tag == "{http://www.w3.org/2000/svg}svg"
        titles.append(svg.find("{http://www.w3.org/2000/svg}text").text)
        assert svg.findall(".//{http://www.w3.org/2000/svg}circle")  # every plot has points
        frame = svg.findall("{http://www.w3.org/2000/svg}rect")[1]
        x0, y0, w, h = (float(frame.get(k)) for k in ("x", "y", "width", "height"))
        for c in svg.iter("{http://www.w3.org/2000/svg}circle"):
            cx, cy = float(c.get("cx")), float(c.get("cy"))
            if cx <= x0 + w + 1:  # legend markers sit right of the frame
                assert x0 - 0.5 <= cx <= x0 + w + 0.5 and y0 - 0.5 <= cy <= y0 + h + 0.5, (titles, cx, cy)
    assert titles[0].startswith("perplexity vs speedup") and titles[1].startswith("predicted vs measured latency")
    assert titles[2:] == ["kept attention heads per layer", "kept FFN width per layer"]
    quality = ET.fromstring(base64.b64decode(parser.images[0]["src"].split(",", 1)[1]))
    assert quality.findall(".//{http://www.w3.org/2000/svg}polyline")  # the Pareto front
    md = (tmp_path / "report.md").read_text()
    assert "| ziplm-2x | ziplm | fp32 | 2x | 2.000x | 1.900x | -5.0% |" in md
    assert "| magnitude-1.5x | magnitude | fp32 | 1.5x | 1.500x | – |" in md  # not verified: no measurement
    assert "skipped broken-verify.json" in md


def test_collect_matches_verify_reports_to_members(run):
    data = collect(run)
    rows = {r.name: r for r in data.rows}
    assert set(rows) == {"baseline", "ziplm-1.5x", "ziplm-2x", "magnitude-1.5x", "magnitude-2x"}
    assert rows["baseline"].measured_speedup == 1.0 and rows["baseline"].measured_ms == 80.0  # the plots' reference
    assert rows["ziplm-2x"].measured_speedup == 1.9 and rows["ziplm-2x"].quality == 12.0
    assert rows["magnitude-1.5x"].measured_speedup is None and rows["ziplm-2x"].parity_ok
    assert data.dense == {"heads": 4, "ffn": 192}  # from the family's dense config
    assert rows["ziplm-2x"].prediction_error == pytest.approx(-0.05)


def test_pareto_front():
    pts = [(1.5, 11.0), (2.0, 12.0), (1.5, 14.0), (2.0, 19.0), (1.0, 10.0)]
    assert pareto(pts, lower_is_better=True) == [(1.0, 10.0), (1.5, 11.0), (2.0, 12.0)]
    assert pareto([(1.0, 0.9), (2.0, 0.8), (2.0, 0.7)], lower_is_better=False) == [(1.0, 0.9), (2.0, 0.8)]


def test_report_of_an_empty_or_missing_run(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "has no family-*.json, verify reports or recovery runs" in capsys.readouterr().err


@pytest.mark.parametrize("field,value", [
    (("speedup", "measured"), "1.9"), (("speedup", "measured"), float("inf")), (("speedup", "candidate_ms"), [1.0]),
    (("speedup", "predicted"), "2"), (("quality",), {"metric": "perplexity", "baseline": "10", "candidate": float("nan")}),
    (("quality",), {"baseline": 10.0, "candidate": 11.0}), (("candidate", "source"), ["a"]),
    (("candidate", "manifest"), "x"), (("baseline", "shape"), [1]), (("candidate", "shape"), {"layers": [{"ffn": "9"}]}),
])
def test_report_never_crashes_or_plots_a_bad_value(run, tmp_path, field, value):
    """A verify report with a mistyped or non-finite value is shown without it (with a warning), never a traceback."""
    rep = json.loads((run / "ziplm-2x.verify.json").read_text())
    node = rep
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    (run / "ziplm-2x.verify.json").write_text(json.dumps(rep))
    data = collect(run)
    for row in data.rows:
        for x in (row.measured_speedup, row.measured_ms, row.predicted_speedup, row.quality):
            assert x is None or (isinstance(x, float) and x == x and abs(x) != float("inf"))
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0


def test_report_shows_parity_false_as_a_failure(run):
    rep = json.loads((run / "ziplm-2x.verify.json").read_text())
    rep["parity"]["ok"] = "false"  # a string, not JSON false: not a pass
    (run / "ziplm-2x.verify.json").write_text(json.dumps(rep))
    row = next(r for r in collect(run).rows if r.name == "ziplm-2x")
    assert row.parity_ok is False


def test_report_skips_a_family_whose_members_are_not_a_list(run):
    fam = json.loads((run / "family-magnitude.json").read_text())
    fam["members"] = "all of them"
    (run / "family-magnitude.json").write_text(json.dumps(fam))
    data = collect(run)
    assert any("members must be a list" in w for w in data.warnings)
    assert not any(r.method == "magnitude" and r.verify is None for r in data.rows)


def test_a_family_pruned_on_an_int8_table_is_its_own_series_with_the_int8_only_line(run, tmp_path):
    """Joint search: members deployed int8 are plotted apart from fp32 pruning, and quantization alone (the
    family's fp32 baseline over its int8 dense prediction) is drawn as the line they must beat."""
    from ziplm_deploy.verify.runreport import quality_plot, render_markdown

    dense = json.loads((run / "family-ziplm.json").read_text())["model"]
    joint = family("ziplm", [member(run / "joint", "ziplm", 2.5, 13.0, 2.5)], dense)
    joint.update(precision="int8-dynamic", baseline_ms=150.0, dense_predicted_ms=80.0)  # int8 alone: 1.875x
    (run / "joint").mkdir()
    (run / "joint" / "family-ziplm.json").write_text(json.dumps(joint))
    (run / "family-joint.json").write_text(json.dumps(joint))
    data = collect(run)
    assert data.quant_only == {"int8-dynamic": pytest.approx(1.875)}
    rows = {r.path: r for r in data.rows}
    assert rows[str(run / "joint" / "ziplm-2.5x")].series == "ziplm + int8-dynamic"
    assert rows[str(run / "ziplm-2x")].series == "ziplm" and rows[str(run / "ziplm-2x")].precision == "fp32"
    svg = quality_plot(data)
    assert "ziplm + int8-dynamic" in svg and "int8-dynamic only (1.88x)" in svg
    md = render_markdown(data)
    assert "| precision |" in md and "int8-dynamic alone: predicted 1.88x" in md


def test_a_bad_family_precision_is_a_warning_not_a_series(run):
    fam = json.loads((run / "family-ziplm.json").read_text())
    fam["precision"] = ["int8"]
    (run / "family-ziplm.json").write_text(json.dumps(fam))
    data = collect(run)
    assert any("precision" in w and "shown as fp32" in w for w in data.warnings)
    assert {r.precision for r in data.rows} == {"fp32"} and not data.quant_only


def _train_json(evals, **over) -> dict:
    """What ``distill`` writes (format, config, weights, steps, tokens, evals ...)."""
    return {"format": "ziplm-deploy/train", "version": 1, "config": {"steps": 200}, "history": [],
            "weights": {"kd": 0.0, "hidden": 0.0, "task": 1.0}, "steps": 200, "seconds": 400.0, "resumed_from": None,
            "evals": evals, "tokens": 204800, "device": "cpu", **over}


def test_recovery_runs_are_tabled_and_plotted_against_tokens(run, tmp_path):
    (run / "ziplm-2x-lm").mkdir()
    (run / "ziplm-2x-lm" / "train.json").write_text(json.dumps(_train_json(
        [{"step": 0, "ppl": 400.0}, {"step": 100, "ppl": 200.0}, {"step": 200, "ppl": 150.0}])))
    (run / "ziplm-2x-kd").mkdir()
    (run / "ziplm-2x-kd" / "train.json").write_text(json.dumps(_train_json(
        [{"step": 0, "ppl": 400.0}, {"step": 200, "ppl": 120.0}], weights={"kd": 1.0, "hidden": 1.0, "task": 0.0})))
    data = collect(run)
    curves = {c.name: c for c in data.curves}
    assert curves["ziplm-2x-lm"].objective == "LM" and curves["ziplm-2x-kd"].objective == "KD"
    assert curves["ziplm-2x-lm"].points == [(0.0, 400.0), (0.1024, 200.0), (0.2048, 150.0)]  # million tokens
    assert curves["ziplm-2x-lm"].tokens_per_s == pytest.approx(512.0)
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--markdown", str(tmp_path / "report.md")]) == 0
    parser = Images()
    parser.feed(out.read_text())
    svgs = [ET.fromstring(base64.b64decode(i["src"].split(",", 1)[1])) for i in parser.images]
    titles = [s.find("{http://www.w3.org/2000/svg}text").text for s in svgs]
    assert titles[-1] == "held-out perplexity during recovery" and len(svgs) == 5
    assert len(svgs[-1].findall(".//{http://www.w3.org/2000/svg}polyline")) >= 2  # one line per run
    md = (tmp_path / "report.md").read_text()
    assert "| ziplm-2x-lm | LM | 200 | 0.20M | 6.7 min | 512 | cpu | 400 -> 150 |" in md


@pytest.mark.parametrize("bad", [{"evals": []}, {"evals": [{"step": 0, "ppl": float("nan")}]},
                                 {"evals": [{"step": "0", "ppl": 3.0}]}, {"tokens": "many"}, {"steps": 0},
                                 {"evals": "none"}])
def test_a_malformed_recovery_run_is_a_warning_not_a_curve(run, bad):
    (run / "r").mkdir()
    (run / "r" / "train.json").write_text(json.dumps(_train_json(**{"evals": [{"step": 0, "ppl": 9.0}], **bad})))
    data = collect(run)
    assert data.curves == [] and any("r/train.json" in w for w in data.warnings)


def test_a_folder_of_recovery_runs_alone_is_a_report(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.json").write_text(json.dumps(_train_json([{"step": 0, "ppl": 9.0}, {"step": 200, "ppl": 7.0}])))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html"), "--markdown", str(tmp_path / "r.md")]) == 0
    md = (tmp_path / "r.md").read_text()
    assert "| a | LM | 200 |" in md and "\n\n\n" not in md  # blocks one blank line apart, no empty ones
    assert md.splitlines()[1] == "" and md.splitlines()[2].startswith("| ")  # title, one blank line, the table
    assert "Recovery" in (tmp_path / "r.html").read_text()
