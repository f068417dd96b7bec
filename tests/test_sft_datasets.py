"""The SFT sets: schema mapping, skipped-row counts, balance, and the prompt/completion split."""

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoTokenizer

from helpers import CourseError, datasets
from helpers.data_files import read_records
from helpers.datasets import SFTExample
from helpers.generation import chat_prompt
from helpers.hub import Resolved, embedded_model_dir

O1_ROW = {"Question": "What lowers LDL most?", "Complex_CoT": "Statins inhibit HMG-CoA reductase.",
          "Response": "A statin."}
R1_ROW = {"instruction": "x", "question": "医生，我头痛怎么办？",
          "think": "<think>嗯，先问清楚诱因。</think>", "answer": "多休息，严重时就医。",
          "metrics": {"quality_f1": 1.0}}
# A thinking-style template, written for these tests: like Qwen3's, it re-renders the assistant's think
# block in one canonical layout and keeps it only for the last turn.
THINKING_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}"
    "{%- set parts = m.content.split('</think>') -%}"
    "{%- set reasoning = parts[0].split('<think>')[-1].strip() if parts | length > 1 else '' -%}"
    "{%- set answer = parts[-1].lstrip() -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if loop.last and reasoning -%}{{ '<think>\\n' + reasoning + '\\n</think>\\n\\n' }}{%- endif -%}"
    "{{ answer + '<|im_end|>\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
EXAMPLE = SFTExample("What is the first-line drug for type 2 diabetes?",
                     "Type 2 diabetes; metformin lowers hepatic glucose output.", "Metformin.", "en", "x")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_dir())


def test_both_schemas_become_the_same_examples():
    [o1], skipped_o1 = datasets.map_sft_rows([O1_ROW], "medical-o1-reasoning-SFT", "en")
    [r1], skipped_r1 = datasets.map_sft_rows([R1_ROW], "delicate_medical_r1_data", "zh")
    assert o1 == SFTExample("What lowers LDL most?", "Statins inhibit HMG-CoA reductase.", "A statin.",
                            "en", "medical-o1-reasoning-SFT")
    assert r1.reasoning == "嗯，先问清楚诱因。"  # the source's own think tags are not doubled
    assert (r1.question, r1.answer, r1.language) == ("医生，我头痛怎么办？", "多休息，严重时就医。", "zh")
    assert not skipped_o1 and not skipped_r1


def test_unusable_rows_are_counted_and_skipped_never_fatal():
    rows = [O1_ROW, dict(O1_ROW), {"Question": "q"}, {**O1_ROW, "Question": "Other?", "Response": "  "},
            {**O1_ROW, "Question": "Third?", "Complex_CoT": None}, "not a row",
            {**O1_ROW, "Question": "Kept?"}]
    examples, skipped = datasets.map_sft_rows(rows, "medical-o1-reasoning-SFT", "en")
    assert [ex.question for ex in examples] == ["What lowers LDL most?", "Kept?"]
    assert skipped == {"duplicate question": 1, "missing column": 3, "empty field": 1}


def test_the_offline_samples_load_balanced_and_reproducible(capsys):
    loaded = datasets.load_sft_examples(limit=30, seed=1)
    assert "using the course's offline samples" in capsys.readouterr().out
    assert set(loaded.origins.values()) == {"offline sample data/sft/"}
    assert loaded.counts() == {("delicate_medical_r1_data", "zh"): 10, ("medical-o1-reasoning-SFT", "en"): 10,
                               ("medical-o1-reasoning-SFT", "zh"): 10}
    assert datasets.load_sft_examples(limit=30, seed=1).examples == loaded.examples
    assert datasets.load_sft_examples(limit=30, seed=2).examples != loaded.examples
    everything = datasets.load_sft_examples()
    assert len(everything.examples) >= 150 and not everything.skipped  # the samples are clean
    assert len({ex.question for ex in everything.examples}) == len(everything.examples)


def test_languages_and_sources_filter():
    english = datasets.load_sft_examples(languages=("en",))
    assert {ex.language for ex in english.examples} == {"en"}
    delicate = datasets.load_sft_examples(sources=("delicate_medical_r1_data",))
    assert {ex.source for ex in delicate.examples} == {"delicate_medical_r1_data"}
    with pytest.raises(CourseError, match="Unknown SFT source 'medqa'"):
        datasets.load_sft_examples(sources=("medqa",))
    with pytest.raises(CourseError, match="No SFT examples in fr"):
        datasets.load_sft_examples(languages=("fr",))


def test_a_hub_snapshot_is_read_with_the_same_reader(monkeypatch, tmp_path):
    from helpers import hub

    (tmp_path / "medical_o1_sft.json").write_text(json.dumps([O1_ROW]), encoding="utf-8")
    (tmp_path / "medical_o1_sft_Chinese.json").write_text("[]", encoding="utf-8")
    monkeypatch.setattr(hub, "resolve_dataset", lambda name, source=None: Resolved(tmp_path, "huggingface"))
    loaded = datasets.load_sft_examples(sources=("medical-o1-reasoning-SFT",))
    assert loaded.origins == {"medical-o1-reasoning-SFT":
                              "FreedomIntelligence/medical-o1-reasoning-SFT (downloaded from Hugging Face)"}
    assert [ex.question for ex in loaded.examples] == [O1_ROW["Question"]]
    assert loaded.missing == {"medical-o1-reasoning-SFT": ["zh"]}  # an empty Chinese file: reported
    (tmp_path / "medical_o1_sft.json").unlink()
    with pytest.raises(CourseError, match="No SFT examples in en, zh"):
        datasets.load_sft_examples(sources=("medical-o1-reasoning-SFT",))


def test_a_local_file_or_folder_in_the_real_schema_is_read(tmp_path):
    rows = [{"Question": f"问题{i}：患者胸痛，最可能的诊断？", "Complex_CoT": "胸痛伴心电图ST段抬高。" * 40,
             "Response": "最可能的诊断是急性心肌梗死，应立即转诊。"} for i in range(3)]
    path = tmp_path / "my_cot.jsonl"  # a Chinese-only file with a name of its own
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    loaded = datasets.load_sft_examples({"medical-o1-reasoning-SFT": str(path)}, languages=("en", "zh"))
    assert loaded.origins == {"medical-o1-reasoning-SFT": f"local file {path}"}
    assert loaded.counts() == {("medical-o1-reasoning-SFT", "zh"): 3}
    assert loaded.missing == {"medical-o1-reasoning-SFT": ["en"]}  # reported, not fatal
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "medical_o1_sft.json").write_text(json.dumps([O1_ROW]), encoding="utf-8")
    loaded = datasets.load_sft_examples({"medical-o1-reasoning-SFT": str(folder)}, languages=("en", "zh"))
    assert loaded.counts() == {("medical-o1-reasoning-SFT", "en"): 1}
    assert loaded.missing == {"medical-o1-reasoning-SFT": ["zh"]}
    with pytest.raises(CourseError, match="No file or folder at"):
        datasets.load_sft_examples({"medical-o1-reasoning-SFT": str(tmp_path / "nowhere.json")})


def test_identifiers_in_sft_rows_are_masked(tmp_path):
    row = {"Question": "Patient born 1980-03-04, phone 13812345678, e-mail a.b@example.com: what next?",
           "Complex_CoT": "Call him at 13812345678 to review.", "Response": "Review at the clinic."}
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([row]), encoding="utf-8")
    loaded = datasets.load_sft_examples({"medical-o1-reasoning-SFT": str(path)}, languages=("en",))
    [example] = loaded.examples
    assert "13812345678" not in example.question + example.reasoning and "[EMAIL]" in example.question
    assert loaded.masked["phone"] == 2 and loaded.masked["email"] == 1


def test_a_file_that_is_not_a_list_is_one_sentence(tmp_path):
    path = tmp_path / "medical_o1_sft.json"
    path.write_text(json.dumps({"Question": "q"}), encoding="utf-8")
    with pytest.raises(CourseError, match="should hold a JSON list"):
        read_records(path)


@given(st.lists(st.lists(st.integers(), max_size=6), max_size=5), st.one_of(st.none(), st.integers(0, 40)))
def test_interleave_takes_equal_shares_in_order(groups, limit):
    tagged = [[(g, item) for item in group] for g, group in enumerate(groups)]
    picked = datasets.interleave(tagged, limit)
    total = sum(map(len, groups))
    assert len(picked) == (total if limit is None else min(limit, total))
    for g, group in enumerate(tagged):  # each group's order is kept, and only a prefix of it is taken
        taken = [p for p in picked if p[0] == g]
        assert taken == group[:len(taken)]
    counts = [sum(p[0] == g for p in picked) for g in range(len(groups))]
    unexhausted = [c for c, group in zip(counts, groups, strict=True) if c < len(group)]
    assert all(c >= max(unexhausted, default=0) - 1 for c in unexhausted)
    assert all(c <= min(unexhausted, default=c) + 1 for c in counts)


def test_the_prompt_is_exactly_what_generation_sends(tokenizer):
    row = datasets.to_prompt_completion(tokenizer, EXAMPLE)
    assert row["prompt"] == chat_prompt(tokenizer, EXAMPLE.question)
    assert row["completion"] == (f"<think>\n{EXAMPLE.reasoning}\n</think>\n\n{EXAMPLE.answer}"
                                 f"{tokenizer.eos_token}")
    rendered = tokenizer.apply_chat_template(datasets.to_messages(EXAMPLE), tokenize=False)
    assert rendered == row["prompt"] + row["completion"] + "\n"  # only the newline after the turn is left out


def test_a_thinking_template_keeps_the_think_block_of_the_last_turn(tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tokenizer.chat_template = THINKING_TEMPLATE
    row = datasets.to_prompt_completion(tokenizer, EXAMPLE, system="Be careful.")
    assert row["prompt"] == chat_prompt(tokenizer, EXAMPLE.question, system="Be careful.")
    assert row["prompt"].endswith("<|im_start|>assistant\n")
    assert row["completion"].startswith(f"<think>\n{EXAMPLE.reasoning}\n</think>\n\n{EXAMPLE.answer}")
    assert row["completion"].endswith("<|im_end|>")


def test_a_template_whose_generation_prompt_disagrees_is_refused(tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                               "{% if add_generation_prompt %}<bot>{% endif %}")
    with pytest.raises(CourseError, match="training and generation would disagree"):
        datasets.to_prompt_completion(tokenizer, EXAMPLE)


def test_overlong_examples_are_dropped_and_counted(tokenizer):
    rows = [datasets.to_prompt_completion(tokenizer, EXAMPLE),
            datasets.to_prompt_completion(tokenizer, SFTExample("Q?", "R " * 300, "A.", "en", "x"))]
    lengths = datasets.count_tokens(tokenizer, rows)
    assert lengths[0] < 100 < 300 < lengths[1]
    kept, dropped = datasets.drop_overlong(rows, lengths, max_tokens=200)
    assert kept == rows[:1] and dropped == 1


def test_no_rows_have_no_lengths(tokenizer):  # HELD_OUT = 0 in 03: no held-out rows to measure
    assert datasets.count_tokens(tokenizer, []) == [] and datasets.drop_overlong([], [], 10) == ([], 0)


def test_every_offline_sample_fits_the_cpu_profile(tokenizer):
    from helpers.profiles import get_profile

    examples = datasets.load_sft_examples().examples
    rows = [datasets.to_prompt_completion(tokenizer, ex) for ex in examples]
    assert max(datasets.count_tokens(tokenizer, rows)) <= get_profile("cpu").max_seq_length
    assert Path(datasets.SFT_DIR / "README.md").is_file()
