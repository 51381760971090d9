"""Commands on a finished run's output directory, read with the answers file it holds: benchmark
it again (--benchmark-only), upload it (--upload-only), chat with its model (--chat).
`--set KEY=VALUE` overrides still apply (a smaller benchmark, another hub_repo)."""

from __future__ import annotations

from finetuner import noise
from finetuner.wizard.gather import config_of, hub_token_for_upload
from finetuner.wizard.questions import Answers


def benchmark(out_dir: str, overrides: Answers, show_samples: int) -> None:
    # A run trained with benchmark: false is benchmarked now: its benchmark settings apply.
    cfg = config_of(out_dir, overrides, forced={"benchmark": True})
    from finetuner.evaluation import benchmark_output

    benchmark_output(cfg, out_dir, show_samples=show_samples)


def upload(out_dir: str, overrides: Answers) -> str:
    """Write the card and upload; a token is asked for only where none is configured."""
    from finetuner import hub, ui
    from finetuner.sources import hub_offline

    if hub_offline():
        raise ui.UserError("HF_HUB_OFFLINE is set, so the Hub can't be reached to upload",
                           hint="once online, unset HF_HUB_OFFLINE (or set it to 0) and run this again")
    cfg = config_of(out_dir, overrides, forced={"upload": True})
    return hub.publish(cfg, out_dir, token=hub_token_for_upload())


def chat(out_dir: str, overrides: Answers, compare: bool, verbose: bool) -> None:
    from finetuner import chat as terminal_chat

    with noise.routed_to_log(out_dir, verbose):
        terminal_chat.run(config_of(out_dir, overrides), out_dir, compare=compare)
