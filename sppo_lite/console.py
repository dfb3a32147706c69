"""What a run prints: our lines and one progress bar per stage; the libraries' chatter goes to the run's log.

    set_verbosity     "quiet" (errors and the final table) | "default" | "verbose" (everything, as the libraries print it)
    verbosity         the current one (SPPO_LITE_VERBOSITY, so the processes of a launch share it)
    attach_log        from now on (and for what was held back before), library output goes to FOLDER/run.log
    library_output    a context in which prints of a library (llm-blender's loader) go to the log instead

Hand-written: each library has its own switch (transformers' and huggingface_hub's progress bars and
verbosity, datasets' bars, Python warnings, the root logger that llm-blender writes to); this module
throws them together once, so that `sppo-lite iterate` shows its own lines, and the log keeps the rest.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from pathlib import Path

__all__ = ["VERBOSITIES", "set_verbosity", "routed", "verbosity", "attach_log", "library_output", "LOG_NAME"]

VERBOSITIES = ("quiet", "default", "verbose")
LOG_NAME = "run.log"
_ENV = "SPPO_LITE_VERBOSITY"
_LIBRARIES = ("transformers", "datasets", "accelerate", "peft", "bitsandbytes", "huggingface_hub", "DeepSpeed",
              "llm_blender", "py.warnings", "sppo_lite")
class _Held(logging.Handler):
    """Records kept (the last 10,000) until the run's folder is known, then written to its log as they come."""

    def __init__(self):
        super().__init__()
        import collections

        self.buffer = collections.deque(maxlen=10_000)
        self.target: logging.Handler | None = None

    def emit(self, record):
        if self.target is not None:
            self.target.handle(record)
        else:
            self.buffer.append(record)

    def set_target(self, target) -> None:
        self.target = target
        while target is not None and self.buffer:
            target.handle(self.buffer.popleft())


_held = _Held()  # until the run's folder is known
_held.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))


def verbosity() -> str:
    value = os.environ.get(_ENV, "verbose")  # the library used from Python (tests, notebooks): as it was
    return value if value in VERBOSITIES else "default"


def set_verbosity(level: str) -> None:
    """Route the libraries' output for this process and the processes it launches (an environment variable)."""
    if level not in VERBOSITIES:
        raise ValueError(f"verbosity must be one of {', '.join(VERBOSITIES)}, got {level!r}")
    os.environ[_ENV] = level
    if level == "verbose":
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")  # no "Setting accelerator" line
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import datasets
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # loading / writing shards: one bar per stage is ours
    huggingface_hub.utils.disable_progress_bars()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.captureWarnings(True)
    for name in _LIBRARIES:
        logger = logging.getLogger(name)
        logger.handlers = [_held]
        logger.propagate = False
        logger.setLevel(logging.INFO if name == "sppo_lite" else logging.WARNING)
    ours = logging.StreamHandler()  # sppo-lite's own warnings say what to fix: they stay on the console
    ours.setLevel(logging.WARNING)
    ours.setFormatter(logging.Formatter("warning: %(message)s"))
    logging.getLogger("sppo_lite").addHandler(ours)
    root = logging.getLogger()
    root.handlers = [_held]  # llm-blender warns through the root logger
    root.setLevel(logging.WARNING)
    transformers.utils.logging.get_logger("transformers").handlers = [_held]


@contextlib.contextmanager
def routed(level: str):
    """set_verbosity(level) inside, and this process's logging, warnings and bars as they were afterwards
    (a command called from Python, e.g. a test or a notebook, leaves nothing changed behind it)."""
    import datasets
    import huggingface_hub.utils
    import transformers

    names = [*_LIBRARIES, ""]
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate, logging.getLogger(n).level)
             for n in names}
    env = {k: os.environ.get(k) for k in (_ENV, "DS_ACCELERATOR", "TRANSFORMERS_NO_ADVISORY_WARNINGS")}
    outer_target, outer_buffer = _held.target, list(_held.buffer)
    warnings_captured = logging.getLogger("py.warnings").handlers
    hf_level = transformers.utils.logging.get_verbosity()
    hf_bars = transformers.utils.logging.is_progress_bar_enabled()
    hub_bars = not huggingface_hub.utils.are_progress_bars_disabled()
    ds_bars = datasets.is_progress_bar_enabled()
    try:
        _held.target = None
        _held.buffer.clear()
        set_verbosity(level)
        yield
    finally:
        target = _held.target
        if target is None:  # the run's folder was never known: what went wrong is shown, not dropped
            for record in _held.buffer:
                if record.levelno >= logging.WARNING:
                    print(f"{record.name}: {record.getMessage()}", file=sys.stderr)
        elif target is not outer_target:
            target.close()
        _held.buffer.clear()
        _held.buffer.extend(outer_buffer)
        _held.target = outer_target
        if not warnings_captured:
            logging.captureWarnings(False)
        for n, (handlers, propagate, lvl) in saved.items():
            logger = logging.getLogger(n)
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(lvl)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        transformers.utils.logging.set_verbosity(hf_level)
        (transformers.utils.logging.enable_progress_bar if hf_bars else transformers.utils.logging.disable_progress_bar)()
        (huggingface_hub.utils.enable_progress_bars if hub_bars else huggingface_hub.utils.disable_progress_bars)()
        (datasets.enable_progress_bars if ds_bars else datasets.disable_progress_bars)()


def attach_log(folder) -> Path | None:
    """Send what was held back, and everything after, to FOLDER/run.log (appended: a resumed run adds to it)."""
    if verbosity() == "verbose":
        return None
    path = Path(folder) / LOG_NAME
    if _held.target is not None and getattr(_held.target, "baseFilename", None) == str(path.resolve()):
        return path  # already writing there (run_all called twice in one command)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_held.formatter)
    previous = _held.target
    _held.set_target(handler)
    if previous is not None:
        previous.close()
    return path


@contextlib.contextmanager
def library_output():
    """Prints made inside (llm-blender's "Successfully loaded ranker") go to the log unless verbose."""
    if verbosity() == "verbose":
        yield
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    text = buffer.getvalue().strip()
    if text:
        logging.getLogger("sppo_lite").info(text)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
