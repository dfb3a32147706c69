"""SPPO against iterative DPO and IPO on one recipe: the same start, prompts, iteration-1 rows and step budget.

    COMPARE_RECIPE    configs/cpu-smollm2-compare.yaml: SmolLM2-135M-Instruct, the committee judge, 3 iterations
    smoke_config      that recipe at notebook 05's SMOKE size (CI)
    ARMS              the three methods, as train.loss_type names them
    TUNED             each baseline's lr from its iteration-1 sweep, β from that sweep's pick and one step past
                      its edge (docs/recipes.md)
    split_prompts     held-out prompts: the first n_eval evaluate the arms, the next n_validation score the sweep
    arm_config        the recipe with one arm's loss, β and learning rate (train.* overrides)
    run_arm           `sppo-lite iterate` for one arm (loop.run_all), reusing another run's finished stages
    run_arms          the three arms at given settings (default TUNED), the baselines reusing SPPO's iteration 1
    sweep             a baseline's β × lr grid on iteration 1, each point's π_1 scored against π₀ on validation prompts
    best_point        the grid point with the highest validation win rate
    run_comparison    SPPO, then each baseline's sweep, then each baseline at its best for all iterations
    evaluate_arms     every arm's iterates vs π₀ and vs each other (paired bootstrap CIs), LC WR, length, cut-off
                      share, and the average policy (a uniform mixture of π_1..π_T) vs π₀ and vs the last iterate
    factual_arms      every arm's iterates on the factual questions (factual.factual_eval), the signal no judge saw
    summary           the headline numbers of both as plain JSON

Every arm starts from the same π₀ and trains on the SPPO arm's iteration-1 samples, judgements and reference
log-probs (linked in through loop.Run.reuse_from: their fingerprints match), with the same epochs and batch, so
the same optimizer steps; from iteration 2 on each arm samples and judges its own π_t, its own reference. Pairs are
best vs worst of K for all three, as in the paper's iterative DPO / IPO rows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from . import evaluate, evaluation_run, loop
from .loop.artifacts import write_json_atomic
from .resources import PROJECT_ROOT

__all__ = ["COMPARE_RECIPE", "SMOKE_SETTINGS", "smoke_config", "ARMS", "ARM_NAMES", "TUNED",
           "eval_generation", "split_prompts", "run_arms", "arm_config", "run_arm", "sweep", "best_point", "run_comparison", "evaluate_arms",
           "factual_arms", "mixture_responses", "summary"]

COMPARE_RECIPE = PROJECT_ROOT / "configs" / "cpu-smollm2-compare.yaml"
# Notebook 05's SMOKE comparison (CI): 2 iterations of 4 prompts × 3 samples of 16 tokens, one epoch. It runs every
# line of the comparison on the real model and judge in a few minutes; its numbers say nothing about the methods.
SMOKE_SETTINGS = {
    "iterations": 2, "prompts.n_prompts": 4,
    "generation.k": 3, "generation.max_new_tokens": 16, "generation.batch_size": 4, "generation.shard_size": 4,
    "build.ref_batch_size": 6,
    "train.num_train_epochs": 1, "train.per_device_train_batch_size": 2, "train.warmup_steps": 0,
}


def smoke_config(overrides=()) -> dict:
    """COMPARE_RECIPE ← SMOKE_SETTINGS ← overrides ("a.b=value")."""
    return loop.load_config(COMPARE_RECIPE, [f"{k}={v}" for k, v in SMOKE_SETTINGS.items()] + list(overrides))

ARMS = ("sppo", "dpo", "ipo")
ARM_NAMES = {"sppo": "SPPO", "dpo": "iterative DPO", "ipo": "iterative IPO"}  # plots.style_for reads these names

# The baselines' settings on configs/cpu-smollm2-compare.yaml: each one's learning rate is the best point of its
# β × lr sweep on iteration 1 (benchmarks/smollm2_compare.py --sweep, seed 0), its β the best of that sweep's β and
# one step past the grid's edge at that learning rate (benchmarks/baseline_grid_edges.py); scores in docs/recipes.md.
TUNED = {"dpo": {"beta": 0.3, "learning_rate": 5e-4}, "ipo": {"beta": 0.003, "learning_rate": 5e-4}}


def eval_generation(config: Mapping) -> dict:
    """The evaluation answers' sampling settings from a recipe: its generation caps, batch size and seed."""
    g = config["generation"]
    return dict(max_new_tokens=g["max_new_tokens"], batch_size=g["batch_size"],
                max_prompt_tokens=g["max_prompt_tokens"], seed=config["seed"])


def split_prompts(config: Mapping, n_eval: int = 64, n_validation: int = 40) -> tuple[list[str], list[str]]:
    """(evaluation, validation) prompts, disjoint, neither trained on by any iteration: the sweep picks its
    settings on the validation prompts, so the arms' comparison is not on the prompts their settings were chosen on."""
    held = evaluation_run.heldout_prompts(dict(config))
    if len(held) < n_eval + n_validation:
        raise ValueError(f"{len(held)} held-out prompts cannot give {n_eval} evaluation and {n_validation} "
                         f"validation prompts: lower n_eval / n_validation or prompts.n_prompts")
    return held[:n_eval], held[n_eval:n_eval + n_validation]


def arm_config(config: Mapping, loss_type: str, beta: float | None = None,
               learning_rate: float | None = None) -> dict:
    """The recipe with train.loss_type = loss_type (and β, lr when given); every other key unchanged."""
    if loss_type not in ARMS:
        raise ValueError(f"an arm is one of {', '.join(ARMS)}, got {loss_type!r}")
    sets = [f"train.loss_type={loss_type}"]
    sets += [f"train.beta={float(beta)!r}"] if beta is not None else []
    sets += [f"train.learning_rate={float(learning_rate)!r}"] if learning_rate is not None else []
    return loop.apply_overrides(dict(config), sets)


def run_arm(config: Mapping, output_dir, reuse_from=None, iterations: int | None = None,
            log: Callable = print, quiet: bool = True) -> loop.Run:
    """One arm through the loop (what `sppo-lite iterate --reuse-from` runs); resumable, finished stages skipped.

    quiet: the stages' own output (Trainer logs, progress bars, library warnings) goes to OUTPUT_DIR.log beside the
    run; each stage's one-line report still reaches `log`.
    """
    import contextlib
    import sys

    from .lab import quiet_into

    if not quiet:
        return loop.run_all(dict(config), output_dir, iterations=iterations, log=log, reuse_from=reuse_from)
    shown = sys.stdout

    def report(*parts):
        with contextlib.redirect_stdout(shown):
            log(*parts)

    with quiet_into(Path(f"{output_dir}.log")):
        return loop.run_all(dict(config), output_dir, iterations=iterations, log=report, reuse_from=reuse_from)


def run_arms(config: Mapping, root, settings: Mapping[str, Mapping] | None = None,
             log: Callable = print) -> dict[str, loop.Run]:
    """{arm: Run}: SPPO at the recipe's own β and lr in root/sppo, then each baseline at settings[arm] (default
    TUNED) in root/<arm>, reusing root/sppo's finished iteration-1 stages (the same samples, judgements, log π₀)."""
    settings = TUNED if settings is None else settings
    unset = [arm for arm, s in settings.items() if s.get("beta") is None or s.get("learning_rate") is None]
    if unset:
        raise ValueError(f"no β / learning rate for {unset}: run benchmarks/smollm2_compare.py --sweep, or pass them")
    root = Path(root)
    runs = {"sppo": run_arm(arm_config(config, "sppo"), root / "sppo", log=log)}
    for arm, s in settings.items():
        runs[arm] = run_arm(arm_config(config, arm, s["beta"], s["learning_rate"]), root / arm,
                            reuse_from=root / "sppo", log=log)
    return runs


def _point_dir(root, loss_type: str, beta: float, learning_rate: float) -> Path:
    return Path(root) / "sweep" / f"{loss_type}-beta{beta:g}-lr{learning_rate:g}"


def sweep(config: Mapping, root, loss_type: str, betas: Sequence[float], learning_rates: Sequence[float],
          prompts: Sequence[str], judge, reuse_from, n_boot: int = 1000, log: Callable = print,
          **generation) -> list[dict]:
    """Iteration 1 of `loss_type` at each (β, lr), scored by its π_1's win rate against π₀ on `prompts`.

    Each point is a one-iteration run under root/sweep/ that reuses `reuse_from`'s iteration-1 samples, judgements
    and reference log-probs, so only training differs. Returns one dict per point (β, lr, run_dir, pairs,
    win_rate, win_rate_ci, lc_win_rate), written to root/sweep-{loss_type}.json as well.
    """
    if not betas or not learning_rates:
        raise ValueError("a sweep needs at least one β and one learning rate")
    points = []
    for beta in betas:
        for lr in learning_rates:
            run_dir = _point_dir(root, loss_type, beta, lr)
            run = run_arm(arm_config(config, loss_type, beta, lr), run_dir, reuse_from=reuse_from, iterations=1,
                          log=log)
            samples = evaluation_run.generate_for_models(run, prompts, Path(root) / "eval", iterations=[0, 1],
                                                         log=log, **generation)
            r = evaluate.evaluate_against(judge, list(prompts), [y[0] for y in samples[1]],
                                          [y[0] for y in samples[0]], n_boot=n_boot)
            points.append({"loss_type": loss_type, "beta": float(beta), "learning_rate": float(lr),
                           "run_dir": str(run_dir), **evaluation_run.jsonable(r)})
            log(f"{ARM_NAMES[loss_type]} β {beta:g}, lr {lr:g}: π_1 vs π₀ {r['win_rate']:.1f} % "
                f"[{r['win_rate_ci'][0]:.1f}, {r['win_rate_ci'][1]:.1f}] on {len(prompts)} validation prompts")
    write_json_atomic(Path(root) / f"sweep-{loss_type}.json", points)
    return points


def best_point(points: Sequence[Mapping]) -> Mapping:
    """The point with the highest validation win rate (the first of equals)."""
    if not points:
        raise ValueError("no sweep points to choose from")
    return max(points, key=lambda p: p["win_rate"])


def run_comparison(config: Mapping, root, validation_prompts: Sequence[str], judge, betas: Sequence[float],
                   learning_rates: Sequence[float], baselines: Sequence[str] = ("dpo", "ipo"), n_boot: int = 1000,
                   log: Callable = print, **generation) -> dict:
    """SPPO at the recipe's own settings, each baseline's iteration-1 sweep, then each baseline at its best.

    Returns {"runs": {arm: loop.Run}, "sweeps": {baseline: sweep points}, "chosen": {baseline: best point}}. The
    arms live in root/<arm>; a baseline's full run reuses its best sweep point's iteration 1 (trained once).
    Everything is resumable: rerunning skips what is finished.
    """
    root = Path(root)
    runs = {"sppo": run_arm(arm_config(config, "sppo"), root / "sppo", log=log)}
    sweeps, chosen = {}, {}
    for loss_type in baselines:
        sweeps[loss_type] = sweep(config, root, loss_type, betas, learning_rates, validation_prompts, judge,
                                  reuse_from=root / "sppo", n_boot=n_boot, log=log, **generation)
        chosen[loss_type] = best_point(sweeps[loss_type])
        runs[loss_type] = run_arm(arm_config(config, loss_type, chosen[loss_type]["beta"],
                                             chosen[loss_type]["learning_rate"]),
                                  root / loss_type, reuse_from=chosen[loss_type]["run_dir"], log=log)
    write_json_atomic(root / "chosen.json", chosen)
    return {"runs": runs, "sweeps": sweeps, "chosen": chosen}


def mixture_responses(responses: Mapping[int, Sequence[str]], iterations: Sequence[int], seed: int = 0) -> list[str]:
    """One answer per prompt from the uniform mixture of the iterates: t ~ U(iterations), then π_t's answer.

    The average policy π̄ = (1/T) Σ_t π_t that SPPO's theory is about (its average iterate converges to the Nash
    equilibrium); drawing t per prompt and taking π_t's sample is an exact sample of π̄.
    """
    rng = np.random.default_rng(seed)
    n = len(responses[iterations[0]])
    picks = rng.choice(list(iterations), size=n)
    return [responses[t][i] for i, t in enumerate(picks)]


def evaluate_arms(runs: Mapping[str, loop.Run], prompts: Sequence[str], judge, out_dir, n_boot: int = 2000,
                  seed: int = 0, log: Callable = print, **generation) -> dict:
    """Every arm's iterates against π₀ and against each other, one seeded answer per prompt and model.

    Returns {"iterations", "prompts", "responses": {arm: {t: answers}} (t = 0 is π₀, shared), "cut_off": {arm: {t:
    share of answers stopped by the token cap}}, "vs_base": {arm: {t: evaluate_against(π_t, π₀)}},
    "head_to_head": {"a_vs_b": {t: evaluate_against(a's π_t, b's π_t)}} for each pair of arms, "average_vs_base":
    {arm: mixture of π_1..π_T vs π₀}, "average_vs_last": {arm: that mixture vs π_T}}.
    """
    prompts, arms = list(prompts), list(runs)
    finished_iters = {arm: evaluation_run.finished_iterations(run.output_dir) for arm, run in runs.items()}
    T = min(len(done) for done in finished_iters.values())
    if T == 0:
        raise ValueError(f"arm(s) {[a for a, d in finished_iters.items() if not d]} have no finished iteration")
    iterations = list(range(T + 1))
    responses, cut_off = {}, {}
    for arm, run in runs.items():
        data = evaluation_run.generate_datasets_for_models(run, prompts, out_dir, iterations=iterations, n=1,
                                                           seed=seed, log=log, **generation)
        responses[arm] = {t: [rs[0] for rs in ds["responses"]] for t, ds in data.items()}
        cut_off[arm] = {t: float(np.mean([not f[0] for f in ds["finished"]])) for t, ds in data.items()}
    boot = dict(n_boot=n_boot, seed=seed)
    base = responses[arms[0]][0]
    vs_base = {arm: {t: evaluate.evaluate_against(judge, prompts, responses[arm][t], base, **boot)
                     for t in iterations} for arm in arms}
    head = {f"{a}_vs_{b}": {t: evaluate.evaluate_against(judge, prompts, responses[a][t], responses[b][t], **boot)
                            for t in iterations[1:]}
            for k, a in enumerate(arms) for b in arms[k + 1:]}
    mixtures = {arm: mixture_responses(responses[arm], iterations[1:], seed=seed) for arm in arms}
    average_vs_base = {arm: evaluate.evaluate_against(judge, prompts, mixtures[arm], base, **boot) for arm in arms}
    average_vs_last = {arm: evaluate.evaluate_against(judge, prompts, mixtures[arm], responses[arm][T], **boot)
                       for arm in arms}
    return {"arms": arms, "iterations": iterations, "prompts": prompts, "responses": responses, "cut_off": cut_off,
            "vs_base": vs_base, "head_to_head": head, "average_vs_base": average_vs_base,
            "average_vs_last": average_vs_last}


def factual_arms(runs: Mapping[str, loop.Run], out_dir, log: Callable = print, **kwargs) -> dict:
    """{arm: factual.factual_eval(run)}: greedy answers to the factual questions, π₀'s shared through the cache."""
    from .factual import factual_eval

    return {arm: factual_eval(run, out_dir, log=log, **kwargs) for arm, run in runs.items()}


def summary(result: Mapping, factual: Mapping | None = None) -> dict:
    """The headline numbers of evaluate_arms (and factual_arms) as plain JSON."""
    T = result["iterations"][-1]
    out = {"n_prompts": len(result["prompts"]), "iterations": T, "cut_off": result["cut_off"],
           "vs_base": {a: {t: evaluation_run.jsonable(r) for t, r in per.items()} for a, per in result["vs_base"].items()},
           "head_to_head": {k: {t: evaluation_run.jsonable(r) for t, r in per.items()}
                            for k, per in result["head_to_head"].items()},
           "average_vs_base": {a: evaluation_run.jsonable(r) for a, r in result["average_vs_base"].items()},
           "average_vs_last": {a: evaluation_run.jsonable(r) for a, r in result["average_vs_last"].items()}}
    if factual:
        out["factual"] = {a: {"accuracy": f["accuracy"], "vs_base": f["vs_base"]} for a, f in factual.items()}
    return json.loads(json.dumps(out, default=float))
