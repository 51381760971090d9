"""Library chatter (transformers/peft/accelerate warnings, FutureWarnings, the pad/bos/eos notice,
`loss_type=None`, "missing keys lm_head.weight" when a tied model resumes) goes into
OUTPUT_DIR/library-warnings.log instead of through the progress line; one dimmed line says how
many there were. `--verbose` leaves the libraries to print as they always do.

Tracebacks Python or asyncio print for a Ctrl-C that was already handled are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path

from finetuner import ui

LOG_FILE = "library-warnings.log"
_LOGGERS = ("transformers", "peft", "accelerate", "torch", "datasets", "huggingface_hub", "bitsandbytes")


class _Collector(logging.Handler):
    def __init__(self, path: Path):
        super().__init__(level=logging.WARNING)
        self.path = path
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.write(f"[{record.name}] {record.levelname}: {record.getMessage()}")

    def write(self, line: str) -> None:
        self.count += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line.rstrip() + "\n")


@contextlib.contextmanager
def routed_to_log(out_dir: str | Path, verbose: bool = False):
    """While active, library warnings are written to OUT/library-warnings.log, not the terminal."""
    if verbose:
        yield
        return
    from transformers.utils import logging as transformers_logging

    collector = _Collector(Path(out_dir) / LOG_FILE)
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    for logger in loggers:
        logger.handlers = [collector]
        logger.propagate = False
    transformers_logging.disable_default_handler()
    shown = warnings.showwarning

    def to_log(message, category, filename, lineno, file=None, line=None):
        collector.write(f"[{category.__name__}] {message} ({Path(filename).name}:{lineno})")

    warnings.showwarning = to_log
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each distinct warning once, into the log
            warnings.showwarning = to_log
            yield
    finally:
        warnings.showwarning = shown
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        transformers_logging.enable_default_handler()
        if collector.count:
            ui.console.print(f"[dim]{collector.count} library warning{'s' * (collector.count > 1)} went to "
                             f"{ui.escape(str(collector.path))} (--verbose shows them here)[/]", soft_wrap=True)


def hide_handled_interrupts() -> None:
    """Drop the tracebacks printed for a Ctrl-C the CLI already handles ("Cancelled.", exit 130)."""
    sys.unraisablehook = _drop_interrupted_cleanup
    logging.getLogger("asyncio").addFilter(_DropLateInterrupt())


def _drop_interrupted_cleanup(unraisable) -> None:
    """A Ctrl-C that lands in a garbage-collection callback is ignored by Python, which prints a
    traceback for it; the user already pressed Ctrl-C, so the traceback only alarms."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


class _DropLateInterrupt(logging.Filter):
    """A Ctrl-C that reaches prompt_toolkit just as a prompt closes makes asyncio log a traceback
    from KeyProcessor.send_sigint; the interrupt itself is handled, so the traceback only alarms."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "send_sigint" not in record.getMessage()
