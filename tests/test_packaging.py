"""An installed wheel carries what the demo needs: the reference tables of profiles/ and the policies of
policies/ travel inside the package (ziplm_deploy/reference links to them), byte for byte."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_reference_tables_and_policies(tmp_path):
    import shutil

    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    for name in ("pyproject.toml", "README.md", "ziplm_deploy", "profiles", "policies"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__")}
                                          if copy is shutil.copytree else {}))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), "-q"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [wheel] = tmp_path.glob("ziplm_deploy-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name, source in (("smollm2-135m_ort-cpu_b1_s128_t1.json", "profiles"),
                             ("smollm2-135m_ort-cpu_b1_decode-kv128_t1.json", "profiles"),
                             ("smollm2-135m_ort-cpu-int8_b1_s128_t1.json", "profiles"),
                             ("demo-pass.yaml", "policies"), ("speed-parity-only.yaml", "policies")):
            member = f"ziplm_deploy/reference/{name}"
            assert member in names, sorted(n for n in names if "reference" in n)
            assert z.read(member) == (ROOT / source / name).read_bytes()


def test_reference_files_resolve_and_a_missing_one_is_a_user_error():
    from ziplm_deploy.core.errors import UserError
    from ziplm_deploy.pipeline.demo import DEMO_POLICY, REFERENCE_TABLE
    from ziplm_deploy.reference import reference_file

    assert REFERENCE_TABLE.read_bytes() == (ROOT / "profiles" / REFERENCE_TABLE.name).read_bytes()
    assert DEMO_POLICY.read_bytes() == (ROOT / "policies" / "demo-pass.yaml").read_bytes()
    with pytest.raises(UserError, match="missing from the installed package"):
        reference_file("no-such-table.json")
