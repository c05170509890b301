"""The reference model kit: dataset, judge, training script (smoke), shipped weights."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from sd_ovopt.errors import InvalidConfigError, OutputExistsError
from sd_ovopt.reference.judge import judge_image, prompt_accuracy
from sd_ovopt.reference.shapes import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeSpec,
    all_prompts,
    held_out_prompts,
    parse_prompt,
    render,
    sample_specs,
    train_prompts,
    write_dataset,
)


def test_prompt_split_holds_out_144_prompts_covering_every_colour_and_shape():
    held, train = held_out_prompts(), train_prompts()
    assert len(held) >= 144
    assert not set(held) & set(train)
    assert len(held) + len(train) == len(all_prompts())
    pairs = {(s.colour, s.shape) for s in held}
    assert pairs == {(c, s) for c in COLOURS for s in SHAPES}
    assert {(s.colour, s.shape) for s in train} == pairs


@pytest.mark.parametrize(
    ("first", "second"),
    list(itertools.combinations(("shape", "colour", "background", "size", "position"), 2)),
)
def test_held_out_prompts_are_unseen_combinations_of_values_seen_in_training(first, second):
    """Every value of every attribute, and every pair of values, occurs in training prompts."""
    every = {(getattr(s, first), getattr(s, second)) for s in all_prompts()}
    trained = {(getattr(s, first), getattr(s, second)) for s in train_prompts()}
    assert trained == every
    for name, values in (("background", BACKGROUNDS), ("size", SIZES), ("position", POSITIONS)):
        assert {getattr(s, name) for s in train_prompts()} == set(values)
        assert {getattr(s, name) for s in held_out_prompts()} == set(values)  # and each is tested


def test_every_word_of_the_prompt_grammar_is_one_token_and_no_prompt_is_truncated(caplog):
    from sd_ovopt.reference.model import TEXT_LENGTH
    from sd_ovopt.reference.train import reference_tokenizer

    tokenizer = reference_tokenizer()
    words = {w for spec in all_prompts() for w in spec.prompt.replace(",", " , ").split()}
    assert {w: len(tokenizer.tokenize(w)) for w in words} == dict.fromkeys(words, 1)
    with caplog.at_level("WARNING"):
        lengths = [len(tokenizer(spec.prompt).input_ids) for spec in all_prompts()]
    assert max(lengths) <= TEXT_LENGTH
    assert not [r for r in caplog.records if "truncat" in r.getMessage().lower()]


def test_specs_and_images_are_deterministic_from_the_seed():
    a, b = sample_specs(20, seed=3), sample_specs(20, seed=3)
    assert a == b
    assert sample_specs(20, seed=4) != a
    assert np.array_equal(np.asarray(render(a[0])), np.asarray(render(b[0])))
    train = set(train_prompts())
    assert all(ShapeSpec(s.shape, s.colour, s.background, s.size, s.position) in train for s in a)


def test_write_dataset_writes_imagefolder_with_metadata(tmp_path):
    out = write_dataset(tmp_path / "data", 6, seed=1)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert (out / row["file_name"]).is_file()
        assert parse_prompt(row["text"]).shape == row["shape"]
    assert not list(tmp_path.glob(".data.partial-*"))
    with pytest.raises(OutputExistsError):
        write_dataset(tmp_path / "data", 2)


def test_judge_reads_the_datasets_own_images_at_least_98_percent():
    specs = sample_specs(600, seed=11, split="all")
    images = [render(s) for s in specs]
    accuracy = prompt_accuracy(images, [s.prompt for s in specs])
    assert accuracy >= 0.98, accuracy
    positions = np.mean(
        [judge_image(img).position == s.position for img, s in zip(images, specs, strict=True)]
    )
    assert positions >= 0.95


def test_judge_finds_no_shape_on_a_blank_image_and_rejects_non_rgb():
    blank = np.full((32, 32, 3), 125, dtype=np.uint8)
    seen = judge_image(blank)
    assert seen.background == "gray"
    assert seen.shape is None and seen.colour is None
    assert not seen.matches(all_prompts()[0].prompt)
    with pytest.raises(ValueError, match="RGB"):
        judge_image(np.zeros((32, 32)))


def test_parse_prompt_rejects_other_text():
    with pytest.raises(InvalidConfigError, match="not a shapes-dataset prompt"):
        parse_prompt("a photo of a cat")


def test_training_script_smoke_writes_a_loadable_pipeline(tmp_path):
    """A few steps of every stage: the script runs end to end and its output loads offline."""
    from sd_ovopt._loading import load_sd_pipeline
    from sd_ovopt.reference.train import main

    out, work = tmp_path / "model", tmp_path / "work"
    args = ["--output", str(out), "--work", str(work), "--num-images", "16"]
    args += ["--vae-steps", "2", "--unet-steps", "2", "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0
    assert (work / "unet.pt").is_file() and (work / "vae.pt").is_file()
    record = json.loads((out / "training.json").read_text())
    assert record["unet_steps"] == 2 and record["device"] == "cpu"
    pipe = load_sd_pipeline(out)
    assert pipe.tokenizer.model_max_length == 16
    assert pipe.vae.config.scaling_factor != 0.18215  # measured from the latents
    assert main(args) == 2  # the output folder now exists: refused without --overwrite
