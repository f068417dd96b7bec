import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import CourseError, judge
from helpers.datasets import OpenItem
from helpers.judge import JudgeConfig, ask_judge, judge_answers, judge_config, parse_scores
from helpers.serving import free_port


@pytest.fixture
def endpoint(chat_endpoint, monkeypatch, tmp_path):
    """The judge pointed at a local endpoint that answers with canned scores."""
    served = chat_endpoint
    monkeypatch.setenv("JUDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JUDGE_API_KEY", "sk-test")
    monkeypatch.setenv("JUDGE_BASE_URL", served.url + "/")
    monkeypatch.setenv("JUDGE_MODEL", "grader")
    return served


def test_the_judge_is_off_without_a_key(monkeypatch):
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert judge_config() is None
    with pytest.raises(CourseError, match="No judge is set up: set JUDGE_API_KEY"):
        ask_judge("hello")


def test_the_key_comes_from_the_environment_and_is_never_shown(endpoint):
    config = judge_config()
    assert (config.base_url, config.model, config.api_key) == (endpoint.url, "grader", "sk-test")
    assert "sk-test" not in repr(config)


def test_replies_are_cached_on_disk(endpoint, tmp_path):
    first = ask_judge("Grade this.", system="Be strict.")
    assert ask_judge("Grade this.", system="Be strict.") == first
    assert len(endpoint.calls) == 1  # the second answer came from the cache
    path, payload, key = endpoint.calls[0]
    assert path == "/v1/chat/completions" and key == "Bearer sk-test"
    assert payload["messages"] == [{"role": "system", "content": "Be strict."},
                                   {"role": "user", "content": "Grade this."}]
    assert payload["model"] == "grader" and payload["temperature"] == 0.0
    ask_judge("Grade that.")
    assert len(endpoint.calls) == 2 and len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_the_judge_retries_an_endpoint_that_fails_once(endpoint):
    endpoint.script = [(503, {"error": {"message": "overloaded"}})]
    assert json.loads(ask_judge("Grade this."))["safety"] == 5  # the second try answered
    assert len(endpoint.calls) == 2 and endpoint.calls[0][1] == endpoint.calls[1][1]


def test_endpoint_failures_are_one_sentence(endpoint, tmp_path):
    config = JudgeConfig(endpoint.url, "grader", "bad", tmp_path)
    endpoint.script = [(401, {"error": {"message": "invalid key"}})]
    with pytest.raises(CourseError, match="answered HTTP 401: check JUDGE_API_KEY"):
        ask_judge("x", config=config)
    assert len(endpoint.calls) == 1  # a refused key is not retried
    endpoint.script = [(200, {"error": "no"})]
    with pytest.raises(CourseError, match="did not answer like an OpenAI-compatible endpoint"):
        ask_judge("y", config=config)
    closed = JudgeConfig(f"http://127.0.0.1:{free_port()}/v1", "grader", "sk-secret-key", tmp_path)
    with pytest.raises(CourseError, match="Cannot reach the judge at") as caught:
        ask_judge("z", config=closed, timeout=2)
    assert "sk-secret-key" not in str(caught.value)


def test_open_answers_are_scored_on_the_rubric(endpoint):
    items = [OpenItem("c-0", "cmb-clin", "en", "0", "t", "A case.", "What now?", "Call 911.")]
    records = [{"id": "c-0", "answer": "Call an ambulance."}]
    scored = judge_answers(items, records)
    assert scored["items"] == [{"id": "c-0", "safety": 5, "reasoning": 4, "completeness": 3, "empathy": 2}]
    assert scored["summary"]["judge_safety"] == 5 and scored["summary"]["judge_failures"] == 0
    prompt = endpoint.calls[0][1]["messages"][1]["content"]
    assert "Call an ambulance." in prompt and "Call 911." in prompt and "What now?" in prompt


def test_judge_failures_are_counted_not_fatal(endpoint, tmp_path, capsys):
    endpoint.script = [(400, {"error": {"message": "bad request"}})] * 2  # not retried: two failures
    items = [OpenItem(f"c-{i}", "cmb-clin", "en", "0", "t", "A case.", f"Q{i}", "R") for i in range(2)]
    scored = judge_answers(items, [{"id": i.id, "answer": "A"} for i in items],
                           config=JudgeConfig(endpoint.url, "m", "k", tmp_path))
    assert scored["summary"]["judge_failures"] == 2 and scored["summary"]["judge_safety"] is None
    assert "failed on 2 of 2" in capsys.readouterr().out


@pytest.mark.parametrize("text, expected", [
    ('{"safety": 4, "reasoning": 2, "completeness": 5, "empathy": 1}', (4, 2, 5, 1)),
    ('Scores: ```json\n{"safety": 4.0, "reasoning": 9, "empathy": "3"}\n```', (4, None, None, None)),
    ("I cannot grade this.", (None, None, None, None)),
    ('{"safety": true}', (None, None, None, None)),
])
def test_scores_are_read_only_when_valid(text, expected):
    assert tuple(parse_scores(text).values()) == expected


@given(st.text())
def test_parse_scores_never_raises(text):
    assert set(parse_scores(text)) == set(judge.RUBRIC)
    assert set(parse_scores(json.dumps({"safety": text}))) == set(judge.RUBRIC)
