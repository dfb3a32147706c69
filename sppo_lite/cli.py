"""`sppo-lite` command line.

    sppo-lite toy                                    SPPO vs DPO on an intransitive toy game
    sppo-lite iterate --config F --output-dir D      iterations 1..T: generate → judge → build → train
    sppo-lite generate|judge|build|train --config F --output-dir D --iteration t
    sppo-lite notebooks [--full]                     execute the notebooks
    sppo-lite evaluate --run-dir D                   every iterate vs the base on held-out prompts (WR, LC WR, CIs)
    sppo-lite init [DIR]                             copy the recipes and prompts into DIR, to edit
    sppo-lite reproduce --output-dir D [--smoke] [--gpus N]   notebooks 04 → 05 with the 8-GPU recipe
    sppo-lite --version

Exit codes: 0 done; 2 a problem with the input, said in one line (a bad config value or file, the
output folder in use by another run or not writable, a full disk, a non-finite loss); 130 interrupted
(rerun the same command to resume); 1 anything else, with its traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STAGE_NAMES = ("generate", "judge", "build", "train")  # as sppo_lite.loop.STAGES, without importing it


def cmd_toy(args) -> int:
    """SPPO on weighted rock-paper-scissors: last vs average iterate vs iterative DPO, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sppo_lite import game, plots

    P = game.weighted_cycle(args.a, args.b, args.c)
    nash = game.nash_equilibrium(P)
    start = np.array([0.6, 0.3, 0.1])
    sppo = game.sppo_dynamics(P, args.eta, args.steps, pi0=start)
    avg = game.running_average(sppo)
    dpo = game.iterative_dpo_dynamics(P, beta=args.dpo_beta, steps=args.steps, K=5, pi0=start, seed=args.seed)
    curves = {
        "SPPO last iterate": game.exploitability_curve(P, sppo),
        "SPPO average iterate": game.exploitability_curve(P, avg),
        "iterative DPO (best vs worst of 5)": game.exploitability_curve(P, dpo),
        "Bradley–Terry argmax": [game.exploitability(P, game.bradley_terry_argmax(P))] * (args.steps + 1),
    }

    print(f"Weighted rock-paper-scissors (margins a={args.a}, b={args.b}, c={args.c}); "
          f"Nash by LP = {np.round(nash, 3)}, start = {start}, η = {args.eta}")
    print("Exploitability (0 exactly at the Nash equilibrium) by step:")
    print(_table(curves, sorted({0, 1, 10, 100, args.steps // 2, args.steps} & set(range(args.steps + 1)))))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    plots.plot_simplex(axes[0], {"SPPO last": sppo, "SPPO average": avg, "iterative DPO": dpo},
                       nash=nash, labels=("y0", "y1", "y2"))
    axes[0].set_title("policies on the simplex")
    plots.plot_exploitability(axes[1], curves)
    axes[1].set_title("distance from Nash")
    fig.tight_layout()
    out = Path(args.output_dir)
    path = plots.save_figure(fig, out, "toy_nash")
    summary = {"nash": nash.tolist(), "eta": args.eta, "steps": args.steps,
               **{k: float(v[-1]) for k, v in curves.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nThe average SPPO policy ends {curves['SPPO average iterate'][-1]:.4f} from Nash; "
          f"the last iterate {curves['SPPO last iterate'][-1]:.4f}; iterative DPO "
          f"{curves['iterative DPO (best vs worst of 5)'][-1]:.4f}.\nFigure: {path}")
    return 0


# Column headers of the toy table: two short lines each, so the table fits 80 columns.
_TOY_HEADERS = {"SPPO last iterate": ("SPPO", "last"), "SPPO average iterate": ("SPPO", "average"),
                "iterative DPO (best vs worst of 5)": ("iter. DPO", "best/worst"),
                "Bradley–Terry argmax": ("BT", "argmax")}


def _table(curves: dict, steps) -> str:
    """Exploitability per step, one column per method, headers on two lines (no name cut)."""
    names = list(curves)
    width = max(12, *(len(part) + 2 for n in names for part in _TOY_HEADERS.get(n, (n,))))
    heads = [_TOY_HEADERS.get(n, (n, "")) for n in names]
    lines = [f"{'':>6}" + "".join(f"{h[0]:>{width}}" for h in heads),
             f"{'step':>6}" + "".join(f"{h[1]:>{width}}" for h in heads)]
    lines += [f"{t:>6}" + "".join(f"{curves[n][t]:>{width}.4f}" for n in names) for t in steps]
    return "\n".join(lines)


def cmd_notebooks(args) -> int:
    """Run every notebook: SMOKE into --output-dir, or --full in place (refreshes committed outputs)."""
    from sppo_lite.notebooks import notebook_paths, refresh_notebook, run_notebook

    paths = [p for p in notebook_paths() if not args.only or any(s in p.name for s in args.only)]
    if not paths:
        print("no notebook matches --only " + " ".join(args.only), file=sys.stderr)
        return 2
    for p in paths:
        t0 = time.time()
        if args.full:
            refresh_notebook(p)
            mode = "full, in place"
        else:
            run_notebook(p, args.output_dir, smoke=True)
            mode = "SMOKE"
        print(f"{p.name}: {time.time() - t0:.1f} s ({mode})")
    return 0


def cmd_evaluate(args) -> int:
    """Every finished iteration's model against the base and the previous one, on prompts no iteration trained on."""
    from sppo_lite import console

    with console.routed("verbose" if args.verbose else "default"):
        return _evaluate(args)


def _evaluate(args) -> int:
    from sppo_lite import console
    from sppo_lite import evaluation_run as er

    run = er.load_run(args.run_dir, log=_say(False))
    if not er.finished_iterations(args.run_dir):
        raise ValueError(f"{args.run_dir} has no finished iteration yet: run `sppo-lite iterate` first")
    prompts = er.heldout_prompts(run.config, source=args.prompts, n=args.n_prompts)
    judge = er.make_eval_judge(run, [f"judge.{kv}" for kv in args.judge_set])
    from sppo_lite.factual import factual_eval, load_factual

    items = None if args.no_factual else load_factual(args.factual)  # a bad file fails before any work
    out = Path(args.run_dir) / "evaluation"
    out.mkdir(exist_ok=True)
    console.attach_log(out)
    g = run.config["generation"]
    result = er.evaluate_iterations(run, prompts, judge, out, n_boot=args.n_boot, seed=args.seed, log=_say(False),
                                    max_new_tokens=args.max_new_tokens or g["max_new_tokens"],
                                    temperature=g["temperature"], top_p=g["top_p"], batch_size=g["batch_size"],
                                    max_prompt_tokens=g["max_prompt_tokens"], device=run.config["policy"]["device"])
    rows = {er.model_label(run, t): result["vs_base"][t] for t in result["iterations"][1:]}
    print(f"{len(prompts)} held-out prompts, one sample each, judged by the run's judge "
          f"({run.config['judge']['type']}); win rates vs {er.model_label(run, 0)}:")
    print(er.results_text(rows))
    summary = {"prompts": len(prompts), "judge": run.config["judge"]["type"],
               "vs_base": {t: er.jsonable(r) for t, r in result["vs_base"].items()},
               "vs_previous": {t: er.jsonable(r) for t, r in result["vs_previous"].items()}}
    if items is not None:
        fact = factual_eval(run, out, items=items, max_new_tokens=64, batch_size=g["batch_size"],
                            n_boot=args.n_boot, seed=args.seed, device=run.config["policy"]["device"], log=_say(False))
        print(f"independent signal: {len(fact['items'])} factual questions the judge never saw, greedy answers, "
              f"string match (accuracy, difference vs the base with its paired 95 % CI):")
        for t in fact["iterations"]:
            c = fact["vs_base"][t]
            delta = "" if t == 0 else (f"  {100 * c['difference']:+.1f} [{100 * c['difference_ci'][0]:+.1f}, "
                                       f"{100 * c['difference_ci'][1]:+.1f}]  McNemar p = {c['mcnemar_p']:.2f}")
            print(f"  {er.model_label(run, t):<44} {100 * c['accuracy']:5.1f} %{delta}")
        summary["factual"] = {t: fact["vs_base"][t] for t in fact["iterations"]}
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2))
    print(f"sppo-lite evaluate: {out / 'evaluation.json'}; the training judge also judges here, so a win partly "
          f"measures how well the policy learnt its taste (the factual questions do not)")
    return 0


def cmd_init(args) -> int:
    """The shipped recipes (configs/) and prompt set (data/prompts.jsonl) copied into a folder of one's own."""
    from sppo_lite.resources import copy_starter

    written = copy_starter(args.dir)
    print(f"sppo-lite init: {len(written)} files in {args.dir}: configs/*.yaml (recipes), configs/accelerate/, "
          f"data/prompts.jsonl\nnext: sppo-lite iterate --config {Path(args.dir) / 'configs' / 'cpu-tiny.yaml'} "
          f"--output-dir runs/cpu-tiny")
    return 0


def cmd_keys(args) -> int:
    """Every recipe key with its default and what it allows; with --config, the recipe's values as YAML."""
    from sppo_lite import loop

    if args.config is None:
        print(loop.config_reference(), end="")
        return 0
    import yaml

    print(yaml.safe_dump(loop.load_config(args.config, args.set), sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_pipeline(args) -> int:
    """One stage of one iteration, or (iterate) every stage of every iteration; resumable."""
    from sppo_lite import console

    with console.routed("quiet" if args.quiet else "verbose" if args.verbose else "default"):
        return _pipeline(args)


def _pipeline(args) -> int:
    from sppo_lite import console, loop, precision

    config = loop.load_config(args.config, args.set)
    loop.check_prompt_source(config)
    if args.command in ("iterate", "train"):  # 16-bit weights this lr cannot move: refused before any work
        precision.check_precision(config)
    t0 = time.time()
    if args.command == "iterate":
        force = _stages_to_force(args.force)
        n = loop.check_iterations(config, args.iterations)
        run = loop.run_all(config, args.output_dir, force=force, iterations=n, log=_say(args.quiet),
                           reuse_from=args.reuse_from)
        rows = loop.summary_rows(run, n)
        say = _say(False)
        say("\n" + loop.summary_table(rows))
        log_file = Path(args.output_dir) / console.LOG_NAME
        say(f"sppo-lite iterate: {n} iteration(s) complete in {args.output_dir} ({time.time() - t0:.1f} s); "
            f"the final model π_{n + 1}: {rows[-1]['model'] if rows else '—'}"
            + (f"\nlibrary messages: {log_file}" if log_file.is_file() and not args.verbose else ""))
    else:
        if not 1 <= args.iteration <= config["iterations"]:
            raise ValueError(f"--iteration must be between 1 and the config's iterations ({config['iterations']}), "
                             f"got {args.iteration}")
        loop.quiet_datasets()
        run = loop.Run(config, args.output_dir, log=_say(args.quiet))
        run.output_dir.mkdir(parents=True, exist_ok=True)
        console.attach_log(run.output_dir)
        loop.STAGE_FUNCTIONS[args.command](run, args.iteration, force=args.force)
    return 0


def _say(quiet: bool):
    """Our lines: printed (unless quiet) and kept in the run's log."""
    import logging

    logger = logging.getLogger("sppo_lite.run")

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)
        logger.info(text)

    return say


def _stages_to_force(names) -> tuple:
    """`--force` values → stage names; `--force` alone is an error (it would silently redo nothing)."""
    if names is None:
        return ()
    if not names:
        raise ValueError("--force needs the stages to redo, e.g. --force generate judge, or --force all")
    return STAGE_NAMES if "all" in names else tuple(names)


def cmd_reproduce(args) -> int:
    """The full reproduction: notebooks 04 (train) and 05 (evaluate) through papermill; rerun to resume."""
    from sppo_lite.reproduce import reproduce

    t0 = time.time()
    summaries = reproduce(args.output_dir, smoke=args.smoke, gpus=args.gpus, config=args.config)
    table = summaries.get("05_evaluation", {}).get("vs_base", {})
    for label, result in table.items():
        print(f"{label}: win rate vs base {result['win_rate']:.1f}, LC {result['lc_win_rate']:.1f}")
    print(f"sppo-lite reproduce: done in {time.time() - t0:.0f} s; notebooks, figures and iterations in "
          f"{args.output_dir}")
    return 0


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sppo-lite")
    except metadata.PackageNotFoundError:
        from sppo_lite import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    def fmt(prog):
        return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30)

    parser = argparse.ArgumentParser(prog="sppo-lite", description=__doc__, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"sppo-lite {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_text, description=None):
        return sub.add_parser(name, help=help_text, description=description or help_text, formatter_class=fmt)

    toy = add("toy", "SPPO vs DPO on an intransitive toy game (seconds, CPU)",
              "SPPO on weighted rock-paper-scissors: last vs average iterate vs iterative DPO and the\n"
              "Bradley–Terry argmax; prints exploitability per step and saves one figure.")
    toy.add_argument("--config", help="YAML file of defaults (configs/toy.yaml); flags override it")
    toy.add_argument("--output-dir", default="outputs/toy")
    toy.add_argument("--eta", type=float, default=1.0, help="SPPO step size η = 1/β")
    toy.add_argument("--steps", type=int, default=1000)
    toy.add_argument("--dpo-beta", type=float, default=0.5)
    toy.add_argument("--a", type=float, default=0.9, help="margin of y0 over y1")
    toy.add_argument("--b", type=float, default=0.5, help="margin of y2 over y0")
    toy.add_argument("--c", type=float, default=0.3, help="margin of y1 over y2")
    toy.add_argument("--seed", type=int, default=0)
    toy.set_defaults(func=cmd_toy)

    nb = add("notebooks", "execute the notebooks (SMOKE, or --full in place)",
             "Execute every notebook through papermill: SMOKE into --output-dir, or --full in place\n"
             "(refreshes the committed outputs; 04 and 05 need a GPU for their full setting).")
    nb.add_argument("--full", action="store_true", help="full setting, outputs written into the .ipynb")
    nb.add_argument("--output-dir", default="outputs/notebooks")
    nb.add_argument("--only", nargs="*", default=[], help="substrings of notebook names to run")
    nb.set_defaults(func=cmd_notebooks)
    rep = add("reproduce", "the full reproduction: notebooks 04 → 05 (resumable)",
              "The full reproduction: notebook 04 (training, the 8-GPU recipe) then 05 (evaluation), through\n"
              "papermill, everything under --output-dir. Rerun the same command to resume.")
    rep.add_argument("--output-dir", required=True, help="executed notebooks, figures and iterations land here")
    rep.add_argument("--smoke", action="store_true", help="the SMOKE setting: tiny models on CPU, about a minute")
    rep.add_argument("--gpus", type=int, help="GPUs for training (default: all visible); > 1 uses accelerate launch")
    rep.add_argument("--config", default="configs/full-8gpu-mistral7b.yaml", help="the recipe notebook 04 runs")
    rep.set_defaults(func=cmd_reproduce)
    ev = add("evaluate", "every iterate vs the base on held-out prompts (WR, LC WR, 95 %% CIs)",
             "Every finished iteration's model against the base model (and the previous iteration) on prompts\n"
             "no iteration trained on, one seeded sample each, judged by the run's own judge: win rate, length-\n"
             "controlled win rate and bootstrap 95 % CIs. Responses are cached under RUN_DIR/evaluation/.")
    ev.add_argument("--run-dir", required=True, help="the --output-dir of a `sppo-lite iterate` run")
    ev.add_argument("--prompts", help="an evaluation prompt file (default: the run's own, minus trained prompts)")
    ev.add_argument("--n-prompts", type=int, default=64, help="held-out prompts to use (default 64)")
    ev.add_argument("--max-new-tokens", type=int, help="default: the run's generation.max_new_tokens")
    ev.add_argument("--judge-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the run's judge, e.g. --judge-set type=length (repeatable)")
    ev.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the CIs")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--factual", help="factual questions with known answers (default: the shipped data/factual_qa.jsonl)")
    ev.add_argument("--no-factual", action="store_true", help="skip the factual-accuracy signal")
    ev.add_argument("-v", "--verbose", action="store_true", help="show every library message")
    ev.set_defaults(func=cmd_evaluate)
    init = add("init", "copy the shipped recipes and prompts into a folder, to edit",
               "Copy configs/ (every recipe and accelerate config) and data/prompts.jsonl into DIR; nothing\n"
               "is overwritten. The recipes also run by name from anywhere: --config cpu-tiny.")
    init.add_argument("dir", nargs="?", default="sppo-lite-recipes", help="a new or empty folder")
    init.set_defaults(func=cmd_init)
    keys = add("keys", "every recipe key: default, allowed values, meaning (or a recipe's values)",
               "Every key a recipe may set, as a markdown table (docs/config.md is this output). With --config,\n"
               "the recipe's merged and checked values instead, as YAML.")
    keys.add_argument("--config", help="a recipe (path or shipped name) to show the values of")
    keys.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override, as iterate takes")
    keys.set_defaults(func=cmd_keys)
    subcommands = {"toy": toy, "notebooks": nb, "reproduce": rep, "init": init, "evaluate": ev, "keys": keys}
    stage_help = {"generate": "K samples per prompt from π_t", "judge": "K×K win matrices from the judge",
                  "build": "pairs, win rates and reference log-probs", "train": "SPPO training: π_t → π_{t+1}"}
    for name, text in [("iterate", "all stages of iterations 1..T (resumable)"), *stage_help.items()]:
        sp = add(name, text, f"{text[0].upper()}{text[1:]}.\n\n" + (
            "Finished stages are skipped; a killed run resumes where it stopped; a stage whose config\n"
            "changed is refused until --force. Example:\n"
            "  sppo-lite iterate --config configs/cpu-tiny.yaml --output-dir runs/cpu-tiny"
            if name == "iterate" else
            f"One stage of one iteration (after the stages before it). Example:\n"
            f"  sppo-lite {name} --config configs/cpu-tiny.yaml --output-dir runs/cpu-tiny --iteration 1"))
        sp.add_argument("--config", required=True,
                        help="YAML recipe: a path, or a shipped recipe's name (cpu-tiny, cpu-smollm2, ...)")
        sp.add_argument("--output-dir", required=True, help="one folder per iteration and stage lands here")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set generation.k=8 (repeatable)")
        loud = sp.add_mutually_exclusive_group()
        loud.add_argument("-v", "--verbose", action="store_true",
                          help="show every library message and progress bar (default: ours; the rest in run.log)")
        loud.add_argument("-q", "--quiet", action="store_true", help="errors, warnings and the final table only")
        if name == "iterate":
            sp.add_argument("--iterations", type=int, help="run only iterations 1..N")
            sp.add_argument("--reuse-from", metavar="RUN_DIR",
                            help="copy in the stages another run finished with this run's very fingerprint (e.g. "
                                 "iteration 1's samples and judgements for an arm that differs only in its loss)")
            sp.add_argument("--force", nargs="*", choices=(*STAGE_NAMES, "all"), metavar="STAGE",
                            help="redo these stages (or all) of every iteration even if finished")
        else:
            sp.add_argument("--iteration", type=int, default=1, help="SPPO iteration t (default 1)")
            sp.add_argument("--force", action="store_true", help="redo the stage even if finished")
        sp.set_defaults(func=cmd_pipeline)
        subcommands[name] = sp
    parser.subcommands = subcommands
    return parser


def load_config(path, parser: argparse.ArgumentParser, command: str) -> dict:
    """Read a YAML config whose keys are the command's option names (dashes or underscores)."""
    from sppo_lite.loop import read_yaml_mapping
    from sppo_lite.resources import recipe_path

    cfg = read_yaml_mapping(recipe_path(path))
    sub = parser.subcommands[command]
    known = {a.dest for a in sub._actions} - {"help", "config"}
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"config file {path}: unknown option(s) {', '.join(unknown)} for "
                         f"'{command}'; known: {', '.join(sorted(known))}")
    sub.set_defaults(**cfg)
    return cfg


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "toy" and args.config:  # config gives defaults, command-line flags win
            load_config(args.config, parser, args.command)
            args = parser.parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"sppo-lite {args.command}: interrupted; finished work is kept: rerun the same command to resume",
              file=sys.stderr)
        return 130
    except (ValueError, FloatingPointError, ImportError) as err:  # user-fixable input: one line, no traceback
        print(f"sppo-lite {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file in the way, permissions, a full disk
        print(f"sppo-lite {args.command}: error: {_os_error(err)}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from sppo_lite.loop import RunLocked

        if not isinstance(err, RunLocked):
            raise
        print(f"sppo-lite {args.command}: error: {err}", file=sys.stderr)
        return 2


def _os_error(err: OSError) -> str:
    """One line for an OS error, with what to do about the usual ones."""
    import errno

    where = f": {err.filename}" if getattr(err, "filename", None) else ""
    text = f"{err.strerror or err}{where}"
    if err.errno == errno.ENOSPC:
        return f"{text}: free disk space (or use an --output-dir on a bigger disk) and rerun; finished work is kept"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{text}: the folder is not writable; choose an --output-dir you can write to"
    if err.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return f"{text}: a file is in the way of a folder (or the reverse); move it or choose another --output-dir"
    return text


if __name__ == "__main__":
    sys.exit(main())
