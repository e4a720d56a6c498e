"""Config validation and the CLI: one clear message per bad key; a small real end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from featdistill.cli import main
from featdistill.config import ConfigError, apply_overrides, load_config, parse_config

BASE = {
    "experiment": "t",
    "data": {"name": "digits", "batch_size": 64, "augment": {"pad_crop": 1}},
    "student": {"model": "mlp", "kwargs": {"hidden": [32]}},
    "method": {"name": "none"},
    "train": {"epochs": 2, "lr": 0.1, "progress": False},
}


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_bad_value_names_key_value_and_fix(tmp_path, capsys):
    cfg = _write(tmp_path, {**BASE, "train": {**BASE["train"], "lr": -1}})
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "-1" in err and "greater than 0" in err
    assert "Traceback" not in err


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "data": {**BASE["data"], "batch_sise": 3}})
    assert "data.batch_sise" in str(e.value) and "batch_size" in str(e.value)


def test_unknown_model_and_method_params():
    with pytest.raises(ConfigError, match="resnet8x4"):
        parse_config({**BASE, "student": {"model": "resnet8x5"}})
    with pytest.raises(ConfigError, match="temperature"):
        parse_config({**BASE, "teacher": {"model": "mlp"}, "method": {"name": "kd", "params": {"temp": 2}}})
    with pytest.raises(ConfigError, match="needs a teacher"):
        parse_config({**BASE, "method": {"name": "kd"}})


def test_overrides_parse_yaml_values():
    out = apply_overrides(BASE, ["train.epochs=5", "data.augment.flip=true", "method.params.x=[1, 2]"])
    assert out["train"]["epochs"] == 5 and out["data"]["augment"]["flip"] is True
    assert out["method"]["params"]["x"] == [1, 2]
    assert BASE["train"]["epochs"] == 2  # the input is not mutated


def test_yaml_tags_that_execute_code_are_refused(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("experiment: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_train_end_to_end_on_digits(tmp_path):
    """A real (small) run through the CLI: run dir contents, learning happened, numbers recorded."""
    cfg = _write(tmp_path, {**BASE, "run_dir": str(tmp_path / "run")})
    assert main(["train", str(cfg), "--set", "train.epochs=5", "--set", "data.batch_size=32"]) == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "student.safetensors", "report.md", "loss.png", "accuracy.png"):
        assert (run / name).is_file(), name
    result = json.loads((run / "result.json").read_text())
    assert result["test_top1"] > 0.8  # an MLP on digits learns quickly; chance is 0.1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["type"] == "step" and "ce" in r["losses"] for r in records)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 5


def test_inspect_lists_paths_shapes_and_macs(capsys):
    assert main(["inspect", "resnet8", "--input-shape", "3,32,32", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "layer2" in out and "32×16×16" in out and "MACs" in out


def test_unknown_tap_path_from_cli_is_a_clear_error(tmp_path, capsys):
    data = {
        **BASE,
        "data": {**BASE["data"]},
        "student": {"model": "convnet", "kwargs": {"width": 8, "norm": "batchnorm"}},
        "teacher": {"model": "convnet", "kwargs": {"width": 8, "norm": "batchnorm"}, "checkpoint": "nope.safetensors"},
        "method": {"name": "fitnet", "params": {"student_path": "features.99"}},
    }
    assert main(["train", str(_write(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert "nope.safetensors" in err  # the missing teacher checkpoint is reported first, clearly


def test_condense_cli_with_overrides_and_bad_value(tmp_path, capsys):
    cfg = {
        "dataset": "digits",
        "method": "random",
        "ipc": 1,
        "seed": 0,
        "out_dir": str(tmp_path / "syn"),
    }
    p = _write(tmp_path, cfg)
    assert main(["condense", str(p), "--set", "ipc=2"]) == 0
    from featdistill.condense import SyntheticSet

    syn = SyntheticSet.load(next((tmp_path / "syn").glob("*.safetensors")))
    assert syn.images.shape[0] == 20  # 2 per class × 10 classes
    assert main(["condense", str(p), "--set", "ipc=100000"]) == 2
    err = capsys.readouterr().err
    assert "ipc" in err and "Traceback" not in err


def test_torchrun_two_processes_through_the_cli(tmp_path):
    """`torchrun --nproc_per_node 2 -m featdistill.cli train CONFIG` (gloo on CPU): one run dir, world size 2."""
    import shutil
    import subprocess
    import sys

    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun is not installed")
    cfg = _write(tmp_path, {**BASE, "run_dir": str(tmp_path / "run"), "train": {**BASE["train"], "epochs": 1}})
    torchrun = str(Path(sys.executable).parent / "torchrun")
    out = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "featdistill.cli", "train", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("run directory:") == 1  # only rank 0 reports
    settings = json.loads((tmp_path / "run" / "train_settings.json").read_text())
    assert settings["resolved"]["world_size"] == 2
    assert json.loads((tmp_path / "run" / "result.json").read_text())["test_top1"] > 0.3


def test_every_config_reports_unknown_keys_the_same_way(tmp_path, capsys):
    """Experiment, train, cache and condense configs share one formatter: key = value, unknown key, nearest."""
    from featdistill.cache.config import build_store_from_config
    from featdistill.train.config import TrainConfig, TrainConfigError

    with pytest.raises(ConfigError, match=r"data.batch_sise = 3: unknown key; did you mean batch_size"):
        parse_config({**BASE, "data": {**BASE["data"], "batch_sise": 3}})
    with pytest.raises(TrainConfigError, match=r"train.epoch = 3: unknown key; did you mean epochs"):
        TrainConfig.from_dict({"epoch": 3})
    cache_cfg = _write(tmp_path, {**BASE, "teacher": {"model": "mlp"}, "cache": {"num_veiws": 4}})
    with pytest.raises(ConfigError, match=r"cache.num_veiws = 4: unknown key; did you mean num_views"):
        build_store_from_config(cache_cfg)
    condense_cfg = tmp_path / "condense.yaml"
    bad = {"dataset": "digits", "ipc": 1, "iterashuns": 2, "soft_label_teacher": {"store": {"dir": "x", "veiws": 2}}}
    condense_cfg.write_text(yaml.safe_dump(bad))
    assert main(["condense", str(condense_cfg)]) == 2
    err = capsys.readouterr().err
    assert "iterashuns = 2: unknown key; did you mean iterations?" in err
    assert "soft_label_teacher.store.veiws = 2: unknown key" in err and "Traceback" not in err


def test_a_network_parameter_is_built_from_a_model_section(tmp_path):
    """Collaborative learning's peer comes from YAML: built for the data, seeded, trained with the student."""
    from featdistill.run import run_experiment

    peer = {"model": "mlp", "kwargs": {"hidden": [16]}}
    cfg = parse_config(
        {
            **BASE,
            "run_dir": str(tmp_path / "run"),
            "method": {"name": "collaborative", "params": {"peer": peer, "temperature": 2.0}},
            "train": {**BASE["train"], "epochs": 1},
        }
    )
    result = run_experiment(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in records if r["type"] == "epoch")
    assert {"ce", "peer_ce", "kl", "peer_kl"} == set(epoch["losses"]) and epoch["losses"]["kl"] > 0
    assert result.test_top1 > 0.2
    with pytest.raises(ConfigError, match="mlpp"):
        parse_config({**BASE, "method": {"name": "collaborative", "params": {"peer": {"model": "mlpp"}}}})
    with pytest.raises(ConfigError, match="give it as a model section"):
        parse_config({**BASE, "method": {"name": "collaborative", "params": {"peer": "mlp"}}})
