"""GGUF export (07): where it cannot run, a phrase says why; the llama.cpp commands stand in."""

import shlex

from helpers import export


def test_on_a_machine_without_unsloth_or_a_gpu_the_blocker_says_which():
    why = export.gguf_blocker()
    assert why in ("unsloth is not installed (it needs a CUDA GPU)", "there is no CUDA GPU",
                   "there is no network: the exporter downloads and builds llama.cpp first")


def test_the_llama_cpp_commands_convert_then_quantize_the_merged_folder(tmp_path):
    merged, dest = tmp_path / "my run" / "sft-merged", tmp_path / "my run" / "sft-gguf" / "model.gguf"
    commands = export.llama_cpp_commands(merged, dest)
    convert = shlex.split(next(c for c in commands if "convert_hf_to_gguf.py" in c))
    f16 = str(dest.with_suffix(".f16.gguf"))
    assert convert[2] == str(merged) and convert[convert.index("--outfile") + 1] == f16
    quantize = shlex.split(commands[-1])
    assert quantize[1:] == [f16, str(dest), "Q4_K_M"]  # paths with spaces survive the shell
