"""The ``featdistill`` command: demo, train, cache, condense, bench, inspect, search, methods, tasks.

Every subcommand is a thin wrapper over the Python API (the same objects, no CLI-only logic).  Expected
errors (a bad config value, a missing file, an unknown tap path, a stale store) print one clear message
and exit with status 2 — never a bare traceback; ``featdistill --debug …`` (anywhere on the line) or
``FEATDISTILL_DEBUG=1`` shows the traceback (:mod:`featdistill.errors` says which errors are the user's).  An
internal error (a bug) always shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--epochs -5`` is refused with the value, not accepted)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _expected_errors() -> tuple[type[BaseException], ...]:
    from featdistill.errors import user_error_types

    return user_error_types()


# ---------------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from featdistill.config import load_config
    from featdistill.run import run_experiment

    overrides = list(args.set or [])
    if args.threads is not None:
        overrides.append(f"train.threads={args.threads}")
    cfg = load_config(args.config, overrides)
    if args.run_dir:
        cfg = cfg.model_copy(update={"run_dir": args.run_dir})
    if args.extend_to is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": args.extend_to})})
    from featdistill.errors import StartupGuard
    from featdistill.train.distributed import cleanup_distributed

    guard = StartupGuard("the run")  # a value that only fails while objects are built → one message, not a traceback
    try:
        with guard.watch():
            res = run_experiment(
                cfg,
                resume=args.resume or args.extend_to is not None,
                callbacks=[guard],
                extend=args.extend_to is not None,
            )
    finally:
        cleanup_distributed()  # under torchrun: leave the process group cleanly
    if os.environ.get("RANK", "0") == "0":  # one report per job, not one per process
        key = res.primary_metric
        label = "top-1" if key == "top1" else key
        val, best = (res.val or {}).get(key), (res.best_val or {}).get(key)
        print(f"run directory: {res.run_dir}")
        print(f"task: {res.task}   test {label} (last epoch): {res.test_primary:.4f}")
        print(f"validation {label} (last/best): {val} / {best}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from featdistill.methods import METHODS
    from featdistill.tasks import TASKS

    table = Table(title="featdistill tasks")
    for col in ("task", "prediction", "loss", "primary metric", "methods"):
        table.add_column(col)
    for name in sorted(TASKS):
        t = TASKS[name]
        methods = ", ".join(sorted(n for n, m in METHODS.items() if n != "compose" and m.supports(t)))
        better = "↑" if t.primary_mode == "max" else "↓"
        table.add_row(name, t.prediction_shape, t.loss_name, f"{t.primary_metric} {better}", methods)
    Console().print(table)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The zoo: every registered model name with the first line of its docstring (what ``model:`` accepts)."""
    from rich.console import Console
    from rich.table import Table

    from featdistill.models import MODELS

    table = Table(title="featdistill models (zoo; your own: class_path: 'pkg.mod:Name')")
    table.add_column("model")
    table.add_column("what it is")
    for name in sorted(MODELS):
        doc = (MODELS[name].__doc__ or "").strip().splitlines()
        table.add_row(name, doc[0] if doc else "")
    Console().print(table)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from featdistill.demo import run_demo

    run_demo(out_dir=Path(args.out), dataset=args.dataset, seed=args.seed, quick=args.quick)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from featdistill.inspect import inspect_model, print_inspection

    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        from featdistill.config import ConfigError

        raise ConfigError(
            f"--input-shape {args.input_shape!r}: expected comma-separated integers C,H,W (e.g. 3,32,32)"
        ) from None
    if args.cka:
        from featdistill.inspect import run_cka_cli

        return run_cka_cli(args, shape)
    from featdistill.config import ConfigError
    from featdistill.yaml_safe import YAMLLoadError, load_yaml_text

    def parse(text: str | None, flag: str) -> dict | None:
        if text is None:
            return None
        try:
            value = load_yaml_text(text, flag)
        except YAMLLoadError as err:
            raise ConfigError(f"{flag}: not valid YAML/JSON ({err})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{flag} must be a mapping, e.g. {flag} '{{model_type: gpt2, n_layer: 2}}'")
        return value

    hf = parse(args.hf, "--hf")
    rows, totals = inspect_model(
        args.model,
        num_classes=args.num_classes,
        input_shape=shape,
        depth=args.depth,
        tokens=args.tokens,
        init_args=parse(args.init_args, "--init-args"),
        hf=hf,
        task=args.task,
    )
    print_inspection(f"hf:{hf['model_type']}" if hf else args.model, rows, totals)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from featdistill.bench import run_suite

    path = run_suite(args.suite, args.out, quick=args.quick)
    print(path.with_suffix(".md").read_text())
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from featdistill import cache

    if args.config == "info":
        if not args.store:
            raise FileNotFoundError("usage: featdistill cache info STORE_DIR")
        info = cache.store_info(args.store[0])
        print(cache.format_info(info))
        return 1 if info["problems"] else 0
    if args.config == "verify":
        from featdistill.cache.integrity import format_verify, verify_store

        if len(args.store) != 1:
            raise FileNotFoundError("usage: featdistill cache verify STORE_DIR")
        report = verify_store(args.store[0])
        print(format_verify(report), file=sys.stdout if report["ok"] else sys.stderr)
        return 0 if report["ok"] else 1
    path = cache.build_store_from_config(args.config, overrides=args.set or [])
    print(f"teacher store written: {path}")
    print(cache.format_info(cache.store_info(path)))
    return 0


def cmd_condense(args: argparse.Namespace) -> int:
    from featdistill import condense

    if args.config == "eval":
        if not args.rest:
            raise FileNotFoundError("usage: featdistill condense eval SYNTHETIC.safetensors [--dataset NAME]")
        store = None if args.label_store == "none" else args.label_store
        res = condense.run_condense_eval(
            args.rest[0], dataset=args.dataset, label_store=store, num_nets=args.nets, epochs=args.epochs
        )
        for k, v in res.items():
            print(f"{k}: {v}")
        return 0
    import yaml
    from pydantic import ValidationError

    from featdistill.config import ConfigError, apply_overrides
    from featdistill.validation import format_validation_error
    from featdistill.yaml_safe import load_yaml_file

    if args.config == "relabel":
        if len(args.rest) != 2:
            raise FileNotFoundError(
                "usage: featdistill condense relabel SYNTHETIC.safetensors TEACHER.yaml [--dataset NAME] [--out PATH]"
            )
        try:
            path = condense.run_condense_relabel(args.rest[0], args.rest[1], dataset=args.dataset, out=args.out)
        except ValidationError as err:
            raise ConfigError(f"{args.rest[1]}: {format_validation_error(err, condense.TeacherConfig)}") from None
        except (ValueError, yaml.YAMLError) as err:  # bad values, stale stores: one message, no traceback
            raise ConfigError(str(err)) from None
        print(f"relabelled set written: {path}")
        return 0
    p = Path(args.config)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        raw = apply_overrides(load_yaml_file(p) or {}, args.set or [])
        path = condense.run_condense_config(raw)
    except ValidationError as err:  # one line per bad key, as for every other config
        raise ConfigError(f"{p}: {format_validation_error(err, condense.CondenseConfig)}") from None
    except (ValueError, yaml.YAMLError) as err:  # bad values: one message, no traceback
        raise ConfigError(f"{p}: {err}") from None
    print(f"synthetic set written: {path}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from featdistill.methods.diswot import run_search_cli

    return run_search_cli(args)


def cmd_methods(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from featdistill.methods import METHODS

    table = Table(title="featdistill methods")
    for col in ("name", "paper", "terms (default weights)", "CE weight", "teacher"):
        table.add_column(col)
    for name in sorted(METHODS):
        m = METHODS[name]
        terms = ", ".join(f"{k}={v}" for k, v in m.default_weights.items()) or "–"
        table.add_row(name, m.paper, terms, str(m.default_ce_weight), "yes" if m.needs_teacher else "no")
    Console().print(table)
    return 0


# ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="featdistill",
        description="Efficient knowledge, feature and dataset distillation for PyTorch.",
    )
    from featdistill import __version__

    p.add_argument("--version", action="version", version=f"featdistill {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of a user error too (any position)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="teacher → student alone / KD / feature KD on embedded data, with a table")
    s.add_argument("--out", default="runs/demo", help="folder for the run directories (default runs/demo)")
    s.add_argument("--dataset", default="mnist5k", choices=["mnist5k", "digits"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("train", help="train a student from a YAML config")
    s.add_argument("config")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=3")
    s.add_argument("--run-dir", help="override run_dir")
    s.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    s.add_argument(
        "--extend-to",
        type=_positive_int,
        default=None,
        metavar="EPOCHS",
        help="resume a run and train it on to EPOCHS in total (the done epochs stay as they are)",
    )
    s.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (= train.threads; set it on busy machines)"
    )
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("inspect", help="module paths with output shapes, params and MACs (to choose taps)")
    s.add_argument(
        "model", help="zoo model name, your own class 'pkg.mod:Name' (with --init-args), or 'hf' (with --hf)"
    )
    s.add_argument("--init-args", default=None, help="class_path constructor arguments, e.g. '{num_classes: 10}'")
    s.add_argument("--hf", default=None, help="a Hugging Face config, e.g. '{model_type: gpt2, n_layer: 2}'")
    s.add_argument("--task", default=None, help="picks the HF Auto class (causal-lm, sequence-classification, …)")
    s.add_argument("--tokens", type=int, default=None, help="input is this many token ids (token models)")
    s.add_argument("--input-shape", default="3,32,32", help="C,H,W (default 3,32,32)")
    s.add_argument("--num-classes", type=int, default=100)
    s.add_argument("--depth", type=int, default=None, help="only show paths up to this many dots")
    s.add_argument("--cka", metavar="STUDENT", help="print the teacher×student layer CKA matrix against STUDENT")
    s.add_argument("--out", default=None, help="with --cka: where to write the heatmap PNG")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("bench", help="run a benchmark suite; writes DIR/SUITE.json and DIR/SUITE.md")
    s.add_argument(
        "suite", help="core | demo | cache | methods | condense | condense-labels | condense-label-views | tasks"
    )
    s.add_argument("--out", required=True)
    s.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test of the suite)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser(
        "cache", help="build a teacher store from a config; `cache info STORE`; `cache verify STORE` (sha256)"
    )
    s.add_argument("config", help="CONFIG.yaml, or the word info or verify")
    s.add_argument("store", nargs="*", help="with info / verify: the store folder")
    s.add_argument("--set", action="append", metavar="KEY=VALUE")
    s.set_defaults(func=cmd_cache)

    s = sub.add_parser(
        "condense",
        help="dataset distillation from a config; `condense eval SYN`; `condense relabel SYN TEACHER.yaml`",
    )
    s.add_argument("config", help="CONFIG.yaml, or the word eval or relabel")
    s.add_argument("rest", nargs="*")
    s.add_argument("--set", action="append", metavar="KEY=VALUE")
    s.add_argument(
        "--dataset", default=None, help="eval: test/baseline data (default: the set's own); relabel: train set"
    )
    s.add_argument("--out", default=None, help="relabel: where the relabelled set goes")
    s.add_argument("--nets", type=_positive_int, default=3)
    s.add_argument("--epochs", type=_positive_int, default=300)
    s.add_argument(
        "--label-store",
        default="auto",
        metavar="DIR|auto|none",
        help="eval: teacher store of per-view soft labels (auto: the one recorded in the set, if present)",
    )
    s.set_defaults(func=cmd_condense)

    s = sub.add_parser("search", help="rank candidate students for a teacher without training them (DisWOT)")
    s.add_argument("teacher")
    s.add_argument("candidates", nargs="*", help="zoo names to rank (or --space to search a declared space)")
    s.add_argument("--dataset", default="mnist5k")
    s.add_argument("--teacher-checkpoint", default=None)
    s.add_argument("--validate", action="store_true", help="also distil each candidate briefly and correlate")
    s.add_argument(
        "--space",
        default=None,
        help="YAML {model, choices: {arg: [values]}, max_params?}: evolutionary search instead of a list",
    )
    s.add_argument("--population", type=int, default=8, help="search population (with --space)")
    s.add_argument("--cycles", type=int, default=24, help="search cycles: one scored child each (with --space)")
    s.add_argument("--seed", type=int, default=0, help="search seed (with --space)")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("methods", help="list the distillation recipes")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("tasks", help="list the tasks (prediction, loss, metric) and the methods each accepts")
    s.set_defaults(func=cmd_tasks)

    s = sub.add_parser("models", help="list the zoo's model names (what a config's model: accepts)")
    s.set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("FEATDISTILL_DEBUG"))
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return int(args.func(args) or 0)
    except _expected_errors() as err:
        if debug:
            raise
        print(f"featdistill {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # a diverged run: a failed result with its reason, not a crash
        if debug:
            raise
        print(f"featdistill {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the last complete checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
