"""--write-launch: accelerate configs that accelerate itself accepts, each with when to use it and
the command that launches it over the same answers file."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from finetune_cli import main

MODES = {"one_gpu.yaml": "NO", "multi_gpu.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP",
         "deepspeed_zero2.yaml": "DEEPSPEED", "deepspeed_zero3.yaml": "DEEPSPEED", "multi_node.yaml": "MULTI_GPU"}


@pytest.fixture(scope="module")
def launch_dir(tmp_path_factory, tiny_llama, qa_file) -> Path:
    tmp = tmp_path_factory.mktemp("launch")
    answers = tmp / "answers.yaml"
    answers.write_text(yaml.safe_dump(dict(approach="distillation", teacher=str(tiny_llama), student_layers=2,
                                           dataset=str(qa_file), output_dir=str(tmp / "out"))))
    assert main(["--answers", str(answers), "--defaults", "--write-launch", str(tmp / "launch")]) == 0
    assert not (tmp / "out").exists()  # nothing ran
    return tmp / "launch"


def launch_args(path: Path):
    """What `accelerate launch` makes of the command in the file's header (parsed and validated by
    accelerate's own launcher, which reads the config file), and the environment it would set."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    command = next(line for line in path.read_text().splitlines() if line.startswith("#   accelerate launch"))
    argv = shlex.split(command.lstrip("# "))
    assert argv[:2] == ["accelerate", "launch"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv[2:]))
    env = {}
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.multi_gpu or args.use_fsdp:
        env = prepare_multi_gpu_env(args)
    return args, env


def test_every_mode_is_written_with_when_and_how(launch_dir):
    assert sorted(p.name for p in launch_dir.iterdir()) == sorted([*MODES, "LAUNCH.md", "finetuner-answers.yaml"])
    guide = (launch_dir / "LAUNCH.md").read_text()
    for name in MODES:
        text = (launch_dir / name).read_text()
        assert "# When to use:" in text and f"--config_file {launch_dir / name}" in text
        assert f"--config_file {launch_dir / name}" in guide
    assert "torchrun --standalone --nproc_per_node" in guide
    answers = yaml.safe_load((launch_dir / "finetuner-answers.yaml").read_text())
    assert answers["approach"] == "distillation" and answers["student_layers"] == 2


@pytest.mark.parametrize("name", MODES)
def test_accelerate_accepts_the_config(launch_dir, name, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    config = ClusterConfig.from_yaml_file(str(launch_dir / name))  # rejects unknown keys and types
    assert config.distributed_type.value == MODES[name]
    args, env = launch_args(launch_dir / name)
    assert args.training_script == "finetune_cli.py"
    assert args.training_script_args[:1] == ["--answers"] and Path(args.training_script_args[1]).is_file()
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    if name == "fsdp.yaml":  # the plugin the Trainer builds from what accelerate launch sets
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and "FULL_STATE_DICT" in str(plugin.state_dict_type)
    if name.startswith("deepspeed"):
        assert DeepSpeedPlugin().zero_stage == int(name[-6])
    if name == "multi_node.yaml":
        assert (args.num_machines, args.machine_rank, args.main_process_ip) == (2, 0, "MAIN_HOST")
        assert args.num_processes == config.num_processes and args.main_process_port == 29500
    if name in ("multi_gpu.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"):
        assert args.num_processes > 1
