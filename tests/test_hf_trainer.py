"""``featdistill.hf_trainer.DistillationTrainer``: featdistill recipes inside a transformers ``Trainer``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from featdistill.hf_trainer import DistillationTrainer, hf_batch  # noqa: E402
from featdistill.losses.logits import kd_loss  # noqa: E402


def _gpt2(width: int, layers: int, seed: int):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=24, n_head=2, n_positions=16, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=width, n_layer=layers, **cfg))


def _data(n: int = 16):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(1, 24, (8,), generator=g)
        mask = torch.ones(8, dtype=torch.long)
        if i % 3 == 0:
            mask[6:] = 0  # padded tail: no loss there
        rows.append({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.where(mask.bool(), ids, -100)})
    return rows


def _collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def _args(tmp_path, steps: int = 3):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )


def test_the_loss_is_the_task_ce_plus_kd_over_non_padding_tokens(tmp_path):
    student, teacher = _gpt2(8, 1, 1), _gpt2(16, 2, 2)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(tmp_path),
        train_dataset=_data(),
        data_collator=_collate,
        method="kd",
        method_params={"temperature": 2.0},
        ce_weight=0.5,
    )
    batch = _collate(_data()[:4])
    student.eval()
    loss = trainer.compute_loss(student, batch)
    # by hand: shifted next-token CE and T²·KL over the positions whose next token has a label
    with torch.no_grad():
        zs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        zt = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    y = batch["labels"][:, 1:]
    keep = y != -100
    want = 0.5 * F.cross_entropy(zs[keep], y[keep]) + 0.9 * kd_loss(zs[keep], zt[keep], 2.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert set(trainer.last_terms) == {"ce", "kd"}


def test_train_updates_the_student_and_the_method_adapters_and_saves_a_plain_model(tmp_path):
    student, teacher = _gpt2(8, 2, 1), _gpt2(16, 4, 2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(tmp_path, steps=4),
        train_dataset=_data(),
        data_collator=_collate,
        method="hidden",  # widths 8 vs 16: linear adapters, trained in their own optimiser group
    )
    trainer.prepare_distiller()  # what create_optimizer does first (idempotent)
    adapters = {k: v.clone() for k, v in trainer.distiller.method.state_dict().items()}
    assert adapters, "the adapters are built from the first examples"
    out = trainer.train()
    group_ids = [{id(p) for p in g["params"]} for g in trainer.optimizer.param_groups]
    assert any({id(p) for p in trainer.distiller.method.parameters()} <= ids for ids in group_ids)
    assert out.global_step == 4 and torch.isfinite(torch.tensor(out.training_loss))
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert any(not torch.equal(adapters[k], v) for k, v in trainer.distiller.method.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    trainer.save_model(str(tmp_path / "student"))
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "student"))
    assert set(reloaded.state_dict()) == set(student.state_dict())  # no adapter weights in the saved model


def test_a_batch_without_labels_is_refused_with_the_fix():
    with pytest.raises(KeyError, match="labels"):
        hf_batch({"input_ids": torch.zeros(1, 2, dtype=torch.long)})


def _seen_batches(trainer):
    seen = []
    original = trainer.compute_loss

    def spy(model, inputs, *a, **k):
        seen.append({k2: v.clone() for k2, v in inputs.items()})
        return original(model, inputs, *a, **k)

    trainer.compute_loss = spy
    return seen


def _on_policy(tmp_path, name, lmbda, seq_kd=False):
    student, teacher = _gpt2(8, 1, 1), _gpt2(16, 2, 2)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(tmp_path / name, steps=3),
        train_dataset=_data(),
        data_collator=_collate,
        method="divergence",
        lmbda=lmbda,
        seq_kd=seq_kd,
        prompt_length=3,
        max_new_tokens=4,
    )
    seen = _seen_batches(trainer)
    trainer.train()
    return trainer, seen


def test_on_policy_batches_are_the_students_continuations_of_the_prompts_seeded(tmp_path):
    trainer, seen = _on_policy(tmp_path, "a", lmbda=1.0)
    assert trainer.on_policy_steps == 3 and len(seen) == 3
    for b in seen:
        assert b["input_ids"].shape == (4, 3 + 4)  # prompt + max_new_tokens sampled tokens
        assert (b["labels"][:, :3] == -100).all()  # no loss on the prompt
        assert torch.equal(b["labels"][:, 3:], b["input_ids"][:, 3:])
    again, seen2 = _on_policy(tmp_path, "b", lmbda=1.0)  # the same seed: the same samples and weights
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(seen, seen2))
    assert all(torch.equal(p, q) for p, q in zip(trainer.model.parameters(), again.model.parameters()))
    off, seen_off = _on_policy(tmp_path, "c", lmbda=0.0)
    assert off.on_policy_steps == 0 and all(b["input_ids"].shape == (4, 8) for b in seen_off)


def test_sequence_level_kd_trains_on_the_teachers_continuations(tmp_path):
    trainer, seen = _on_policy(tmp_path, "s", lmbda=0.0, seq_kd=True)
    # the first batch is exactly the teacher's seeded continuation of that batch's prompts (step 0, seed 0)
    prompts = {"input_ids": seen[0]["input_ids"][:, :3], "attention_mask": torch.ones(4, 3, dtype=torch.long)}
    want = trainer.generate_batch(trainer.teacher_model, prompts, seed=0)
    assert torch.equal(seen[0]["input_ids"], want["input_ids"]) and seen[0]["input_ids"].shape == (4, 7)
    student_sample = trainer.generate_batch(trainer.model, prompts, seed=0)
    assert not torch.equal(student_sample["input_ids"], want["input_ids"])  # it is the teacher's, not the student's


def test_on_policy_without_prompts_is_refused_with_the_fix(tmp_path):
    trainer = DistillationTrainer(
        model=_gpt2(8, 1, 1),
        teacher_model=_gpt2(16, 2, 2),
        args=_args(tmp_path),
        train_dataset=_data(),
        data_collator=_collate,
        lmbda=1.0,
    )
    with pytest.raises(KeyError, match="prompt_length"):
        trainer.train()
    with pytest.raises(ValueError, match="lmbda"):
        DistillationTrainer(model=_gpt2(8, 1, 1), teacher_model=_gpt2(8, 1, 2), args=_args(tmp_path), lmbda=2.0)
