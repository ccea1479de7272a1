"""One request at a time owns a pipeline's KV buffers: threads take turns and get the answers they get alone, a
stream another request overtook stops with an error, and sampling seeds are checked and reported."""

import subprocess
import sys
import threading

import pytest
from helpers import random_image

from trio_edge import load
from trio_edge.errors import InputError

PROMPT = "what color is the circle?"


@pytest.fixture(scope="module")
def pipeline(one_cut_dir):
    with load(one_cut_dir) as opened:
        yield opened


@pytest.fixture(scope="module")
def images():
    return [random_image(96, 80, seed=s) for s in (11, 12)]


def sampled(pipeline, image, seed):
    return pipeline.generate(image, PROMPT, temperature=3.0, seed=seed).token_ids


def test_two_threads_get_the_answers_each_gets_alone(pipeline, images):
    alone = {k: [sampled(pipeline, images[k], 7 + i) for i in range(3)] for k in (0, 1)}
    together = {0: [None] * 3, 1: [None] * 3}

    def ask(k):
        for i in range(3):
            together[k][i] = sampled(pipeline, images[k], 7 + i)

    threads = [threading.Thread(target=ask, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone


def test_a_stream_overtaken_by_another_request_stops_with_an_error(pipeline, images):
    alone = pipeline.generate(images[1], PROMPT, temperature=3.0, seed=1).token_ids
    assert len(alone) > 3, "the test needs an answer longer than the tokens read before the interruption"
    stream = pipeline.generate(images[1], PROMPT, temperature=3.0, seed=1, stream=True)
    first = [next(stream).token_id for _ in range(2)]
    assert first == alone[:2]
    pipeline.generate(images[0], PROMPT)  # rewrites the KV buffers the stream was reading
    with pytest.raises(InputError, match="another request ran on this pipeline between two tokens"):
        list(stream)
    closed = pipeline.generate(images[1], PROMPT, temperature=3.0, seed=1, stream=True)
    next(closed)
    closed.close()  # a closed stream no longer owns the buffers: the next request runs as usual
    assert pipeline.generate(images[1], PROMPT, temperature=3.0, seed=1).token_ids == alone


def test_seeds_are_checked_and_a_drawn_seed_is_reported(pipeline, images):
    drawn = pipeline.generate(images[0], PROMPT, temperature=3.0)
    assert isinstance(drawn.seed, int) and drawn.to_json()["seed"] == drawn.seed
    assert pipeline.generate(images[0], PROMPT, temperature=3.0, seed=drawn.seed).token_ids == drawn.token_ids
    assert pipeline.generate(images[0], PROMPT).seed is None  # greedy: no seed involved
    for bad in (2**70, -1, 3.5, "x", True):
        with pytest.raises(InputError, match="seed must be a whole number"):
            pipeline.generate(images[0], PROMPT, temperature=1.0, seed=bad)


def test_positions_beyond_what_the_model_was_trained_on(caplog):
    from trio_edge.models.registry import load as load_model

    loaded = load_model("trio-tiny")  # max_position_embeddings 4096, 259 image tokens
    with pytest.raises(InputError, match="over the 4096 the model was trained on .*more than 4 times"):
        load(loaded, keep_ratio=0.111, max_new_tokens=10**9)
    with caplog.at_level("WARNING", logger="trio_edge"):
        load(loaded, keep_ratio=0.111, max_new_tokens=5000).close()
    assert "past them its answers degrade" in caplog.text


def test_a_reader_that_goes_away_does_not_change_trio_checks_verdict(one_cut_dir):
    code = "import sys; from trio_edge.cli.check import main; sys.exit(main())"
    process = subprocess.Popen([sys.executable, "-c", code, str(one_cut_dir)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line (`trio-check DIR | head -0`)
    assert process.wait(timeout=120) == 0
    assert b"Traceback" not in process.stderr.read()
