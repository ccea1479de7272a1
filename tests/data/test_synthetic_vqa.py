"""The synthetic visual QA task, the records (jsonl folder) format, and the shipped trio-tiny model."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from trio_edge.data.synthetic_vqa import (
    ALL_KINDS,
    KINDS,
    answer_vocabulary,
    make_sample,
    make_split,
    question_words,
    read_records,
    scene_questions,
    write_records,
)
from trio_edge.errors import InputError
from trio_edge.models.tiny import make_tiny_tokenizer


def _same(a, b):
    return (a["question"], a["answer"], a["kind"]) == (b["question"], b["answer"], b["kind"]) and \
        np.array_equal(np.asarray(a["image"]), np.asarray(b["image"])) and np.array_equal(a["mask"], b["mask"])


def test_deterministic_per_seed():
    first, again, other = make_split(12, seed=3), make_split(12, seed=3), make_split(12, seed=4)
    assert all(_same(a, b) for a, b in zip(first, again))
    assert not all(_same(a, b) for a, b in zip(first, other))
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    assert _same(make_sample(rng_a), make_sample(rng_b))


def test_kinds_are_balanced_and_answers_consistent():
    samples = make_split(60, seed=0)
    assert [s["kind"] for s in samples[:len(KINDS)]] == list(KINDS)
    rng = np.random.default_rng(1)
    samples += [make_sample(rng, kind="position") for _ in range(15)]
    samples += [make_sample(rng, kind=kind, objects=(1, 2)) for kind in ALL_KINDS for _ in range(5)]
    for s in samples:
        assert s["image"].mode == "RGB" and s["image"].size == (112, 112)
        objects = s["objects"]
        assert 1 <= len(objects) <= 5 and s["mask"].max() == len(objects)
        assert {"question": s["question"], "answer": s["answer"], "kind": s["kind"]} in \
            scene_questions(s, kinds=ALL_KINDS)
        if s["kind"] == "color":
            shape = s["question"].split()[-1].rstrip("?")
            [target] = [o for o in objects if o["shape"] == shape]
            assert target["color"] == s["answer"]
        elif s["kind"] == "shape":
            colour = s["question"].split()[-2]
            [target] = [o for o in objects if o["color"] == colour]
            assert target["shape"] == s["answer"]
        elif s["kind"] == "count":
            plural = s["question"].split()[2]
            count = sum(o["shape"] + ("es" if o["shape"] == "cross" else "s") == plural for o in objects)
            assert ["one", "two", "three"][count - 1] == s["answer"]
        else:
            words = s["question"].split()
            [a] = [o for o in objects if o["color"] == words[2]]
            [b] = [o for o in objects if o["color"] == words[-2]]
            assert s["answer"] == ("left" if a["x"] < b["x"] else "right")


def test_bad_generator_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown kind"):
        make_sample(rng, kind="texture")
    with pytest.raises(ValueError, match="objects"):
        make_sample(rng, kind="count", objects=(1, 1))
    with pytest.raises(ValueError, match="objects"):
        make_sample(rng, objects=(0, 9))


def test_words_are_in_the_tiny_vocabulary():
    tokenizer = make_tiny_tokenizer()
    unk = tokenizer.unk_token_id
    for word in answer_vocabulary() + question_words():
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(word)] and unk not in ids, word
    rng = np.random.default_rng(2)
    for s in make_split(30, seed=1) + [make_sample(rng, kind="position") for _ in range(10)]:
        for q in scene_questions(s, kinds=ALL_KINDS):
            ids = tokenizer(q["question"] + " " + q["answer"], add_special_tokens=False)["input_ids"]
            assert unk not in ids, q["question"]


def test_records_round_trip(tmp_path):
    samples = make_split(6, seed=5)
    write_records(samples, tmp_path)
    records = read_records(tmp_path)
    assert len(records) == 6
    for sample, record in zip(samples, records):
        assert (record["question"], record["answer"], record["kind"]) == (
            sample["question"], sample["answer"], sample["kind"])
        assert os.path.isabs(record["image"])
        assert np.array_equal(np.asarray(Image.open(record["image"]).convert("RGB")), np.asarray(sample["image"]))
    # a .jsonl file works as well (images relative to its folder)
    assert read_records(tmp_path / "records.jsonl") == records


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"image": "images/00000.png", "question": "what?"}', "'answer'"),
    ('{"image": "images/00000.png", "question": "", "answer": "red"}', "'question'"),
    ('{"image": 3, "question": "q", "answer": "red"}', "'image'"),
    ('{"image": "../outside.png", "question": "q", "answer": "red"}', "escapes"),
    ('{"image": "images/../../outside.png", "question": "q", "answer": "red"}', "escapes"),
    ('{"image": "/etc/passwd", "question": "q", "answer": "red"}', "relative"),
    ('{"image": "images/missing.png", "question": "q", "answer": "red"}', "not found"),
])
def test_malformed_records_raise_input_error(tmp_path, line, message):
    folder = tmp_path / "set"
    write_records(make_split(1, seed=0), folder)
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    with open(folder / "records.jsonl", "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    with pytest.raises(InputError, match=message) as info:
        read_records(folder)
    assert "records.jsonl:2" in str(info.value)


def test_symlink_escape_and_missing_folder(tmp_path):
    folder = tmp_path / "set"
    write_records(make_split(1, seed=0), folder)
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    (folder / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    (folder / "records.jsonl").write_text(json.dumps({"image": "images/link.png", "question": "q", "answer": "a"}))
    with pytest.raises(InputError, match="escapes"):
        read_records(folder)
    with pytest.raises(InputError, match="not found"):
        read_records(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="records.jsonl"):
        read_records(tmp_path / "empty")
    (tmp_path / "empty" / "records.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no records"):
        read_records(tmp_path / "empty")


def test_shipped_samples_are_valid_records():
    from trio_edge.models.registry import SHIPPED

    records = read_records(SHIPPED["trio-tiny"].parent / "samples" / "samples.jsonl")
    assert 3 <= len(records) <= 4
    assert all(r["answer"] in answer_vocabulary() for r in records)


@pytest.mark.parametrize("model, image_tokens", [("trio-tiny", 259), ("trio-tiny-qwen", 64), ("trio-tiny-qwen3", 64)])
def test_trio_tiny_full_token_accuracy(model, image_tokens):
    """The shipped models answer held-out questions (greedy, full image tokens) through HF generate."""
    from trio_edge.models.registry import load

    torch.set_num_threads(min(2, torch.get_num_threads()))
    loaded = load(model)
    adapter, model = loaded.adapter, loaded.model
    grid = adapter.default_grid()
    assert adapter.image_token_count(grid) == image_tokens
    tokenizer = loaded.processor.tokenizer
    samples = make_split(40, seed=777)  # not a training seed (training uses seeds >= 1000)
    hits = 0
    with torch.no_grad():
        for sample in samples:
            inputs = adapter.hf_inputs(sample["image"], sample["question"], grid)
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            hits += text == sample["answer"]
    assert hits / len(samples) >= 0.9, f"{hits}/{len(samples)}"


def test_several_image_questions_have_their_answer_in_the_target_image_only():
    from trio_edge.data.synthetic_vqa import PLURALS, make_multi_split

    samples = make_multi_split(30, seed=4, images=3)
    assert [s["kind"] for s in samples[:3]] == ["color", "shape", "count"]
    assert len({s["target"] for s in samples}) == 3  # the target is anywhere among the images
    for sample in samples:
        assert len(sample["image"]) == 3 and all(image.size == (112, 112) for image in sample["image"])
        words = sample["question"].rstrip("?").split()
        if sample["kind"] == "color":
            field, value = "shape", words[-1]
        elif sample["kind"] == "shape":
            field, value = "color", words[-2]
        else:
            field, value = "shape", next(shape for shape, plural in PLURALS.items() if plural == words[2])
        showing = [i for i, objects in enumerate(sample["objects"]) if any(o[field] == value for o in objects)]
        assert showing == [sample["target"]], sample["question"]
    again = make_multi_split(30, seed=4, images=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for x, y in zip(samples, again) for a, b in zip(x["image"], y["image"]))


def test_eval_with_several_images_runs_every_method(tmp_path, capsys):
    """trio-eval --images 2 on trio-tiny: the full model and TRIO (one budget, and split per image) answer the
    two-image questions; budgets count both images' tokens."""
    import json

    from trio_edge.cli.eval import main as eval_main

    out = tmp_path / "eval.json"
    for per_image in ([], ["--budget-per-image"]):
        assert eval_main(["trio-tiny", "--images", "2", "--n", "6", "--methods", "full,trio", "--budgets", "1/3",
                          "--quiet", "--json", str(out), *per_image]) == 0
        body = json.loads(out.read_text())
        assert body["images"] == 2 and body["budget_per_image"] == bool(per_image) and body["full_accuracy"] > 0.5
        (row,) = body["rows"]
        assert row["method"] == "trio" and row["schedule"].startswith("0:") and abs(row["budget"] - 1 / 3) < 0.01
        assert int(row["schedule"].split(",")[0].split(":")[1]) > 259  # the first cut keeps tokens of both images
    capsys.readouterr()
    assert eval_main(["trio-tiny", "--images", "2", "--data", str(tmp_path), "--quiet"]) == 2
    assert "--images applies to the synthetic data" in capsys.readouterr().err
