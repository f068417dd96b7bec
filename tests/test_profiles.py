from dataclasses import fields

import pytest

from helpers import CourseError
from helpers.env import pick_profile
from helpers.profiles import EMBEDDED_MODEL, PROFILES, Profile, get_profile


def test_every_profile_is_complete_and_named_by_its_key():
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert profile.dtype in ("float32", "float16", "bfloat16")
        for f in fields(Profile):
            value = getattr(profile, f.name)
            if isinstance(value, int) and not isinstance(value, bool):
                assert value > 0, f"{name}.{f.name}"


def test_cpu_profile_is_the_embedded_model_in_full_precision():
    cpu = PROFILES["cpu"]
    assert cpu.text_model == EMBEDDED_MODEL
    assert cpu.load_in_4bit is False and cpu.dtype == "float32"


def test_bigger_hardware_gets_bigger_settings():
    order = [PROFILES[n] for n in ("cpu", "t4", "24gb", "80gb")]
    for small, big in zip(order, order[1:], strict=False):
        assert big.max_seq_length >= small.max_seq_length
        assert big.sft_steps >= small.sft_steps
        assert big.eval_mcq >= small.eval_mcq


@pytest.mark.parametrize("has_cuda, vram, bf16, expected", [
    (False, 0, False, "cpu"),
    (True, 15.0, False, "t4"),      # Colab T4
    (True, 16.0, True, "t4"),       # a 16 GB Ampere card still gets the 4-bit small model
    (True, 32.0, False, "t4"),      # V100 32 GB: no bf16
    (True, 24.0, True, "24gb"),     # RTX 3090/4090
    (True, 40.0, True, "24gb"),     # A100 40 GB
    (True, 80.0, True, "80gb"),     # A100/H100 80 GB
])
def test_pick_profile(has_cuda, vram, bf16, expected):
    assert pick_profile(has_cuda, vram, bf16) == expected


def test_overrides_replace_single_values():
    profile = get_profile("t4", sft_steps=7)
    assert profile.sft_steps == 7 and profile.text_model == PROFILES["t4"].text_model
    assert PROFILES["t4"].sft_steps != 7  # the table itself is untouched


def test_unknown_profile_is_one_clear_sentence():
    with pytest.raises(CourseError, match=r"Unknown profile 'a100'.*cpu, t4, 24gb, 80gb"):
        get_profile("a100")


def test_unknown_override_names_the_setting():
    with pytest.raises(CourseError, match="no setting 'steps'"):
        get_profile("cpu", steps=3)


def test_auto_detects_cpu_here():
    assert get_profile("auto").name == "cpu"
