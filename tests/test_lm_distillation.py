"""LLM-distillation recipes: token-level divergences (forward/reverse KL, JSD(β), skew KL) and hidden-state KD."""

from __future__ import annotations

import math

import pytest
import torch

from featdistill.losses.divergences import DIVERGENCES, token_divergence
from featdistill.losses.logits import kd_loss


def _pair(n: int = 7, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64), 2 * torch.randn(n, c, generator=g, dtype=torch.float64)


def _probs(z: torch.Tensor, t: float) -> list[list[float]]:
    rows = []
    for row in (z / t).tolist():
        m = max(row)
        e = [math.exp(v - m) for v in row]
        rows.append([v / sum(e) for v in e])
    return rows


def _kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def _hand(kind: str, zs, zt, t: float, beta: float, alpha: float) -> float:
    """The definitions written out in plain Python floats (independent of the implementation)."""
    vals = []
    for q, p in zip(_probs(zs, t), _probs(zt, t)):
        if kind == "forward_kl":
            vals.append(_kl(p, q))
        elif kind == "reverse_kl":
            vals.append(_kl(q, p))
        elif kind == "jsd":
            m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
            vals.append(beta * _kl(p, m) + (1 - beta) * _kl(q, m))
        elif kind == "skew_kl":
            vals.append(_kl(p, [alpha * a + (1 - alpha) * b for a, b in zip(p, q)]))
        else:
            vals.append(_kl(q, [(1 - alpha) * a + alpha * b for a, b in zip(p, q)]))
    return sum(vals) / len(vals)


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_each_divergence_equals_its_definition_by_hand_in_float64(kind, temperature):
    zs, zt = _pair()
    got = token_divergence(zs, zt, kind, temperature=temperature, beta=0.3, alpha=0.2)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_hand(kind, zs, zt, temperature, 0.3, 0.2), rel=1e-12)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_zero_at_the_teacher_positive_elsewhere_and_a_gradient_step_lowers_it(kind):
    zs, zt = _pair(seed=1)
    assert abs(token_divergence(zt.clone(), zt, kind).item()) < 1e-14
    z = zs.clone().requires_grad_()
    loss = token_divergence(z, zt, kind)
    assert loss.item() > 0
    loss.backward()
    with torch.no_grad():
        assert token_divergence(z - 0.1 * z.grad, zt, kind).item() < loss.item()


def test_forward_kl_is_kd_without_t_squared_and_jsd_endpoints_are_the_kls():
    zs, zt = _pair(seed=2)
    assert (4.0**2 * token_divergence(zs, zt, "forward_kl", temperature=4.0)).item() == pytest.approx(
        kd_loss(zs, zt, 4.0).item(), rel=1e-12
    )
    # TRL dispatches β = 0 / 1 to forward / reverse KL
    assert token_divergence(zs, zt, "jsd", beta=0.0).item() == token_divergence(zs, zt, "forward_kl").item()
    assert token_divergence(zs, zt, "jsd", beta=1.0).item() == token_divergence(zs, zt, "reverse_kl").item()
    # JSD(0.5) is symmetric and bounded by log 2; skewing bounds the forward KL from above
    a, b = token_divergence(zs, zt, "jsd", beta=0.5).item(), token_divergence(zt, zs, "jsd", beta=0.5).item()
    assert a == pytest.approx(b, rel=1e-12) and a <= math.log(2)
    assert token_divergence(zs, zt, "skew_kl", alpha=0.1).item() < token_divergence(zs, zt, "forward_kl").item()


def test_zero_teacher_probabilities_are_finite_and_bad_arguments_are_refused():
    zs, zt = _pair(seed=3)
    zt[:, 0] = float("-inf")  # the teacher puts no mass on class 0
    for kind in ("forward_kl", "jsd", "skew_kl", "skew_reverse_kl"):
        assert math.isfinite(token_divergence(zs, zt, kind).item())
    # KL(q ‖ p) really is infinite where p = 0 < q: what the skewed form exists for
    assert token_divergence(zs, zt, "reverse_kl").item() == math.inf
    with pytest.raises(ValueError, match="kind"):
        token_divergence(zs, zt, "tvd")
    with pytest.raises(ValueError, match="beta"):
        token_divergence(zs, zt, "jsd", beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        token_divergence(zs, zt, "skew_kl", alpha=0.0)


def test_the_recipe_distils_a_causal_lm_per_token_and_ignores_padding():
    transformers = pytest.importorskip("transformers")
    from featdistill.distiller import Distiller
    from featdistill.methods import build_method
    from featdistill.tasks import build_task

    task = build_task("causal-lm")
    torch.manual_seed(0)
    cfg = dict(vocab_size=20, n_layer=1, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    teacher = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, **cfg)).eval()
    student = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=8, **cfg))
    ids = torch.randint(1, 20, (4, 6))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    batch = {"input": {"input_ids": ids, "attention_mask": mask}, "target": labels}
    d = Distiller(student, build_method("divergence", kind="reverse_kl"), teacher, task=task)
    _, losses = d(batch)
    assert list(losses) == ["divergence"]  # GKD trains on the divergence alone (ce weight 0)
    # by hand over the non-padding next-token positions
    with torch.no_grad():
        zs = student(input_ids=ids, attention_mask=mask).logits[:, :-1]
        zt = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1]
    valid = labels[:, 1:] != -100
    want = token_divergence(zs[valid], zt[valid], "reverse_kl")
    assert losses["divergence"].item() == pytest.approx(want.item(), rel=1e-5)
    assert valid.sum() < valid.numel()  # padding was really excluded


def test_the_recipe_is_refused_on_a_value_task():
    from featdistill.methods import build_method
    from featdistill.tasks import build_task

    with pytest.raises(ValueError, match="divergence"):
        build_method("divergence").check_task(build_task("regression"))


# -- hidden-state distillation with a layer map -------------------------------------------------------------


def _gpt2(width: int, layers: int):
    transformers = pytest.importorskip("transformers")
    cfg = dict(vocab_size=20, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=width, n_layer=layers, **cfg))


def test_uniform_layer_map_spaces_blocks_and_ends_last_to_last():
    from featdistill.methods.hidden import uniform_layer_map

    assert uniform_layer_map(2, 4) == [(0, 1), (1, 3)]
    assert uniform_layer_map(3, 12) == [(0, 3), (1, 7), (2, 11)]
    assert uniform_layer_map(2, 2) == [(0, 0), (1, 1)]
    assert uniform_layer_map(4, 2)[-1] == (3, 1)


def test_hidden_states_match_the_mapped_blocks_over_non_padding_tokens():
    from featdistill.distiller import Distiller
    from featdistill.methods import build_method
    from featdistill.tasks import build_task

    torch.manual_seed(0)
    teacher, student = _gpt2(16, 4).eval(), _gpt2(8, 2)
    ids = torch.randint(1, 20, (3, 6))
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    batch = {"input": {"input_ids": ids, "attention_mask": mask}, "target": torch.where(mask.bool(), ids, -100)}
    method = build_method("hidden", layer_map={0: 1, 1: -1}, weights={"hidden": 1.0})
    d = Distiller(student, method, teacher, task=build_task("causal-lm"), ce_weight=0.0)
    _, losses = d(batch)
    assert method.student_paths == ["transformer.h.0", "transformer.h.1"]
    assert method.teacher_paths == ["transformer.h.1", "transformer.h.3"]
    # by hand: block outputs captured with plain forward hooks, through the method's own adapters, mean over
    # pairs of the MSE on the valid tokens
    got: dict[str, torch.Tensor] = {}

    def keep_as(name):
        return lambda module, args, out: got.__setitem__(name, out[0] if isinstance(out, tuple) else out)

    hooks = [
        student.transformer.h[0].register_forward_hook(keep_as("s0")),
        student.transformer.h[1].register_forward_hook(keep_as("s1")),
        teacher.transformer.h[1].register_forward_hook(keep_as("t0")),
        teacher.transformer.h[3].register_forward_hook(keep_as("t1")),
    ]
    with torch.no_grad():
        student(input_ids=ids, attention_mask=mask)
        teacher(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    keep = mask.bool()
    with torch.no_grad():
        want = torch.stack(
            [torch.mean((method.adapters[f"hidden{k}"](got[f"s{k}"])[keep] - got[f"t{k}"][keep]) ** 2) for k in (0, 1)]
        ).mean()
    assert losses["hidden"].item() == pytest.approx(want.item(), rel=1e-5)
    # padding does not move the term: change the padded tokens' ids
    ids2 = ids.clone()
    ids2[0, 3:] = 7
    batch2 = {**batch, "input": {"input_ids": ids2, "attention_mask": mask}}
    assert d(batch2)[1]["hidden"].item() == pytest.approx(losses["hidden"].item(), rel=1e-5)


def test_hidden_refuses_a_map_outside_the_blocks_and_half_given_paths():
    from featdistill.distiller import Distiller
    from featdistill.methods import build_method

    with pytest.raises(ValueError, match="outside"):
        Distiller(_gpt2(8, 2), build_method("hidden", layer_map={0: 9}), _gpt2(16, 4), task=None)
    with pytest.raises(ValueError, match="both"):
        build_method("hidden", student_paths=["transformer.h.0"])
    with pytest.raises(ValueError, match="block list"):
        Distiller(nn_linear(), build_method("hidden"), nn_linear())


def nn_linear():
    return torch.nn.Sequential(torch.nn.Linear(4, 3))


# -- a tokenizer mismatch is refused ------------------------------------------------------------------------


def _save_model_with_tokenizer(folder, texts):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(vocab_size=40, special_tokens=["<unk>"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=40, n_embd=8, n_layer=1, n_head=2))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_teacher_and_student_with_different_saved_tokenizers_are_refused(tmp_path):
    from featdistill.components import check_same_tokenizer, tokenizer_fingerprint
    from featdistill.config import ConfigError, parse_config
    from featdistill.run import run_experiment

    a = _save_model_with_tokenizer(tmp_path / "a", ["the cat sat on the mat"] * 5)
    b = _save_model_with_tokenizer(tmp_path / "b", ["colourless green ideas sleep furiously"] * 5)
    same = tmp_path / "same"
    same.mkdir()
    for f in a.iterdir():
        (same / f.name).write_bytes(f.read_bytes())
    cfg = parse_config(
        {
            "data": {"name": "pystdlib-lm", "kwargs": {"seq_len": 16, "max_chars": 20_000, "vocab_size": 300}},
            "student": {"hf": {"path": str(a)}},
            "teacher": {"hf": {"path": str(b)}},
            "method": {"name": "kd"},
            "run_dir": str(tmp_path / "run"),
        }
    )
    assert tokenizer_fingerprint(cfg.student) != tokenizer_fingerprint(cfg.teacher) is not None
    with pytest.raises(ConfigError, match="different tokenizers"):
        run_experiment(cfg, progress=False)
    assert not (tmp_path / "run" / "student.safetensors").exists()
    ok = parse_config({**cfg.model_dump(mode="json"), "teacher": {"hf": {"path": str(same)}}})
    check_same_tokenizer(ok.student, ok.teacher)  # the same files: accepted
