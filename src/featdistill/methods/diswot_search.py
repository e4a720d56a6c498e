"""DisWOT's search: an evolutionary search over a declared student space, scored without training.

DisWOT (Dong et al., CVPR 2023) does not only rank a hand-made list: it searches a space of student
architectures with an evolutionary algorithm whose fitness is the training-free
:func:`~featdistill.methods.diswot.diswot_score` against the trained teacher. This module is that search on the
zoo: a *space* is one zoo model and a list of choices per constructor argument, e.g.

    {"model": "convnet", "choices": {"width": [4, 8, 16, 32], "depth": [1, 2, 3]}, "max_params": 100000}

and a candidate (genome) is one choice per argument. The algorithm is regularised ("aging") evolution
(Real et al., AAAI 2019): a random initial population; each cycle samples a tournament, mutates the best
member's genome in one argument (to a neighbouring choice, or any choice when ``neighbour=False``), scores the
child (a child already scored is re-drawn, up to 10 times, so the budget of cycles explores) and retires the
oldest member. Candidates above ``max_params`` are rejected before scoring (a budget is
how a user says "small"). Everything is seeded; a genome is scored once (cached), so the score count is the
search's cost.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from featdistill.methods.diswot import diswot_score

__all__ = ["evolutionary_search", "exhaustive_ranking", "space_genomes"]

Genome = tuple[tuple[str, Any], ...]


def _check_space(space: Mapping[str, Any]) -> tuple[str, dict[str, list[Any]], int | None]:
    if "model" not in space or "choices" not in space:
        raise ValueError(
            f"search space needs 'model' (a zoo name) and 'choices' ({{argument: [values]}}), got keys {sorted(space)}"
        )
    choices = {str(k): list(v) for k, v in dict(space["choices"]).items()}
    empty = [k for k, v in choices.items() if not v]
    if not choices or empty:
        raise ValueError(f"search space: every argument needs at least one choice (empty: {empty or 'all'})")
    budget = space.get("max_params")
    return str(space["model"]), choices, (int(budget) if budget is not None else None)


def space_genomes(space: Mapping[str, Any]) -> int:
    """How many candidates the space holds (the product of its choice counts)."""
    _, choices, _ = _check_space(space)
    n = 1
    for v in choices.values():
        n *= len(v)
    return n


def _score_candidate(
    teacher: nn.Module,
    name: str,
    kwargs: dict[str, Any],
    build: Callable[[str, Mapping[str, Any]], nn.Module],
    batch: Mapping[str, Any],
    budget: int | None,
    seed: int,
    semantic: str,
) -> dict[str, Any] | None:
    """One candidate's row ``{kwargs, score, relation, semantic, params}``, or ``None`` over the parameter budget
    (rejected before it is scored)."""
    model = build(name, kwargs)
    params = sum(p.numel() for p in model.parameters())
    if budget is not None and params > budget:
        return None
    return {"kwargs": kwargs, **diswot_score(teacher, model, batch, seed=seed, semantic=semantic), "params": params}


def evolutionary_search(
    teacher: nn.Module,
    space: Mapping[str, Any],
    batch: Mapping[str, Any],
    build: Callable[[str, Mapping[str, Any]], nn.Module],
    population: int = 8,
    cycles: int = 24,
    tournament: int = 3,
    neighbour: bool = True,
    seed: int = 0,
    semantic: str = "class",
) -> dict[str, Any]:
    """Search ``space`` for the student that scores best against ``teacher`` on ``batch``.

    ``build(model_name, kwargs) -> nn.Module`` builds a candidate (for the zoo: the dataset's classes, channels
    and image size bound in). Returns ``{"best": row, "history": [row…] in scoring order, "scored": n,
    "rejected": n}`` where a row is ``{"kwargs", "score", "relation", "semantic", "params"}``.
    """
    if population < 2 or tournament < 1 or cycles < 0:
        raise ValueError(
            f"evolutionary_search: need population >= 2, tournament >= 1 and cycles >= 0, got "
            f"population={population}, tournament={tournament}, cycles={cycles}"
        )
    tournament = min(tournament, population)
    name, choices, budget = _check_space(space)
    rng = random.Random(seed)
    keys = sorted(choices)
    scored: dict[Genome, dict[str, Any]] = {}
    history: list[dict[str, Any]] = []
    rejected = 0

    def evaluate(genome: Genome) -> dict[str, Any] | None:
        nonlocal rejected
        if genome in scored:
            return scored[genome]
        row = _score_candidate(teacher, name, dict(genome), build, batch, budget, seed, semantic)
        if row is None:
            rejected += 1
            return None
        scored[genome] = row
        history.append(row)
        return row

    def random_genome() -> Genome:
        return tuple((k, rng.choice(choices[k])) for k in keys)

    def mutate(genome: Genome) -> Genome:
        k = rng.choice([k for k in keys if len(choices[k]) > 1] or keys)
        values = choices[k]
        i = values.index(dict(genome)[k])
        if neighbour and len(values) > 1:
            j = min(max(i + rng.choice((-1, 1)), 0), len(values) - 1)
            j = j if j != i else (i + 1 if i + 1 < len(values) else i - 1)
        else:
            j = rng.randrange(len(values))
        return tuple((kk, values[j] if kk == k else v) for kk, v in genome)

    alive: deque[tuple[Genome, dict[str, Any]]] = deque()
    tries = 0
    limit = 20 * population + space_genomes(space)
    while len(alive) < population and tries < limit:  # the initial population: distinct, within budget
        tries += 1
        g = random_genome()
        row = evaluate(g)
        if row is not None and all(g != a for a, _ in alive):
            alive.append((g, row))
    if len(alive) < 2:
        raise ValueError(
            f"search space {dict(space)}: fewer than 2 candidates fit max_params={budget} (rejected {rejected}); "
            "raise max_params or add smaller choices"
        )
    for _ in range(cycles):
        contenders = rng.sample(list(alive), min(tournament, len(alive)))
        parent = max(contenders, key=lambda gr: gr[1]["score"])[0]
        child, row = parent, None
        for _attempt in range(10):  # retried: a mutation outside the budget, or one already scored (explore)
            candidate = mutate(parent)
            known = candidate in scored
            got = evaluate(candidate)
            if got is not None:
                child, row = candidate, got
                if not known:
                    break
        if row is None:
            continue
        alive.append((child, row))
        alive.popleft()  # aging: the oldest member retires, however good
    best = max(history, key=lambda r: r["score"])
    return {"best": best, "history": history, "scored": len(history), "rejected": rejected}


def exhaustive_ranking(
    teacher: nn.Module,
    space: Mapping[str, Any],
    batch: Mapping[str, Any],
    build: Callable[[str, Mapping[str, Any]], nn.Module],
    seed: int = 0,
    semantic: str = "class",
) -> list[dict[str, Any]]:
    """Every candidate of a (small) space scored, best first — the reference a search is checked against."""
    name, choices, budget = _check_space(space)
    keys = sorted(choices)
    rows: list[dict[str, Any]] = []

    def walk(i: int, acc: Sequence[tuple[str, Any]]) -> None:
        if i == len(keys):
            row = _score_candidate(teacher, name, dict(acc), build, batch, budget, seed, semantic)
            if row is not None:
                rows.append(row)
            return
        for v in choices[keys[i]]:
            walk(i + 1, [*acc, (keys[i], v)])

    walk(0, [])
    rows.sort(key=lambda r: r["score"], reverse=True)
    return rows
