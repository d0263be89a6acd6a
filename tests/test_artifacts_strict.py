"""Every JSON artifact the project reads is checked strictly: a wrong type, a non-finite number or a
bool where an integer belongs is a one-line error naming the file and the key path (exit 2 at the CLI),
and what the project itself writes loads back (manifests and family files of a real prune run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_inputs(root: Path) -> dict[str, Path]:
    """A tiny random Llama (SmolLM2's tokenizer, so calibration reads real text), a synthetic latency
    table for it with linear costs (no profiling), and calibration text."""
    from families import linear_table, tiny_llama_for

    from ziplm_deploy.models import save_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(smollm2_dir())
    save_model(tiny_llama_for(tokenizer, layers=2).eval(), root / "model", tokenizer=tokenizer)
    linear_table(root / "model", root / "table.json")
    (root / "calib.txt").write_text((ROOT / "README.md").read_text())
    return {"model": root / "model", "table": root / "table.json", "calib": root / "calib.txt", "root": root}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return tiny_inputs(tmp_path_factory.mktemp("strict"))


@pytest.fixture(scope="module")
def pruned_run(tiny, tmp_path_factory) -> Path:
    """A family pruned by the real prune code path (magnitude: no Hessians, fast)."""
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.prune.family import PruneConfig, prune_family

    out = tmp_path_factory.mktemp("pruned") / "run"
    config = PruneConfig(method="magnitude", targets=(1.2, 40.0), seq_len=16, windows=4, evaluate=False)
    prune_family(tiny["model"], LatencyTable.load(tiny["table"]), tiny["table"], tiny["calib"], config, out,
                 log=lambda s: None, progress=False)
    return out


class Ran:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(capsys, *args: str) -> Ran:
    """The CLI in this process (as the console script runs it): exit code, stdout, stderr."""
    from ziplm_deploy.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return Ran(code, out.out, out.err)


def one_line_error(proc: Ran, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# --- latency table through `predict` ----------------------------------------------------------------

@pytest.mark.parametrize("edit, key", [
    (lambda p: p["attention"][1].update(p25=math.nan), "attention[1].p25 must be a finite number, got nan"),
    (lambda p: p["ffn"][2].update(p25=-0.4), "ffn[2].p25 must be >= 0, got -0.4"),
    (lambda p: p["ffn"][2].update(p25="0.4"), "ffn[2].p25 must be a finite number, got '0.4'"),
    (lambda p: p["calibration"].update(alpha=math.nan), "calibration.alpha must be a finite number, got nan"),
    (lambda p: p["calibration"].update(alpha=-1.0), "calibration.alpha must be > 0, got -1.0"),
    (lambda p: p["calibration"].update(beta=-100.0), "calibration.beta is -100.0 but the table's references give"),
    (lambda p: p.update(version=True), "version True is not supported"),
])
def test_predict_refuses_a_broken_table_at_load_naming_file_and_key(tiny, tmp_path, capsys, edit, key):
    good = cli(capsys, "predict", "--table", str(tiny["table"]))
    assert good.returncode == 0 and "predicted latency" in good.stdout  # the unedited table predicts
    payload = json.loads(tiny["table"].read_text())
    edit(payload)
    bad = tmp_path / "bad-table.json"
    bad.write_text(json.dumps(payload))
    proc = cli(capsys, "predict", "--table", str(bad))
    err = one_line_error(proc, str(bad), key)
    assert " ms" not in proc.stdout, (proc.stdout, err)  # never "nan ms" or a negative time


def test_predict_refuses_a_mistyped_shape_file(tiny, tmp_path, capsys):
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps({"format": "ziplm-deploy/shape", "version": 1,
                                 "layers": [{"heads": 4, "ffn": 64}, {"heads": True, "ffn": 64}]}))
    one_line_error(cli(capsys, "predict", "--table", str(tiny["table"]), "--shape", str(shape)), str(shape),
                   "layers[1]: 'heads' must be a non-negative integer, got True")


# --- manifests and family files written by prune ----------------------------------------------------

def test_manifest_written_by_prune_loads_typed_and_round_trips(pruned_run, tiny):
    from ziplm_deploy.core.fingerprint import DeviceFingerprint
    from ziplm_deploy.core.manifest import MANIFEST_FILE, ModelManifest
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.prune.family import FamilyReport

    family = FamilyReport.load(pruned_run / "family-magnitude.json")
    reached, unreachable = family.members
    assert reached.reachable and not unreachable.reachable and unreachable.path is None
    path = Path(reached.path) / MANIFEST_FILE
    manifest = ModelManifest.load(path)
    assert manifest.method == "magnitude" and manifest.table_sha256 == family.table_sha256
    assert manifest.fingerprint == LatencyTable.load(tiny["table"]).fingerprint.to_json()
    assert DeviceFingerprint.from_json(manifest.fingerprint, "manifest").cpu == "Test CPU"
    assert manifest.shape == reached.shape and manifest.metrics["target_speedup"] == 1.2
    on_disk = json.loads(path.read_text())
    assert manifest.to_json() == on_disk  # nothing lost or added
    assert ModelManifest.from_json(manifest.to_json(), str(path)) == manifest


@pytest.mark.parametrize("edit, key", [
    (lambda m: m.update(extra=1), "unknown keys ['extra']"),
    (lambda m: m.pop("shape"), "missing keys ['shape']"),
    (lambda m: m.update(method=3), "method must be a string, got 3"),
    (lambda m: m.update(version=True), "version True is not supported"),
    (lambda m: m["metrics"].update(predicted_ms=math.nan), "metrics.predicted_ms must be a finite number, got nan"),
    (lambda m: m["metrics"].update(predicted_ms="1.2"), "metrics.predicted_ms must be a finite number, got '1.2'"),
    (lambda m: m.update(options=[]), "options must be a JSON object"),
    (lambda m: m["fingerprint"].update(threads="1"), "fingerprint.threads must be an integer, got '1'"),
    (lambda m: m["shape"]["layers"][0].update(ffn=-1), "shape: layers[0]: 'ffn' must be a non-negative integer"),
])
def test_manifest_errors_name_file_and_key(pruned_run, tmp_path, edit, key):
    from ziplm_deploy.core.errors import UserError
    from ziplm_deploy.core.manifest import MANIFEST_FILE, ModelManifest

    payload = json.loads((pruned_run / "magnitude-1.2x" / MANIFEST_FILE).read_text())
    edit(payload)
    bad = tmp_path / MANIFEST_FILE
    bad.write_text(json.dumps(payload))
    with pytest.raises(UserError) as err:
        ModelManifest.load(bad)
    assert str(err.value).startswith(str(bad)) and key in str(err.value), str(err.value)


@pytest.mark.parametrize("edit, key", [
    (lambda f: f.update(members="magnitude-1.2x"), "members must be a list of member objects"),
    (lambda f: f["members"][0].update(target="1.2"), "members[0].target must be a finite number, got '1.2'"),
    (lambda f: f["members"][0].update(reachable="true"), "members[0].reachable must be true or false"),
    (lambda f: f["members"][1].update(max_speedup=math.inf), "members[1].max_speedup must be a finite number"),
    (lambda f: f["members"][0].update(path=7), "members[0].path must be a string or null, got 7"),
    (lambda f: f["members"][0].update(calibration_ppl=True), "members[0].calibration_ppl must be a finite number"),
    (lambda f: f["members"][0].update(colour="red"), "members[0].colour is not a known key"),
    (lambda f: f["members"][0]["shape"].update(layers=3), "members[0].shape: 'layers' must be a non-empty list"),
    (lambda f: f.update(members=["x"]), "members[0] must be a JSON object"),
    (lambda f: f.update(version=True), "version True is not supported"),
])
def test_family_file_errors_name_file_and_key(pruned_run, tmp_path, edit, key):
    from ziplm_deploy.core.errors import UserError
    from ziplm_deploy.prune.family import FamilyReport

    payload = json.loads((pruned_run / "family-magnitude.json").read_text())
    edit(payload)
    bad = tmp_path / "family-magnitude.json"
    bad.write_text(json.dumps(payload))
    with pytest.raises(UserError) as err:
        FamilyReport.load(bad)
    assert str(err.value).startswith(str(bad)) and key in str(err.value), str(err.value)


def test_a_damaged_member_manifest_is_rebuilt_not_trusted(pruned_run, tiny):
    from ziplm_deploy.core.manifest import MANIFEST_FILE, ModelManifest
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.prune.family import PruneConfig, prune_family

    manifest = pruned_run / "magnitude-1.2x" / MANIFEST_FILE
    payload = json.loads(manifest.read_text())
    payload["metrics"]["predicted_ms"] = "fast"
    manifest.write_text(json.dumps(payload))
    lines: list[str] = []
    config = PruneConfig(method="magnitude", targets=(1.2, 40.0), seq_len=16, windows=4, evaluate=False)
    prune_family(tiny["model"], LatencyTable.load(tiny["table"]), tiny["table"], tiny["calib"], config, pruned_run,
                 log=lines.append, progress=False)
    assert not any("reusing" in line for line in lines), lines
    assert isinstance(ModelManifest.load(manifest).metrics["predicted_ms"], float)


# --- OBS database index --------------------------------------------------------------------------------

def _database_payload() -> dict:
    return {"format": "ziplm-deploy/obs-database", "version": 2, "arch": {"family": "llama"}, "calibration": {},
            "damp": 0.01, "modules": [{"layer": 0, "kind": "ffn", "unit": "neuron", "unit_cols": 1, "energy": 2.0,
                                       "levels": [{"units": 2, "kept": [0, 1], "loss": 0.0, "rel_loss": 0.0},
                                                  {"units": 1, "kept": [1], "loss": 0.5, "rel_loss": 0.25}]}]}


@pytest.mark.parametrize("edit, key", [
    (lambda d: d.update(modules={}), "modules must be a list of module objects"),
    (lambda d: d.update(damp=math.nan), "damp must be a finite number, got nan"),
    (lambda d: d["modules"][0].update(layer=True), "modules[0].layer must be an integer, got True"),
    (lambda d: d["modules"][0].update(unit_cols=1.5), "modules[0].unit_cols must be an integer, got 1.5"),
    (lambda d: d["modules"][0].update(kind="mlp"), "modules[0]: kind 'mlp'"),
    (lambda d: d["modules"][0]["levels"][1].update(loss=math.inf), "modules[0].levels[1].loss must be a finite number"),
    (lambda d: d["modules"][0]["levels"][1].update(kept=["1"]), "modules[0].levels[1].kept[0] must be an integer"),
    (lambda d: d["modules"][0]["levels"][1].update(kept=[0, 1]), "modules[0].levels[1] keeps 2 units but says units=1"),
    (lambda d: d["modules"][0]["levels"][0].pop("rel_loss"), "modules[0].levels[0] lacks rel_loss"),
    (lambda d: d["modules"][0]["levels"][1].update(kv="1"), "modules[0].levels[1].kv must be an integer"),
    (lambda d: d["modules"][0].update(group=0), "modules[0].group"),
    (lambda d: d["modules"][0].update(unit="gqa_head"), "modules[0]: a gqa_head level lacks kv"),
    (lambda d: d["modules"][0].update(unit="gqa_head", kind="attn") or [lv.update(kv=2) for lv in d["modules"][0]["levels"]],
     "modules[0]: a gqa_head level lacks kv or keeps heads unevenly"),
    (lambda d: (d["modules"][0].update(unit="gqa_head", kind="attn", group=2),
                [lv.update(kv=1) for lv in d["modules"][0]["levels"]],
                d["modules"][0]["levels"][1].update(units=0, kept=[], kv=3)), "modules[0]: a gqa_head level lacks kv"),
    (lambda d: d["modules"][0].update(unit="gqa_head", kind="attn", group=1) or [lv.update(kv=1) for lv in d["modules"][0]["levels"]],
     "modules[0]: a gqa_head level lacks kv or keeps heads unevenly"),  # 2 heads in one group of 1
    (lambda d: d["modules"][0]["levels"][1].update(kv=1), "modules[0]: only gqa_head levels have kv"),
])
def test_database_index_errors_name_file_and_key(tmp_path, edit, key):
    from ziplm_deploy.core.errors import UserError
    from ziplm_deploy.prune.database import Database

    payload = _database_payload()
    assert Database.from_json(payload, "database.json").modules[0].level(1).kept == (1,)
    edit(payload)
    with pytest.raises(UserError) as err:
        Database.from_json(payload, "run/database/abc/database.json")
    msg = str(err.value)
    assert msg.startswith("run/database/abc/database.json") and key in msg and "delete the database folder" in msg, msg


# --- pipeline file and state.json ---------------------------------------------------------------------

def _pipeline(tiny, tmp_path: Path, **overrides) -> Path:
    spec = {"model": str(tiny["model"]), "profile": {"table": str(tiny["table"])},
            "prune": {"method": "magnitude", "targets": [1.2], "windows": 4, "seq_len": 16, "calib": str(tiny["calib"])},
            "export": None, "verify": None, "report": False}
    spec.update(overrides)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("state, key", [
    ([], "expected a JSON object"),
    ({"format": "ziplm-deploy/run-state", "version": True, "stages": {}}, "version True is not supported"),
    ({"format": "ziplm-deploy/run-state", "version": 1, "stages": []}, "stages must be a JSON object"),
    ({"format": "ziplm-deploy/run-state", "version": 1, "stages": {"profile": {"key": 3, "outputs": [], "result": {},
                                                                          "finished": 1.0}}},
     "stages.profile.key must be a string, got 3"),
    ({"format": "ziplm-deploy/run-state", "version": 1, "stages": {"prune": {
        "key": "k", "outputs": [], "finished": 1.0, "result": [{"target": "2", "reachable": True, "max_speedup": 3}]}}},
     "stages.prune.result[0].target must be a finite number, got '2'"),
    ({"format": "ziplm-deploy/run-state", "version": 1, "stages": {"export": {
        "key": "k", "outputs": "onnx", "result": {}, "finished": 1.0}}}, "stages.export.outputs must be a list"),
])
def test_a_damaged_state_json_is_one_line_naming_file_key_and_the_fix(tiny, tmp_path, capsys, state, key):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(json.dumps(state))
    proc = cli(capsys, "run", str(_pipeline(tiny, tmp_path)), "--out", str(run), "--no-progress")
    one_line_error(proc, str(run / "state.json"), key, f"delete {run / 'state.json'} to start the run over")
    assert sorted(p.name for p in run.iterdir()) == ["state.json"]  # refused before any work


@pytest.mark.parametrize("overrides, key", [
    ({"prune": {"targets": [float("nan")]}}, "'prune.targets[0]' must be a finite number, got nan"),
    ({"prune": {"targets": [float("inf")]}}, "'prune.targets[0]' must be a finite number, got inf"),
    ({"prune": {"targets": [0.5]}}, "'prune.targets[0]' must be >= 1, got 0.5"),
    ({"prune": {"ffn_step": -5}}, "'prune.ffn_step' must be >= 1, got -5"),
    ({"prune": {"damp": -1.0}}, "'prune.damp' must be >= 0, got -1.0"),
    ({"verify": {"rounds": 0}}, "'verify.rounds' must be >= 1, got 0"),
    ({"gate": {"policy": "p.yaml"}}, "the gate judges verify reports, and this pipeline has no verify section"),
])
def test_pipeline_numbers_are_finite_and_in_range_before_any_work(tiny, tmp_path, capsys, overrides, key):
    run = tmp_path / "run"
    proc = cli(capsys, "run", str(_pipeline(tiny, tmp_path, **overrides)), "--out", str(run), "--no-progress")
    one_line_error(proc, key)
    assert not run.exists()


@pytest.mark.parametrize("args, message", [
    (["--targets", "nan"], "a speedup target must be a finite number, got 'nan'"),
    (["--targets", "0.5"], "--targets"),
    (["--windows", "-1"], "--windows: must be >= 1, got -1"),
])
def test_demo_options_are_refused_at_parse_time(tmp_path, capsys, args, message):
    from ziplm_deploy.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "demo").exists()


def test_an_output_folder_that_cannot_be_made_is_one_line():
    """What the pre-check cannot foresee (here: a folder under /proc, which root's access bits call writable)
    fails at the write as a one-line error, never a traceback, and leaves nothing."""
    from ziplm_deploy.core.errors import UserError
    from ziplm_deploy.core.jsonio import atomic_write_json

    with pytest.raises(UserError, match="cannot write /proc/ziplm-nope/t.json: "):
        atomic_write_json("/proc/ziplm-nope/t.json", {"a": 1})


def test_the_output_pre_check_writes_a_probe(tmp_path):
    """check_output_path creates and removes a file where the output goes: a pseudo-filesystem that permission
    bits call writable is refused before any work (``profile --workload --out /proc/x`` used to fail only after
    minutes of profiling); a writable folder is left as it was."""
    from ziplm_deploy.core.checks import check_output_path
    from ziplm_deploy.core.errors import UserError

    with pytest.raises(UserError, match=r"--out: cannot write /proc/ziplm-nope/x \(/proc: "):
        check_output_path("/proc/ziplm-nope/x", "--out", directory=True)
    assert check_output_path(tmp_path / "a" / "b", "--out", directory=True) == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []


def test_profile_workload_refuses_an_unwritable_out_before_profiling(tiny, capsys):
    from ziplm_deploy.cli import main

    assert main(["profile", "--model", str(tiny["model"]), "--workload", "16x4", "--out", "/proc/ziplm-nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write /proc/ziplm-nope" in err, err
