"""Values that used to be accepted and produce garbage: refused where they are read, naming the key."""

from __future__ import annotations

import pytest

from featdistill.cli import main

BASE = "dataset: digits\nipc: 1\nmethod: dm\niterations: 1\nout_dir: {out}\npng: false\n"


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("lr_img: .nan", "lr_img"),
        ("lr_img: 1.0e+30", "lr_img"),
        ("lr_img: -1", "lr_img"),
        ("seed: -1", "seed"),
        ("budget_s: -1", "budget_s"),
        ("momentum_img: 1.5", "momentum_img"),
    ],
)
def test_bad_condense_values_exit_2_naming_the_key(tmp_path, capsys, extra, key):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(BASE.format(out=tmp_path / "run") + extra + "\n")
    assert main(["condense", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was written


def test_eval_protocol_refuses_zero_nets_and_the_cli_refuses_non_positive_counts(capsys):
    from featdistill.condense.config import EvalConfig

    with pytest.raises(ValueError, match="num_nets"):
        EvalConfig.model_validate({"num_nets": 0})
    with pytest.raises(SystemExit) as stop:
        main(["condense", "eval", "syn.safetensors", "--epochs", "-5"])
    assert stop.value.code == 2 and "expected an integer >= 1, got -5" in capsys.readouterr().err
