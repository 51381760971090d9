"""The prompt format a trained model keeps: a tokenizer without a chat template trained on
conversations (`messages`) is saved with a template that writes every prompt exactly as training
did, so the benchmark's trained row, --chat and the model card ask it as it learned."""

from __future__ import annotations

import json

import pytest
import yaml

from finetune_cli import main


@pytest.mark.slow  # trains one step (about 18 s on 2 busy cores)
def test_chat_data_without_a_template_saves_the_format_training_used(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    from conftest import arithmetic_pairs, build_gpt2
    from finetuner.data.preparing import prepare
    from finetuner.formatting import encode_prompt, render_messages_prompt
    from finetuner.wizard.gather import config_of

    plain = AutoTokenizer.from_pretrained(tokenizer_dir)
    plain.chat_template = None
    base = build_gpt2(tmp_path / "gpt2", plain, layers=2)
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["question"]},
                                                     {"role": "assistant", "content": r["answer"]}]}) + "\n"
                            for r in arithmetic_pairs(24)))
    out = tmp_path / "out"
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump(dict(
        approach="fine-tuning", model=str(base), method="lora", output_dir=str(out), dataset=str(data),
        max_samples=24, max_length=64, epochs=1, max_steps=1, batch_size=4, gradient_accumulation=1,
        benchmark=False, upload=False, merge_adapter=False)))
    assert main(["--answers", str(answers), "--defaults", "--yes"]) == 0
    assert (out / "README.md").is_file()  # the model card is written when training ends, not at upload
    assert "training" in json.loads((out / "timings.json").read_text())["estimate"]["phases"]

    # The prompt ids of a training row, as training tokenized them (the part masked out of the loss).
    prepared = prepare(config_of(str(out)), plain)
    row = prepared.train[0]
    trained_prompt = [i for i, label in zip(row["input_ids"], row["labels"]) if label == -100]
    question = next(r["messages"][0] for r in map(json.loads, data.read_text().splitlines())
                    if plain.decode(trained_prompt).startswith("user: " + r["messages"][0]["content"]))

    saved = AutoTokenizer.from_pretrained(out / "adapter")  # what the benchmark, --chat and the card load
    assert saved.chat_template
    rendered = render_messages_prompt(saved, [question])
    assert rendered == f"user: {question['content']}\nassistant: "
    assert encode_prompt(saved, [rendered])[0] == trained_prompt
