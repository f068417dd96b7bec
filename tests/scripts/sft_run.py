"""A short LoRA SFT run of the cpu profile's model, as 03 trains it: the target of the kill test.

    python tests/scripts/sft_run.py OUTPUT_DIR [STEPS] [SAVE_EVERY]

Checkpoints go to OUTPUT_DIR/checkpoints and the adapter to OUTPUT_DIR/adapter at the end; a rerun
resumes from the last checkpoint. The last line printed is ``finished at step N``.
"""

import sys
from pathlib import Path

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from helpers import datasets, training
from helpers.models import add_lora, load_text_model, save_adapter


def main(out: Path, steps: int, save_every: int) -> None:
    model, tokenizer, _ = load_text_model("embedded")
    model = add_lora(model, r=8, alpha=16, gradient_checkpointing=False)
    examples = datasets.load_sft_examples(languages=("en",), limit=16, seed=0).examples
    rows = [datasets.to_prompt_completion(tokenizer, ex) for ex in examples]
    args = SFTConfig(output_dir=str(out / "checkpoints"), max_steps=steps, per_device_train_batch_size=2,
                     learning_rate=1e-3, logging_steps=1, save_steps=save_every, save_total_limit=2,
                     completion_only_loss=True, max_length=256, optim="adamw_torch", report_to="none",
                     bf16=False, disable_tqdm=True, dataloader_pin_memory=False, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    training.train(trainer)
    save_adapter(model, tokenizer, out / "adapter")
    print(f"finished at step {trainer.state.global_step}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 8,
         int(sys.argv[3]) if len(sys.argv) > 3 else 2)
