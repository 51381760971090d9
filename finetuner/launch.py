"""Ready-to-use `accelerate launch` configs for the same answers file on more devices.

`python finetune_cli.py --write-launch DIR` writes one accelerate config YAML per way to scale out
(the same files `accelerate config` writes), each headed by when to use it and the command that
launches it, plus LAUNCH.md with all the commands. The Trainer reads what accelerate launch sets,
so the answers file stays the same; finetuner itself picks bf16/fp16 (mixed_precision: no here
leaves that choice to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from finetuner import artifacts
from finetuner.wizard.answers import ANSWERS_FILE, replay_command, save_answers
from finetuner.wizard.questions import Answers

GUIDE = "LAUNCH.md"


@dataclass(frozen=True)
class Mode:
    file: str
    title: str
    when: str
    config: dict
    launch_flags: str = ""


def modes(gpus: int) -> list[Mode]:
    base = {"compute_environment": "LOCAL_MACHINE", "debug": False, "downcast_bf16": "no", "machine_rank": 0,
            "main_training_function": "main", "mixed_precision": "no", "num_machines": 1, "rdzv_backend": "static",
            "same_network": True, "tpu_env": [], "tpu_use_cluster": False, "tpu_use_sudo": False,
            "use_cpu": False, "enable_cpu_affinity": False}
    multi = {**base, "distributed_type": "MULTI_GPU", "gpu_ids": "all", "num_processes": gpus}
    deepspeed = {**base, "distributed_type": "DEEPSPEED", "num_processes": gpus}
    return [
        Mode("one_gpu.yaml", "One GPU",
             "the teacher, the student and their training state fit on one GPU (the memory plan says so). "
             "Plain `python finetune_cli.py` does the same.",
             {**base, "distributed_type": "NO", "gpu_ids": "0", "num_processes": 1}),
        Mode("multi_gpu.yaml", "Several GPUs, DDP",
             "everything fits on one GPU and you want it faster: each GPU holds a whole copy of the teacher "
             "and student and trains on its own share of every batch (the effective batch grows with the "
             "number of GPUs).", multi),
        Mode("fsdp.yaml", "Several GPUs, FSDP",
             "the student's weights, gradients and AdamW state do not fit on one GPU: they are sharded over "
             "the GPUs. The teacher is frozen and not sharded, so it must fit on each GPU at its precision "
             "(an 8/4-bit teacher, with its quality cost, if it does not).",
             {**base, "distributed_type": "FSDP", "num_processes": gpus, "fsdp_config": {
                 "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                 "fsdp_cpu_ram_efficient_loading": True, "fsdp_offload_params": False,
                 "fsdp_reshard_after_forward": True, "fsdp_state_dict_type": "FULL_STATE_DICT",
                 "fsdp_activation_checkpointing": False}}),
        Mode("deepspeed_zero2.yaml", "Several GPUs, DeepSpeed ZeRO-2",
             "the optimizer state and gradients are what does not fit (a full-weight student with AdamW): "
             "ZeRO-2 shards them, the weights stay whole on each GPU. Needs `pip install deepspeed`.",
             {**deepspeed, "deepspeed_config": {"zero_stage": 2, "offload_optimizer_device": "none",
                                                "offload_param_device": "none", "zero3_init_flag": False}}),
        Mode("deepspeed_zero3.yaml", "Several GPUs, DeepSpeed ZeRO-3",
             "even the student's weights do not fit on one GPU: ZeRO-3 shards weights, gradients and "
             "optimizer state (set offload_optimizer_device: cpu to move AdamW state to CPU memory too). "
             "Needs `pip install deepspeed`.",
             {**deepspeed, "deepspeed_config": {"zero_stage": 3, "offload_optimizer_device": "none",
                                                "offload_param_device": "none", "zero3_init_flag": True,
                                                "zero3_save_16bit_model": True}}),
        Mode("multi_node.yaml", "Several machines (DDP)",
             "one machine's GPUs are not enough. Run the same command on every machine with its own "
             "--machine_rank (0 on the main one); all must reach MAIN_HOST:29500 and see the same "
             "output_dir path (a shared filesystem).",
             {**multi, "num_machines": 2, "num_processes": 2 * gpus, "main_process_ip": "MAIN_HOST",
              "main_process_port": 29500},
             launch_flags="--machine_rank 0 --main_process_ip MAIN_HOST "),
    ]


def command(mode: Mode, directory: Path, answers: str) -> str:
    launcher = f"accelerate launch --config_file {directory / mode.file} {mode.launch_flags}".rstrip()
    return replay_command(answers, "--yes", launcher=launcher)


def torchrun_command(answers: str, gpus: int) -> str:
    return replay_command(answers, "--yes", launcher=f"torchrun --standalone --nproc_per_node {gpus}")


def write_launch(directory: Path, answers: Answers, gpus: int) -> list[Path]:
    """Save `answers` into `directory`, then write every mode's config and LAUNCH.md beside them;
    returns the paths of the configs and LAUNCH.md."""
    directory = Path(directory).resolve()  # the commands work from any directory
    answers = str(save_answers(directory / ANSWERS_FILE, answers))
    written = []
    guide = [f"# Launching finetuner on more devices\n\nThe answers file `{answers}` stays the same in every "
             f"mode; only the launcher changes. The process count assumes {gpus} GPUs per machine: edit "
             "`num_processes` (all processes over all machines) to match yours.\n"]
    for mode in modes(gpus):
        header = (f"# {mode.title}: accelerate config for finetuner.\n# When to use: {mode.when}\n"
                  f"# Launch:\n#   {command(mode, directory, answers)}\n")
        text = header + yaml.safe_dump(mode.config, sort_keys=True)
        written.append(artifacts.write_text_atomic(directory / mode.file, text))
        guide.append(f"## {mode.title}\n\n{mode.when}\n\n```\n{command(mode, directory, answers)}\n```\n")
    guide.append("## Without accelerate: torchrun (DDP)\n\n```\n" + torchrun_command(answers, gpus) + "\n```\n"
                 "\nOn CPU, `torchrun` runs several processes (gloo). `accelerate launch --cpu --num_processes N` "
                 "starts only one: for a CPU test with accelerate use the multi_gpu config with --num_processes.\n")
    written.append(artifacts.write_text_atomic(directory / GUIDE, "\n".join(guide)))
    return written


def gpu_count() -> int:
    """GPUs on this machine, 8 (a common node) when there are none to count."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() and torch.cuda.device_count() > 1 else 8
