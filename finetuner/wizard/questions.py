"""The wizard's questions as data: wording and order live here; types, defaults and
ranges live in config.py. The same Question drives the prompt, replay and validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from finetuner.config import applies, default_for
from finetuner.sources import BUILTIN_DATASETS, BUILTIN_MODELS, is_documents, layer_count, tokenizers_differ

Answers = dict[str, Any]


@dataclass(frozen=True)
class Question:
    key: str
    prompt: str | Callable[[Answers], str]
    kind: str = "text"  # text | select | confirm | secret
    choices: tuple[tuple[str, Any], ...] = ()  # (title, value)
    help: str | Callable[[Answers], str] | None = None  # one line shown above the prompt
    ask: bool = True  # False: settable by file or --set only (advanced)
    # True for settings added after answers files existed: a file without the key replays as it did
    # before (the config default), instead of reporting it missing.
    optional_in_files: bool = False
    secret: bool = False  # never written to an answers file
    default: Callable[[Answers], Any] | None = None  # overrides config.default_for
    skip_note: str | None = None  # said on a terminal when the question does not apply

    def applies(self, answers: Answers) -> bool:
        return self.secret or applies(self.key, answers)

    def default_value(self, answers: Answers) -> Any:
        return self.default(answers) if self.default else default_for(self.key, answers)

    def help_for(self, answers: Answers) -> str | None:
        return self.help(answers) if callable(self.help) else self.help

    def text(self, answers: Answers) -> str:
        return self.prompt(answers) if callable(self.prompt) else self.prompt


def _half_of_teacher(answers: Answers) -> int | None:
    if answers.get("student") != answers.get("teacher"):
        return None
    layers = layer_count(answers.get("teacher", ""))
    return max(1, layers // 2) if layers else default_for("student_layers", answers)


def _teacher_prompt(answers: Answers) -> str:
    if answers.get("teacher_api_base"):
        return f"Teacher model name at {answers['teacher_api_base']}"
    return "Teacher model (the larger one)"


def _default_mode(answers: Answers) -> str:
    """responses when logits can't work: an API teacher, or tokenizers known to differ."""
    if answers.get("teacher_api_base") or tokenizers_differ(answers.get("teacher", ""), answers.get("student", "")):
        return "responses"
    return default_for("distillation_mode", answers)


def _default_questions(answers: Answers) -> int:
    return 3 if is_documents(answers.get("dataset", "")) else 0


def _student_layers_help(answers: Answers) -> str:
    if answers.get("student") == answers.get("teacher"):
        return ("The teacher minus one block of layers (first and last kept), the block chosen by loss on "
                "your data. Half the layers is a common start.")
    return "Fewer layers make a smaller, faster student; Enter trains the student model as it is."


def _student_layers_prompt(answers: Answers) -> str:
    if answers.get("student") == answers.get("teacher"):
        total = layer_count(answers["teacher"])
        of = f" of its {total}" if total else ""
        return f"Derive the student by keeping how many{of} decoder layers?"
    return "Keep how many decoder layers of the student? (Enter keeps all)"


_MODELS_HINT = f"built-in: {', '.join(BUILTIN_MODELS)} (works offline), a local directory, or a Hub id"
_DATA_HINT = (f"built-in: {', '.join(BUILTIN_DATASETS)} (works offline), a local .json/.jsonl/.csv/.txt/.parquet "
              "file, or a Hub dataset id")

QUESTIONS: tuple[Question, ...] = (
    Question("approach", "Step 0 - what do you want to do?", "select",
             (("Fine-tuning: adapt a model to your data (LoRA, QLoRA, AdaLoRA)", "fine-tuning"),
              ("Distillation: teach a smaller student to imitate a larger teacher", "distillation")),
             help="Fine-tune when you want a better model of the same size; distill when you want a smaller, "
                  "faster model that keeps most of a bigger one's quality."),
    Question("model", "Model to fine-tune", help=_MODELS_HINT),
    Question("method", "Method", "select",
             (("LoRA: small trainable adapters on a frozen model", "lora"),
              ("QLoRA: LoRA on a 4/8-bit quantised model (least memory)", "qlora"),
              ("AdaLoRA: LoRA that moves rank to where it helps", "adalora")),
             help="LoRA is the usual choice; QLoRA when memory is tight; AdaLoRA to let rank follow the data."),
    # A teacher that writes: where it lives is asked before its name, since an API teacher's name is
    # a model at that endpoint, not something to find locally.
    Question("teacher_api_base", "Teacher behind an OpenAI-compatible endpoint? Its base URL (Enter: a local teacher)",
             optional_in_files=True,
             help="e.g. http://127.0.0.1:8000/v1 for vLLM, llama.cpp, Ollama or `transformers serve`; "
                  "an API teacher writes responses, it gives no logits"),
    Question("teacher_api_key_env", "Name of the environment variable holding the API key",
             help="only the variable's name is saved; the key is never asked for, printed or written"),
    Question("teacher", _teacher_prompt, help=_MODELS_HINT),
    Question("student", "Student model (Enter derives it from the teacher)", help=_MODELS_HINT),
    Question("student_layers", _student_layers_prompt, default=_half_of_teacher, help=_student_layers_help),
    Question("distillation_mode", "What should the student learn from the teacher?", "select",
             (("logits: match the teacher's token probabilities (teacher weights, same tokenizer; richest signal)",
               "logits"),
              ("responses: fine-tune on answers the teacher writes (any teacher: API, other tokenizer)", "responses"),
              ("hybrid: the teacher writes answers, then logits distillation on them (weights, same tokenizer)",
               "hybrid")),
             default=_default_mode, optional_in_files=True),
    Question("output_dir", "Output directory",
             help="Where the model, checkpoints, logs and benchmark go (Tab completes paths)."),
    Question("dataset", "Dataset", help=_DATA_HINT),
    Question("dataset_config", "Dataset config name (Enter for none)",
             help="The dataset's configuration (subset) name, as on its Hub page; most datasets have none."),
    Question("dataset_split", "Dataset split",
             help="Which split to train on (train, test, ...); finetuner holds part of it out itself."),
    Question("dataset_files", "Data files pattern within the dataset (Enter for all)",
             help="A glob such as data/train-*.parquet to read only some of the dataset's files."),
    Question("max_samples", "How many samples to use",
             help="Rows to use, picked at random (seeded); fewer rows train faster. 10% is held out."),
    Question("max_length", "Maximum sequence length (tokens)",
             help="Rows longer than this are cut (or left out: long_rows drop); longer fits more text "
                  "but costs memory and time."),
    Question("temperature", "Temperature (softens both models' distributions; usually 1-5)",
             help="Higher spreads the teacher's probabilities, so the student learns more than its top "
                  "choice; 2 is typical."),
    Question("alpha", "Alpha (weight of the hard-label loss; 1 = plain fine-tuning, 0 = pure distillation)",
             help="0.5 mixes both; lower trusts the teacher more than the dataset's answers."),
    Question("student_training", "How should the student train?", "select",
             (("All weights (best quality)", "full"), ("LoRA adapters (less memory)", "lora"),
              ("QLoRA: LoRA on a 4/8-bit student (least memory; responses mode)", "qlora")),
             help="All weights learn the most; LoRA trains small adapters and needs far less memory."),
    Question("questions_per_chunk", "Questions the teacher writes per document chunk (0: the data has prompts)",
             default=_default_questions, optional_in_files=True),
    Question("generation_max_new_tokens", "Longest response the teacher may write (tokens)", optional_in_files=True),
    Question("generation_temperature", "Teacher sampling temperature (0 = greedy, reproducible)",
             optional_in_files=True),
    Question("generation_token_budget", "Spend cap in tokens, prompts + responses (Enter: no cap)",
             optional_in_files=True),
    # The teacher cache: a teacher's top-k outputs kept on disk, so the teacher runs once.
    Question("teacher_cache", "Cache the teacher's top-k outputs in a directory, reused by every epoch and "
                              "later run (Enter for none)", optional_in_files=True,
             help="The teacher then runs once; a complete cache trains students without loading the teacher."),
    Question("teacher_top_k", "Teacher entries kept per token", ask=False),
    Question("lora_r", "LoRA rank r",
             help="Adapter rank: higher learns more but trains more parameters; 8-16 is typical."),
    Question("lora_alpha", "LoRA alpha",
             help="Scales the adapter's update (effective scale alpha/r); usually 2-4 times r."),
    Question("lora_dropout", "LoRA dropout",
             help="Dropout on the adapter's input; 0.05-0.1 helps against overfitting small data."),
    Question("quantization", "Quantisation", "select",
             (("4-bit NF4 (least memory)", "4bit"), ("8-bit", "8bit")),
             help="4-bit uses the least memory; 8-bit is a little more accurate."),
    Question("adalora_init_r", "AdaLoRA initial rank",
             help="Rank every adapter starts with before AdaLoRA moves rank around."),
    Question("adalora_target_r", "AdaLoRA target (average) rank",
             help="Average rank AdaLoRA ends with; must not exceed the initial rank."),
    Question("epochs", "Epochs",
             help="Passes over the training rows; 1-3 is typical, more risks memorising small data."),
    Question("batch_size", "Batch size",
             help="Rows per forward pass; lower it if memory runs out."),
    Question("learning_rate", "Learning rate",
             help="Step size; 2e-4 suits LoRA, full-weight training usually wants 1e-5 to 5e-5."),
    Question("gradient_accumulation", "Gradient accumulation steps",
             help="Batches summed per optimizer step: effective batch = batch size x this."),
    Question("benchmark", "Benchmark with ROUGE on held-out data after training?", "confirm",
             help="Scores base vs fine-tuned (or teacher vs student) on rows never trained on.",
             skip_note="Benchmark skipped: the dataset is plain text, with no prompts and answers to score."),
    Question("benchmark_samples", "How many held-out samples to benchmark",
             help="Held-out rows each model answers; more is steadier but slower."),
    # An LLM judge grades every benchmarked answer 1-5 (finetuner/benchmark/judge.py).
    Question("judge_api_base", "An LLM judge behind an OpenAI-compatible endpoint? Its base URL (Enter: no judge)",
             optional_in_files=True,
             help="It grades every benchmarked answer 1-5 against the reference; e.g. http://127.0.0.1:8000/v1"),
    Question("judge_model", lambda answers: f"Judge model name at {answers.get('judge_api_base')}",
             optional_in_files=True),
    Question("judge_api_key_env", "Name of the environment variable holding the judge's API key",
             optional_in_files=True,
             help="only the variable's name is saved; the key is never asked for, printed or written"),
    Question("upload", "Upload the result to the Hugging Face Hub?", "confirm",
             help="Needs a Hugging Face token with write access; you can also upload later with --upload-only."),
    Question("hub_repo", "Hub repository id (username/model-name)",
             help="username/model-name (or org/model-name); created if it does not exist."),
    Question("hub_private", "Make the repository private?", "confirm",
             help="A private repository is visible only to you (and your organisation)."),
    # Memory: what to lower when the plan says the run does not fit; answers file or --set only.
    Question("gradient_checkpointing", "Use gradient checkpointing (about a third slower, far less activation memory)?",
             "confirm", ask=False),
    Question("teacher_quantization", "Load the teacher in 8 or 4 bits (less memory, a slightly worse teacher)?",
             "select", (("No: its own precision", None), ("8-bit", "8bit"), ("4-bit NF4", "4bit")), ask=False),
    # Whether the run paid off: baselines, held-out evaluation and tracking; answers file or --set only.
    Question("sft_baseline", "Also train the same student by plain fine-tuning, to compare", "confirm", ask=False),
    Question("eval_steps", "Evaluate held-out loss every this many steps (keeps the best checkpoint)", ask=False),
    Question("early_stopping_patience", "Stop after this many evaluations without improvement", ask=False),
    Question("report_to", "Track the run with", "select",
             tuple((name, name) for name in ("none", "tensorboard", "trackio", "wandb")), ask=False),
    # Advanced settings: from an answers file or --set only.
    Question("eval_fraction", "Held-out fraction", ask=False),
    Question("long_rows", "Training rows longer than max_length", "select",
             (("Cut them at max_length", "truncate"), ("Leave them out of training", "drop")), ask=False),
    Question("merge_adapter", "Also save a merged model", ask=False),
    Question("max_steps", "Stop after this many optimizer steps", ask=False),
    Question("save_steps", "Save a checkpoint every this many steps", ask=False),
    Question("seed", "Random seed", ask=False),
    Question("max_new_tokens", "Tokens to generate per benchmark prompt", ask=False),
    Question("task_metric", "Exact match of final answers", "select",
             (("auto: when the references have a checkable final answer", "auto"),
              ("exact_match", "exact_match"), ("none", "none")), ask=False, optional_in_files=True),
    Question("judge_token_budget", "The judge's spend cap in tokens (Enter: no cap)", ask=False,
             optional_in_files=True),
    Question("speculative_benchmark", "Time the teacher with the student as its speculative draft", "select",
             (("auto: when they share a tokenizer and the teacher is local", "auto"), ("true", "true"),
              ("false", "false")), ask=False, optional_in_files=True),
    # What the student learns from (objectives beyond plain KL): answers file or --set only
    # (see DISTILLATION_UPDATE.md).
    Question("divergence", "Divergence between teacher and student", "select",
             (("Forward KL: cover everything the teacher might say", "forward_kl"),
              ("Reverse KL: commit to the teacher's main answer (mode-seeking)", "reverse_kl"),
              ("Generalised JSD: in between (jsd_beta)", "jsd")), ask=False),
    Question("jsd_beta", "JSD beta (0 = forward KL, 1 = reverse KL)", ask=False),
    Question("on_policy_fraction", "Share of batches the student writes itself (0-1)", ask=False),
    Question("on_policy_temperature", "Sampling temperature of the student's own answers", ask=False),
    Question("on_policy_max_new_tokens", "Most tokens the student writes per on-policy answer", ask=False),
    Question("hidden_state_weight", "Weight of hidden-state matching (0 = off)", ask=False),
    Question("hidden_state_loss", "Hidden-state distance", "select",
             (("Mean squared error", "mse"), ("Cosine", "cosine")), ask=False),
    Question("hidden_state_layers", "Layer map: auto, or student:teacher pairs like 3:7,7:15", ask=False),
    # A teacher that writes: how it samples, batches and retries; answers file or --set only.
    Question("generation_top_p", "Teacher nucleus sampling top-p", ask=False),
    Question("generation_concurrency", "API requests in flight at once", ask=False),
    Question("generation_batch_size", "Prompts per batch for a local teacher", ask=False),
    Question("generation_on_budget", "When the spend cap is reached: train on what arrived, or stop", ask=False),
    Question("generation_system_prompt", "System prompt sent to the teacher", ask=False),
    Question("generation_drop_incomplete", "Drop empty responses and responses cut off at the length limit",
             ask=False),
    Question("generation_timeout", "Seconds to wait for one API reply", ask=False),
    Question("generation_max_retries", "Retries of a failed API request (with backoff)", ask=False),
    Question("chunk_tokens", "Document chunk size (tokens)", ask=False),
    Question("generation_filters", "Filters on the teacher's responses: duplicates, refusals, echoes, verified, "
             "or none", ask=False),
    Question("generation_min_kept", "Stop before training when a smaller share of responses is kept (0 = go on)",
             ask=False),
    Question("generation_cache", "A response directory shared across runs (Enter: in the output directory)",
             ask=False),
    Question("generation_price_in", "Price per million prompt tokens, for the cost estimate", ask=False),
    Question("generation_price_out", "Price per million completion tokens, for the cost estimate", ask=False),
)

# The Hub token is asked only when no token is configured, and never saved.
HUB_TOKEN = Question("hub_token", "Hugging Face token (hidden; write access)", "secret", secret=True,
                     default=lambda answers: None)
