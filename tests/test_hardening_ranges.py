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


def test_resume_refuses_any_setting_that_changes_the_numbers_and_names_it(tmp_path):
    from featdistill.config import ConfigError, parse_config
    from featdistill.run import run_experiment

    raw = {
        "data": {"name": "digits", "batch_size": 128},
        "student": {"model": "mlp"},
        "train": {"epochs": 1, "precision": "fp32", "progress": False},
        "run_dir": str(tmp_path / "run"),
    }
    run_experiment(parse_config(raw), progress=False)
    saved = (tmp_path / "run" / "config.yaml").read_bytes()
    for change, key in [
        ({"seed": 1}, "seed: 0 -> 1"),
        ({"data": {**raw["data"], "batch_size": 64}}, "data.batch_size: 128 -> 64"),
        ({"data": {**raw["data"], "val_fraction": 0.2}}, "data.val_fraction"),
        ({"data": {**raw["data"], "augment": {"pad_crop": 1}}}, "data.augment.pad_crop"),
        ({"student": {"model": "mlp", "kwargs": {"hidden": [32]}}}, "student.kwargs.hidden"),
    ]:
        with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(")", r"\)")):
            run_experiment(parse_config({**raw, **change}), resume=True, progress=False)
        assert (tmp_path / "run" / "config.yaml").read_bytes() == saved  # nothing rewritten
    # a speed-only key may change: the finished run resumes to the same result
    again = run_experiment(
        parse_config({**raw, "data": {**raw["data"], "num_workers": 0}}), resume=True, progress=False
    )
    assert again.test_primary is not None


def test_a_subset_smaller_than_the_class_count_is_refused(tmp_path):
    from featdistill.config import ConfigError, parse_config
    from featdistill.run import run_experiment

    cfg = parse_config({"data": {"name": "digits", "subset": 5}, "student": {"model": "mlp"}, "run_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"data.subset = 5 is smaller than the 10 classes"):
        run_experiment(cfg, progress=False)


def test_a_store_larger_than_the_free_disk_is_refused_before_anything_is_written(tmp_path, capsys):
    import yaml

    from featdistill.config import parse_config
    from featdistill.run import run_experiment

    t = run_experiment(
        parse_config(
            {
                "data": {"name": "digits"},
                "student": {"model": "mlp"},
                "train": {"epochs": 1, "progress": False},
                "run_dir": str(tmp_path / "t"),
            }
        ),
        progress=False,
    )
    cfg = {
        "data": {"name": "digits", "views": "cycle", "augment": {"pad_crop": 1}},
        "student": {"model": "mlp"},
        "teacher": {
            "model": "mlp",
            "checkpoint": str(t.run_dir / "student.safetensors"),
            "source": "store",
            "store": str(tmp_path / "store"),
        },
        "method": {"name": "kd"},
        "cache": {"num_views": 10_000_000, "taps": {}},
    }
    path = tmp_path / "cache.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["cache", str(path)]) == 2
    err = capsys.readouterr().err
    assert "GiB" in err and "cache.num_views" in err and "Traceback" not in err
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_a_finished_run_extends_to_more_epochs_keeping_the_done_ones(tmp_path, capsys):
    import json

    import yaml

    cfg = {
        "data": {"name": "digits", "batch_size": 256},
        "student": {"model": "mlp"},
        "train": {"epochs": 1, "precision": "fp32", "progress": False},
        "run_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    first = [r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("type") == "epoch"]
    assert main(["train", str(path), "--set", "train.epochs=2", "--resume"]) == 2  # plain resume: refused
    assert "epochs" in capsys.readouterr().err
    assert main(["train", str(path), "--extend-to", "3"]) == 0
    epochs = [r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("type") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[0]["losses"] == first[0]["losses"]  # the done epoch is kept as it was
    assert main(["train", str(path), "--extend-to", "2"]) == 2  # shrinking is refused
    assert "must grow" in capsys.readouterr().err


def test_a_diverged_run_fails_with_its_reason_and_no_traceback(tmp_path, capsys):
    import yaml

    cfg = {
        "data": {"name": "digits", "batch_size": 256},
        "student": {"model": "mlp"},
        "train": {"epochs": 1, "lr": 1.0e38, "progress": False},
        "run_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "train.lr" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "student.safetensors").exists()


def test_non_finite_weights_or_metrics_are_a_failed_run():
    import torch

    from featdistill.run import _check_finite_result

    net = torch.nn.Linear(2, 2)
    _check_finite_result(net, {"top1": 0.5})
    with pytest.raises(FloatingPointError, match="metrics"):
        _check_finite_result(net, {"top1": float("nan")})
    with torch.no_grad():
        net.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="weight"):
        _check_finite_result(net, {"top1": 0.5})
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias[1] = -1e37  # finite but absurd: what lr=1e38 used to export with exit 0
    with pytest.raises(FloatingPointError, match=r"diverged weights: \|bias\| reaches 1e\+37"):
        _check_finite_result(net, {"top1": 0.5})
    with torch.no_grad():
        net.bias.fill_(1e6)  # large but plausible (BN-free nets can carry big biases): accepted
    _check_finite_result(net, {"top1": 0.5})


def test_a_diverged_condensation_is_a_failure_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import torch

    import featdistill.condense.config as cc
    from featdistill.condense.synthetic import SyntheticSet

    def diverged(*args, **kwargs):
        images = torch.zeros(10, 1, 8, 8)
        images[0, 0, 0, 0] = float("nan")
        return SyntheticSet(images=images, labels=torch.arange(10), metadata={"dataset": "digits-train"})

    monkeypatch.setattr(cc, "condense", diverged)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(BASE.format(out=tmp_path / "run"))
    assert main(["condense", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "1 of 640 synthetic pixel values are not finite" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "synthetic.safetensors").exists()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["inspect", "resnet99"], "did you mean resnet8"),
        (["inspect", "resnet8", "--input-shape", "1,a,2"], "expected comma-separated integers"),
        (["condense", "eval", "{cfg}"], "not a featdistill synthetic set"),
        (["condense", "eval", "{missing}"], "no synthetic set at"),
    ],
)
def test_inspect_and_condense_eval_faults_exit_2_without_a_traceback(tmp_path, capsys, argv, says):
    cfg = tmp_path / "not-a-set.yaml"
    cfg.write_text("data: {name: digits}\n")
    argv = [a.format(cfg=cfg, missing=tmp_path / "missing.safetensors") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


@pytest.mark.parametrize("epochs", ["1.0e+30", "1000000000000"])
def test_an_absurd_epoch_count_is_refused_naming_the_key(tmp_path, capsys, epochs):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{name: digits}}\nstudent: {{model: mlp}}\ntrain: {{epochs: {epochs}}}\nrun_dir: {tmp_path / 'r'}\n"
    )
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
