"""--genai refuses the int8 validation options even when their value is 0 (0.0 is a value, not "not given")."""

from __future__ import annotations

import pytest

from ziplm_deploy.cli import main


@pytest.mark.parametrize("option", [["--min-top1", "0"], ["--max-ppl-increase", "0"], ["--min-top1", "0.5"]])
def test_genai_refuses_quantization_options_including_zero(tmp_path, capsys, option):
    assert main(["export", "--model", str(tmp_path / "any"), "--genai", str(tmp_path / "g"), *option]) == 2
    err = capsys.readouterr().err
    assert option[0] in err and "not a --genai folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()
