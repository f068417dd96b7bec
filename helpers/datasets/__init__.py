"""Datasets of the course: each real dataset's schema mapped to one internal form, cleaned, reported.

Every loader takes the real dataset by its hub id and falls back to the samples in ``data/``
(same schemas) when no hub is reachable. Rows that cannot be used are counted and skipped with a
reason, never a crash, and text is de-identified before anything else sees it.

One module per notebook family: ``evaluation`` (01, 02, 04), ``sft`` (03), ``grpo`` (06) and ``vl`` (05),
over ``common`` (the data folder, a source and its reader, the skip signal, de-identification). Every
public name is here too, so ``from helpers import datasets; datasets.load_sft_examples(...)`` reads as
one module.
"""

from helpers.datasets.common import (
    DATA_DIR,
    DEIDENTIFY,
    Skip,
    Source,
    deidentify,
    detect_language,
    read_source,
    text_of,
)
from helpers.datasets.evaluation import (
    EVAL_SKIP_REASONS,
    EVAL_SOURCES,
    MAPPERS,
    MCQ_INSTRUCTIONS,
    OPEN_INSTRUCTIONS,
    CleaningReport,
    MCQItem,
    OpenItem,
    chance_accuracy,
    clean_eval_rows,
    load_eval_set,
    load_eval_sets,
    map_cmb_clin,
    map_cmb_exam,
    map_medqa,
    mcq_prompt,
    open_prompt,
    prompt_chars,
    read_eval_source,
    sample_balanced,
    save_items,
)
from helpers.datasets.grpo import (
    GRPO_SOURCES,
    NOT_HELD_OUT,
    GRPOItem,
    evaluation_questions,
    grpo_item_from_exam,
    load_grpo_items,
    map_verifiable_problem,
    question_key,
    read_grpo_source,
)
from helpers.datasets.sft import (
    SFT_DIR,
    SFT_SOURCES,
    FittedRows,
    SFTExample,
    SFTSet,
    SFTSource,
    count_tokens,
    drop_overlong,
    fit_rows,
    interleave,
    load_sft_examples,
    map_sft_rows,
    sft_files,
    to_messages,
    to_prompt_completion,
    trim_reasoning,
)
from helpers.datasets.vl import (
    SAME_SLICE_SKIP,
    VL_INSTRUCTION,
    VL_INSTRUCTION_ZH,
    VL_OFFLINE,
    VL_OFFLINE_DIR,
    VL_SOURCES,
    VLSet,
    VLSource,
    concept_ids,
    drop_same_slices,
    load_vl_sets,
    read_local_vl_rows,
    read_offline_vl_rows,
    vl_examples,
    vl_instruction,
    vl_messages,
)

__all__ = [
    # common
    "DATA_DIR", "Skip", "text_of", "Source", "read_source", "DEIDENTIFY", "deidentify", "detect_language",
    # evaluation
    "MCQItem", "OpenItem", "EVAL_SOURCES", "EVAL_SKIP_REASONS", "CleaningReport", "map_cmb_exam", "map_medqa",
    "map_cmb_clin", "MAPPERS", "read_eval_source", "prompt_chars", "clean_eval_rows", "load_eval_set",
    "sample_balanced", "save_items", "load_eval_sets", "MCQ_INSTRUCTIONS", "OPEN_INSTRUCTIONS", "mcq_prompt",
    "open_prompt", "chance_accuracy",
    # sft
    "SFT_DIR", "SFTSource", "SFT_SOURCES", "SFTExample", "SFTSet", "map_sft_rows", "sft_files", "interleave",
    "load_sft_examples", "to_messages", "to_prompt_completion", "count_tokens", "drop_overlong",
    "trim_reasoning", "FittedRows", "fit_rows",
    # grpo
    "GRPO_SOURCES", "NOT_HELD_OUT", "GRPOItem", "map_verifiable_problem", "grpo_item_from_exam",
    "question_key", "read_grpo_source", "evaluation_questions", "load_grpo_items",
    # vl
    "VL_INSTRUCTION", "VL_OFFLINE_DIR", "VLSource", "VL_SOURCES", "VL_OFFLINE", "VLSet", "vl_messages",
    "VL_INSTRUCTION_ZH", "vl_instruction", "concept_ids",
    "vl_examples", "read_offline_vl_rows", "read_local_vl_rows", "load_vl_sets", "SAME_SLICE_SKIP",
    "drop_same_slices",
]
