"""trio-batch end to end on a tiny export: Ray Data with 2 actors writes the same answers as one local pipeline
(64 records, one of them a corrupt image that gets an error line of its own); a run killed part-way (a real
subprocess, SIGKILL) and resumed ends with every record exactly once.

Slow: the module starts one local Ray cluster (127.0.0.1, token auth off) and stops it at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import trio_edge

pytestmark = pytest.mark.slow
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 would write a token under ~/.ray otherwise
SAMPLES = Path(trio_edge.__file__).parent / "assets" / "samples"
QUESTIONS = ["what color is the triangle?", "what shape is the blue object?", "how many circles are there?"]
CORRUPT = "r13"


def answers(path: Path) -> dict:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_id = {line["id"]: line for line in lines}
    assert len(by_id) == len(lines), "an id was written twice"
    return by_id


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch-input")
    (folder / "broken.png").write_bytes((SAMPLES / "color.png").read_bytes()[:200])  # a PNG cut short
    images = ["color.png", "shape.png", "count.png"]
    lines = []
    for i in range(64):
        image = "broken.png" if f"r{i}" == CORRUPT else str(SAMPLES / images[i % 3])
        options = {"temperature": 1.0, "seed": i} if i % 4 == 3 else {}  # sampled records: seeded, so repeatable
        lines.append(json.dumps({"id": f"r{i}", "image": image, "prompt": QUESTIONS[i % 3], **options}))
    path = folder / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def local_answers(one_cut_dir, records, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("batch-local") / "answers.jsonl"
    summary = trio_edge.batch(one_cut_dir, records, out, progress=False)
    assert (summary.answered, summary.failed, summary.skipped) == (63, 1, 0)
    return answers(out)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_actors_write_the_local_answers(ray_cluster, one_cut_dir, records, local_answers, tmp_path):
    out = tmp_path / "answers.jsonl"
    summary = trio_edge.batch(one_cut_dir, records, out, engine="ray", actors=2, progress=False)
    assert (summary.answered, summary.failed) == (63, 1)
    on_ray = answers(out)
    assert on_ray.keys() == local_answers.keys()
    for ident, expected in local_answers.items():
        assert {k: on_ray[ident].get(k) for k in ("text", "kept", "error")} == \
            {k: expected.get(k) for k in ("text", "kept", "error")}, ident


def test_a_corrupt_image_fails_its_record_only(local_answers):
    failed = {ident for ident, line in local_answers.items() if "error" in line}
    assert failed == {CORRUPT}
    assert "broken.png" in local_answers[CORRUPT]["error"] and "text" not in local_answers[CORRUPT]
    first = local_answers["r0"]
    assert first["text"] and first["kept"] and first["timings"]["ttft"] > 0 and first["completion_tokens"] > 0


def test_a_killed_run_resumes_with_every_record_once(one_cut_dir, records, local_answers, tmp_path):
    out = tmp_path / "answers.jsonl"
    command = [sys.executable, "-m", "trio_edge.cli.batch", str(one_cut_dir), str(records), "-o", str(out), "--quiet"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 8:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = out.read_bytes().count(b"\n")
    assert process.returncode == -signal.SIGKILL and 8 <= written < 64, (written, process.stderr.read())

    resumed = subprocess.run([*command[:-1], "--resume", "--quiet"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "already in the output" in resumed.stderr
    final = answers(out)  # asserts no id twice
    assert final.keys() == local_answers.keys()
    assert {k: v.get("text") for k, v in final.items()} == {k: v.get("text") for k, v in local_answers.items()}
    again = subprocess.run([*command[:-1], "--resume", "--quiet"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 answered" in again.stderr and answers(out) == final
