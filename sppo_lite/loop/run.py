"""A run: an output folder, its config, its lock, and the bookkeeping every stage shares.

`Run.run_stage(t, stage)` skips a finished stage whose fingerprint matches, refuses one whose
fingerprint changed (until --force), and otherwise runs the stage's work into a temporary folder,
writes its manifest (fingerprint, counts, the artifact's content hash, versions) and renames the
folder into place. `Run.accept(iterations, force)` checks every finished stage's fingerprint before
any work and only then writes config.json.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from .artifacts import (RunLock, content_hash, hash_obj, publish, ranks, read_manifest,
                        wait_until, write_json_atomic, write_text_atomic)

__all__ = ["STAGES", "ARTIFACTS", "StageChanged", "Run", "run_iteration", "run_all", "quiet_datasets", "summary_rows",
           "summary_table"]

STAGES = ("generate", "judge", "build", "train")
# What each stage publishes under iter{t}/{stage}/.
ARTIFACTS = {"generate": "responses.parquet", "judge": "judgements.parquet", "build": "sppo.parquet",
             "train": "model"}


class StageChanged(ValueError):
    """A finished stage was made with another config or other inputs."""


def _versions() -> dict:
    out = {}
    for pkg in ("sppo-lite", "torch", "transformers", "datasets", "peft", "accelerate", "bitsandbytes",
                "llm-blender", "vllm", "deepspeed"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _launch_token() -> str:
    """Tells this launch's processes apart from a crashed earlier launch's leftovers."""
    import os

    return f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}:{os.environ.get('MASTER_PORT', '')}:{ranks()[1]}"


@dataclass
class Run:
    """An output directory and its config; `run.stage_dir(t, "judge")` → iter{t}/judge."""

    config: dict
    output_dir: Path
    log: Callable = print
    reuse_from: Path | None = None  # another run's folder: its finished stages with our fingerprint are copied

    def __post_init__(self):
        self.output_dir = Path(self.output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"--output-dir {self.output_dir} is a file: give a folder (new or a run's)")
        self.lock = RunLock(self.output_dir)
        self.prompt_cache: dict = {}  # iteration → (prompt ids, texts), read once per process
        self._sources: dict = {}      # section → its ModelSource, resolved once (model_source)
        if ranks()[0] != 0:  # one voice per launch: rank 0 reports
            self.log = lambda *_: None

    def stage_dir(self, t: int, stage: str) -> Path:
        return self.output_dir / f"iter{t}" / stage

    # ------------------------------------------------------------- models

    def policy_path(self, t: int) -> str:
        """π_t: the configured base model for t = 1, else the model trained in iteration t − 1."""
        if t == 1:
            return self.base_model("policy")
        prev = self.stage_dir(t - 1, "train")
        if read_manifest(prev) is None:
            raise ValueError(f"iteration {t} needs π_{t} from iteration {t - 1}: run its train stage first")
        return str(prev / "model")

    def model_source(self, section: str):
        """The ModelSource of policy.model or judge.model (tiny, named, folder, Hub id), resolved once per run."""
        if section not in self._sources:
            from ..model_source import resolve_model

            try:
                self._sources[section] = resolve_model(self.config[section]["model"])
            except (ValueError, FileNotFoundError) as err:
                raise type(err)(f"{section}.model: {err}") from None
        return self._sources[section]

    def check_models(self) -> None:
        """Resolve the policy and (for a judge that has one) the judge's model now: a bad name fails before any work."""
        from .stages import judge_has_model

        self.model_source("policy")
        if judge_has_model(self.config):
            self.model_source("judge")

    def policy_identity(self, t: int) -> str:
        """π_t as fingerprints see it: the base model's identity, or iteration t − 1's verified model hash."""
        if t == 1:
            source = self.model_source("policy")
            return source.identity(None if source.kind == "tiny" else self.base_model("policy"))
        return self.upstream(t - 1, "train")

    def base_model(self, section: str) -> str:
        """The configured model's path (ModelSource.path); the tiny one is built once under base/."""
        import json

        source = self.model_source(section)
        if source.kind != "tiny":
            return source.path()
        target = self.output_dir / "base" / ("tiny-policy" if section == "policy" else "tiny-pairrm")
        if ranks()[0] != 0:  # rank 0 builds it; the others wait for it to be complete and usable
            wait_until(lambda: (target / ".complete").exists() and (
                section == "policy" or Path(json.loads((target / "config.json").read_text())["model_name"]).is_dir()))
            return str(target)
        if not (target / ".complete").exists():
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            seed = self.config["seed"]
            if section == "policy":
                from ..modeling import save_tiny_policy

                save_tiny_policy(tmp, seed=seed)
            else:
                from ..pairrm import build_tiny_pairrm

                build_tiny_pairrm(tmp, seed=seed)
            (tmp / ".complete").write_text("")
            shutil.rmtree(target, ignore_errors=True)
            tmp.replace(target)
        if section == "judge":
            # The ranker config records its backbone's absolute path: rebuild it if the folder moved.
            cfg = json.loads((target / "config.json").read_text())
            if not Path(cfg["model_name"]).is_dir():
                cfg["model_name"] = str((target / "backbone").resolve())
                write_json_atomic(target / "config.json", cfg)
        return str(target)

    # ------------------------------------------------------------- upstream artifacts

    def upstream(self, t: int, stage: str) -> str:
        """The content hash of iter{t}/{stage}'s artifact, verified against its manifest before use."""
        final = self.stage_dir(t, stage)
        done = read_manifest(final)
        if done is None:
            raise ValueError(f"iter{t}/{stage} has not finished: run `sppo-lite {stage}` for iteration {t} first "
                             f"(or `sppo-lite iterate`)")
        artifact = final / ARTIFACTS[stage]
        if not artifact.exists():
            raise ValueError(f"iter{t}/{stage}/{ARTIFACTS[stage]} is missing though its manifest says the stage "
                             f"finished: redo it with --force {stage}")
        found = content_hash(artifact)
        if found != done["artifact_hash"]:
            raise ValueError(f"iter{t}/{stage}/{ARTIFACTS[stage]} does not match its manifest (content hash {found} ≠ "
                             f"{done['artifact_hash']}): it changed after it was written; redo it with --force {stage}")
        return found

    # ------------------------------------------------------------- accepting a config

    def accept(self, iterations: int, force=()) -> None:
        """Check every finished stage's fingerprint (iterations 1..N, in order) before any work, then write config.json.

        Raises StageChanged for the first finished stage made with another config, unless forced; a
        forced stage and everything after it will be redone, so nothing later is checked.
        """
        from .config import check_prompt_source
        from .stages import STAGE_SPECS, check_prompts_fit

        check_prompt_source(self.config)
        self.check_models()
        with self.lock:
            if ranks()[0] == 0:
                for t in range(1, iterations + 1):  # every iteration's prompts parse, and some fit, before any work
                    if read_manifest(self.stage_dir(t, "generate")) is None or "generate" in force:
                        check_prompts_fit(self, t)
                for t in range(1, iterations + 1):
                    for stage in STAGES:
                        done = read_manifest(self.stage_dir(t, stage))
                        if done is None or stage in force:
                            return self._write_config()
                        self._check_fingerprint(t, stage, STAGE_SPECS[stage].fingerprint(self, t), done)
                self._write_config()

    def _write_config(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.output_dir / "config.json", self.config)

    def _check_fingerprint(self, t: int, stage: str, fingerprint: dict, done: dict) -> str:
        config_hash = hash_obj(fingerprint)
        if done["config_hash"] != config_hash:
            old = done.get("inputs") or {}
            changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise StageChanged(
                f"iter{t}/{stage} was made with a different config or inputs (changed: {', '.join(changed) or '?'}): "
                f"rerun with --force {stage} to redo it, or use a new --output-dir")
        return config_hash

    # ------------------------------------------------------------- running a stage

    def run_stage(self, t: int, stage: str, force: bool = False, **kwargs) -> dict:
        """Run iter{t}/{stage} unless it is finished with the same fingerprint; returns its manifest.

        Under torchrun / accelerate launch, rank 0 owns the folders, the lock and the manifest; with
        all_ranks every rank runs the work (sharded generation and judging, data-parallel training)
        and the others return None from it; without, the other ranks wait for rank 0's manifest.
        """
        from .stages import STAGE_SPECS

        spec = STAGE_SPECS[stage]
        with self.lock:
            return self._run_stage(t, stage, spec, force, kwargs)

    def _run_stage(self, t, stage, spec, force, kwargs) -> dict:
        final = self.stage_dir(t, stage)
        fingerprint = spec.fingerprint(self, t)
        config_hash = hash_obj(fingerprint)
        done = read_manifest(final)
        name = f"iter{t}/{stage}"
        if done is not None and not force:
            self._check_fingerprint(t, stage, fingerprint, done)
            self.upstream(t, stage)  # its own artifact (a model's weights too) still matches its manifest
            self.log(f"{name}: done already, skipped ({done['summary']})")
            return done
        if spec.check is not None:
            spec.check(self, t)
        rank, world = ranks()
        reused = self._reusable(t, stage, config_hash) if not force else None
        if reused is not None:
            if rank != 0:
                return self._wait_for_manifest(final, config_hash)
            return self._copy_stage(reused, final, name)
        partial, tmp = final.with_name(stage + ".partial"), final.with_name(stage + ".tmp")
        stamp, ready = partial / "config_hash", f"{config_hash} {_launch_token()}"
        if rank == 0:
            if partial.exists() and (force or not stamp.is_file() or stamp.read_text().split()[0] != config_hash):
                shutil.rmtree(partial)  # shards of another config (or forced): never mix them in
            partial.mkdir(parents=True, exist_ok=True)
            write_text_atomic(stamp, ready)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        elif not spec.all_ranks:
            return self._wait_for_manifest(final, config_hash)
        else:
            wait_until(lambda: stamp.is_file() and stamp.read_text() == ready)
        t0 = time.time()
        counts, summary = spec.work(self, t, tmp, partial, **kwargs)
        if rank != 0:
            return self._wait_for_manifest(final, config_hash)
        artifact = tmp / ARTIFACTS[stage]
        manifest = {
            "stage": stage, "iteration": t, "config_hash": config_hash, "inputs": fingerprint,
            "seed": self.config["seed"], "counts": counts, "summary": summary,
            "artifact": ARTIFACTS[stage], "artifact_hash": content_hash(artifact),
            "elapsed_s": round(time.time() - t0, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(), "world_size": world,
        }
        write_json_atomic(tmp / "manifest.json", manifest)
        publish(tmp, final)
        shutil.rmtree(partial, ignore_errors=True)
        self.log(f"{name}: {summary} in {manifest['elapsed_s']:.1f} s")
        return manifest

    def _reusable(self, t: int, stage: str, config_hash: str) -> Path | None:
        """reuse_from's iter{t}/{stage} when it is finished with this very fingerprint (same config and inputs)."""
        if self.reuse_from is None:
            return None
        other = Path(self.reuse_from) / f"iter{t}" / stage
        done = read_manifest(other)
        if done is None or done["config_hash"] != config_hash:
            return None
        if content_hash(other / done["artifact"]) != done["artifact_hash"]:
            return None  # changed since it was made: make ours instead
        return other

    def _copy_stage(self, other: Path, final: Path, name: str) -> dict:
        """Another run's finished stage copied in (hard links where the filesystem allows), published atomically."""
        import os

        def link_or_copy(src, dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(other, tmp, copy_function=link_or_copy)
        publish(tmp, final)
        done = read_manifest(final)
        self.log(f"{name}: reused from {other.parent.parent} (same fingerprint: {done['summary']})")
        return done

    @staticmethod
    def _wait_for_manifest(final: Path, config_hash: str) -> dict:
        wait_until(lambda: (m := read_manifest(final)) is not None and m["config_hash"] == config_hash)
        return read_manifest(final)


def summary_rows(run: Run, iterations: int) -> list[dict]:
    """One row per finished iteration: pairs trained on, optimizer steps, loss, mean judge win rate P̂ of the
    chosen responses, the last logged reward margin, how far the weights moved, wall time of its four stages."""
    import json

    import numpy as np

    rows = []
    for t in range(1, iterations + 1):
        manifests = {s: read_manifest(run.stage_dir(t, s)) for s in STAGES}
        if manifests["train"] is None:
            break
        train = manifests["train"]["counts"]
        history_file = run.stage_dir(t, "train") / "log_history.json"
        history = json.loads(history_file.read_text()) if history_file.is_file() else []

        def logged(key):
            values = [h[key] for h in history if key in h]
            return values

        p_hat = logged("win_prob/chosen") or logged("win_prob/response") or logged("win_prob/pair")
        margin = logged("rewards/margins")
        rows.append({"iteration": t, "pairs": manifests["build"]["counts"]["rows"], "steps": train.get("steps"),
                     "loss": train.get("metrics", {}).get("train_loss"),
                     "p_hat": float(np.mean(p_hat)) if p_hat else None, "margin": margin[-1] if margin else None,
                     "moved": (train.get("weight_change") or {}).get("relative_l2"),
                     "seconds": sum(m.get("elapsed_s", 0) for m in manifests.values()),
                     "model": str(run.stage_dir(t, "train") / "model")})
    return rows


def summary_table(rows: list[dict]) -> str:
    """summary_rows as a fixed-width text table."""
    def num(v, spec):
        return "—" if v is None else format(v, spec)

    lines = [f"{'iter':>4} {'pairs':>6} {'steps':>6} {'loss':>9} {'mean P̂':>7} {'margin':>8} {'‖Δθ‖/‖θ‖':>9} {'time':>8}"]
    for r in rows:
        lines.append(f"{r['iteration']:>4} {r['pairs']:>6} {num(r['steps'], 'd'):>6} {num(r['loss'], '.4g'):>9} "
                     f"{num(r['p_hat'], '.3f'):>7} {num(r['margin'], '.3g'):>8} {num(r['moved'], '.2e'):>9} "
                     f"{r['seconds']:>7.1f}s")
    return "\n".join(lines)


def quiet_datasets() -> None:
    """datasets' per-file progress bars would bury the one bar per stage."""
    import datasets

    datasets.disable_progress_bars()


def run_iteration(run: Run, t: int, force=(), stages=STAGES) -> dict:
    """Run the given stages of iteration t in order; finished stages are skipped unless forced."""
    return {s: run.run_stage(t, s, force=s in force) for s in stages}


def run_all(config: dict, output_dir, force=(), iterations=None, log=print, reuse_from=None) -> Run:
    """Iterations 1..T, each generate → judge → build → train; resumable at any point.

    One run per output folder at a time (the lock); every finished stage's fingerprint is checked
    before any work, and config.json is written only once the config is accepted. With reuse_from (another
    run's folder), a stage that run finished with this run's very fingerprint is copied instead of made again:
    arms that differ only in their loss share iteration 1's samples and judgements.
    """
    from .config import check_iterations

    n = check_iterations(config, iterations)
    quiet_datasets()
    if reuse_from is not None and not Path(reuse_from).is_dir():
        raise ValueError(f"--reuse-from {reuse_from} is not a folder: give another run's --output-dir")
    run = Run(config, output_dir, log, reuse_from=Path(reuse_from) if reuse_from is not None else None)
    new = not run.output_dir.exists()
    run.output_dir.mkdir(parents=True, exist_ok=True)
    with run.lock:
        try:
            run.accept(n, force)
        except (ValueError, OSError):
            if new and ranks()[0] == 0:  # refused inputs leave nothing behind (not even a tiny model built to check them)
                shutil.rmtree(run.output_dir, ignore_errors=True)
            raise
        from ..console import attach_log

        attach_log(run.output_dir)  # the libraries' messages (unless verbose) from here on, and those held back
        for t in range(1, n + 1):
            run_iteration(run, t, force=force)
    return run
