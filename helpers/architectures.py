"""Random-initialised checkpoints of the real model shapes, for speed and memory measurements.

Where a checkpoint cannot be downloaded (CI, an offline GPU box) the layer sizes still decide
speed and memory, so a model with the real Qwen3 configuration and random weights measures them
faithfully. It never answers anything sensible: use it for benchmarks only.
"""

from __future__ import annotations

from pathlib import Path

from helpers.files import atomic_path

_QWEN3_COMMON = dict(
    model_type="qwen3", vocab_size=151936, head_dim=128, num_key_value_heads=8,
    max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    hidden_act="silu", attention_bias=False,
)

# Layer sizes from the published config.json of each model.
QWEN3_SHAPES: dict[str, dict] = {
    "Qwen/Qwen3-1.7B": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                            num_attention_heads=16, tie_word_embeddings=True),
    "Qwen/Qwen3-4B": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                          num_attention_heads=32, tie_word_embeddings=True),
    "Qwen/Qwen3-8B": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                          num_attention_heads=32, tie_word_embeddings=False),
}
# Two layers of the same architecture: the real code path, small enough to train on a CPU in seconds.
TINY_QWEN3 = "tiny-qwen3"
_TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)


def qwen3_config(model_id: str):
    """The transformers config of a Qwen3 size (or of ``TINY_QWEN3``), built locally."""
    from transformers import Qwen3Config

    shape = _TINY_SHAPE if model_id == TINY_QWEN3 else QWEN3_SHAPES.get(model_id)
    if shape is None:
        raise KeyError(f"No shape for {model_id}; known: {', '.join(QWEN3_SHAPES)}, {TINY_QWEN3}")
    return Qwen3Config(**{**{k: v for k, v in _QWEN3_COMMON.items() if k != "model_type"}, **shape})


def silence_unused_tokens(model, used: int) -> None:
    """Zero the embedding and output rows of token ids past ``used``, the tokenizer's vocabulary.

    The tokenizer cannot decode those ids; with zero rows their logit is 0, below the best real token's,
    so greedy answers of a random model are text rather than nothing. Speed and memory do not change.
    """
    import torch

    with torch.no_grad():
        model.get_input_embeddings().weight[used:] = 0
        output = model.get_output_embeddings()
        if output is not None:
            output.weight[used:] = 0


def make_random_checkpoint(model_id: str, dest: str | Path, dtype: str = "bfloat16",
                           tokenizer_dir: str | Path | None = None) -> Path:
    """Save a randomly initialised model of ``model_id``'s shape, with the embedded model's tokenizer
    (or the one in ``tokenizer_dir``). The weights are drawn on the GPU where there is one: an 8B model
    takes seconds there and a minute or more on a CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.hub import embedded_model_dir

    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(qwen3_config(model_id), dtype=getattr(torch, dtype))
    # The embedded model's tokenizer uses the same <|im_start|>/<|im_end|> chat markup as Qwen3
    # and its ids all fit in Qwen3's larger vocabulary.
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or embedded_model_dir())
    silence_unused_tokens(model, len(tokenizer))
    with atomic_path(dest, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the caller measures memory next
    return dest
