"""Vision-language LoRA training speed and memory: unsloth's FastVisionModel against transformers + peft.

Each measurement loads the model through `load_vl_model` + `add_vl_lora` (the adapters of 05's LoRA
cell), builds batches of the course's offline image + report pairs (data/vl) with `ReportCollator`, and runs
optimizer steps, in a fresh process (unsloth patches transformers on import, so the baseline must
never see it). It reports tokens/s (image and text tokens), seconds per step and peak GPU memory, and
unsloth's speed and memory as a ratio of the baseline's, measured on the same machine in the same run.

    python benchmarks/vl_step.py --model Qwen/Qwen3-VL-2B-Instruct --random --tokenizer .bench \\
        --settings t4,80gb --steps 5 --out vl-bench.json

A step's time is split into forward, backward and optimizer, with the vision encoder's share of the
forward and the collator's CPU time a batch beside it. --ways compares, each in its own process, how a
step keeps what the backward pass needs and whether unsloth compiles (TRAIN_WAYS: "course" as 05 trains in
the setting's profile, "checkpointing", "checkpoints-on-gpu", "no-checkpointing", "no-compile"), with peak
memory against the t4 cap.

    python benchmarks/vl_step.py --random --settings t4 --backends unsloth \
        --ways course,checkpointing,checkpoints-on-gpu,no-compile --steps 4

--generate times, instead of training, the captions 05 writes before and after training
(`vision.generate_captions`, greedy, a batch of the setting's images): one new token (the prefill,
image encoder included) and --new-tokens tokens, each twice (the first call pays compilation and
caches, the repeat shows the steady cost), for each way in --ways, each in its own process (GENERATE_WAYS:
"course" as 05 and 06 call it; "disable-compile", generate's `disable_compile=True`; "force-eager", that
under torch.compile's "force_eager" stance; "no-compile", without unsloth's compiled modules;
"no-block-compile"), with the graphs torch.compile built meanwhile, the first caption and, on a GPU, a
profiled call: the GPU's busy share and the operators that took the most CPU time.

    python benchmarks/vl_step.py --random --tokenizer .bench --settings t4 --generate --backends unsloth

--random builds a checkpoint with the published Qwen3-VL layer sizes and random weights, and a
processor built locally (the tokenizer in --tokenizer plus the Qwen-VL vision tokens, which the
config points at). --tiny measures the cpu profile's tiny model instead: it runs anywhere, a check
of everything but CUDA.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402  (after the path insert)

# The training shape of each profile: 4-bit or 16-bit weights, precision, images per batch, LoRA rank.
SETTINGS = {
    "t4": dict(load_in_4bit=True, dtype="float16", batch=2, r=16),
    "24gb": dict(load_in_4bit=True, dtype="bfloat16", batch=4, r=32),
    "80gb": dict(load_in_4bit=False, dtype="bfloat16", batch=8, r=64),
}


def training_batches(processor, batch: int, max_pixels: int, n: int = 4) -> tuple[list[dict], float]:
    """``n`` batches of ``batch`` image + report pairs from data/vl (cycled), ready for the model, and the
    seconds the collator took a batch (tokenizing and resizing on the CPU, as the trainer's loader does)."""
    from helpers import datasets
    from helpers.vision import ReportCollator

    pairs = datasets.vl_examples(datasets.read_offline_vl_rows("train"), datasets.VL_OFFLINE,
                                 max_pixels=max_pixels).examples
    collator = ReportCollator(processor)
    began = time.perf_counter()
    batches = [collator([pairs[(k * batch + i) % len(pairs)] for i in range(batch)]) for k in range(n)]
    return batches, (time.perf_counter() - began) / n


def _now() -> float:
    """``time.perf_counter()`` once the GPU has finished the work queued so far (where there is one)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


# --ways for training (unsloth): how activations are kept for the backward pass, and compilation.
# (gradient_checkpointing as add_vl_lora takes it, environment of the measuring process)
TRAIN_WAYS = {  # None: as 05 trains in the setting's profile (its vl_gradient_checkpointing)
    "course": (None, {}),
    "checkpointing": (True, {}),  # unsloth's checkpointing: the saved activations wait in CPU memory
    "checkpoints-on-gpu": ("gpu", {}),  # checkpointing with the saved activations left on the GPU
    "no-checkpointing": (False, {}),  # every activation kept: fastest, most memory
    "no-compile": (None, {"UNSLOTH_COMPILE_DISABLE": "1"}),  # as 05, without unsloth's compiled modules
    "no-block-compile": (None, {"UNSLOTH_BLOCK_COMPILE": "0"}),  # as 05, each decoder layer left uncompiled
}


def way_checkpointing(way: str, setting: str) -> bool | str:
    """What ``add_vl_lora`` gets as ``gradient_checkpointing`` for a way; "course" reads the profile."""
    checkpointing = TRAIN_WAYS[way][0]
    if checkpointing is None:
        from helpers.profiles import get_profile

        checkpointing = get_profile(setting).vl_gradient_checkpointing
    return checkpointing


def measure(folder: str, backend: str, setting: str, steps: int, max_pixels: int,
            way: str = "course") -> dict:
    """One backend, one setting, one way: tokens/s over ``steps`` steps after two warm-up steps, and where
    a step's time goes (forward, backward, optimizer; the vision encoder's share of the forward)."""
    import torch

    from helpers.models import count_parameters
    from helpers.vision import add_vl_lora, load_vl_model

    s = SETTINGS[setting]
    checkpointing = way_checkpointing(way, setting)
    cuda = torch.cuda.is_available()
    began = time.perf_counter()
    dtype = s["dtype"] if cuda else "float32"  # the CPU check runs in 32-bit
    model, processor, loaded_with = load_vl_model(folder, load_in_4bit=s["load_in_4bit"], dtype=dtype,
                                                  backend=backend)
    model = add_vl_lora(model, r=s["r"], alpha=s["r"], backend=loaded_with,
                        gradient_checkpointing=checkpointing)
    load_seconds = time.perf_counter() - began
    trainable, total = count_parameters(model)
    device = next(p for p in model.parameters() if p.requires_grad).device
    cpu_batches, collate_seconds = training_batches(processor, s["batch"], max_pixels)
    batches = [b.to(device) for b in cpu_batches]
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    losses: list[float] = []
    parts = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    step_seconds: list[float] = []

    def step(k: int, timed: bool) -> None:
        t0 = _now()
        loss = model(**batches[k % len(batches)]).loss
        t1 = _now()
        loss.backward()
        t2 = _now()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = _now()
        losses.append(loss.item())
        if timed:
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[name] += seconds
            step_seconds.append(t3 - t0)

    for k in range(2):
        step(k, timed=False)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for k in range(steps):
        step(k, timed=True)
    seconds = sum(step_seconds)
    peak = torch.cuda.max_memory_allocated() / 1024**3 if cuda else None
    return {
        "backend": loaded_with, "requested": backend, "setting": setting, "way": way, **s, "steps": steps,
        "max_pixels": max_pixels, "image_tokens_per_image": _image_tokens(batches[0], processor),
        "tokens_per_step": sum(tokens[k % len(tokens)] for k in range(steps)) / steps,
        "tokens_per_s": sum(tokens[k % len(tokens)] for k in range(steps)) / seconds,
        "seconds_per_step": seconds / steps, "step_seconds": step_seconds,
        **{f"{name}_share": part / seconds for name, part in parts.items()},
        "vision_forward_seconds": _vision_forward_seconds(model, batches),
        "collate_seconds": collate_seconds,
        "peak_gb": peak,
        "load_seconds": load_seconds, "trainable": trainable, "total": total,
        "first_loss": losses[0], "last_loss": losses[-1],
        "gpu": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


def _vision_forward_seconds(model, batches: list[dict]) -> float | None:
    """Seconds of the vision encoder alone on a batch's images, without gradients (mean of three calls
    after one); None where the model keeps its encoder elsewhere."""
    import torch

    # Qwen-VL's encoder is ``visual``, wherever peft and unsloth put it
    tower = next((module for name, module in model.named_modules() if name.endswith("visual")), None)
    if tower is None:
        return None
    batch = batches[0]
    with torch.no_grad():
        tower(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        began = _now()
        for _ in range(3):
            tower(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        return (_now() - began) / 3


# --ways for generation: (generate's extra arguments, environment of the measuring process, the
# torch.compile stance the calls run under)
GENERATE_WAYS = {
    "course": ({}, {}, "default"),  # as 05's captions and 06's held-out answers are written
    "disable-compile": ({"disable_compile": True}, {}, "default"),  # generate may not compile decoding
    # and nothing torch.compile wrapped may compile either (yet unsloth's modules still do: table 17)
    "force-eager": ({"disable_compile": True}, {}, "force_eager"),
    "no-compile": ({}, {"UNSLOTH_COMPILE_DISABLE": "1"}, "default"),  # without unsloth's compiled modules
    "no-block-compile": ({}, {"UNSLOTH_BLOCK_COMPILE": "0"}, "default"),  # decoder layers uncompiled
}


def _graphs_compiled() -> int:
    """Graphs torch.compile has built in this process so far (a count that grows on every recompilation)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _profile_generation(call) -> dict:
    """Where one generate call spends its time: the GPU's busy share of the wall time (kernels' device
    time over seconds), and the operators that took the most CPU time, as torch.profiler counts them."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        began = _now()
        call()
        wall = _now() - began
    events = prof.key_averages()
    # kernels only, as torch's own table totals them: an operator also carries the time of the kernels
    # it launched, and summing both would count each kernel twice
    busy = sum(e.self_device_time_total for e in events
               if e.device_type != DeviceType.CPU and not e.is_user_annotation) / 1e6
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
    return {"profiled_s": wall, "gpu_busy_share": busy / wall if wall else None,
            "top_cpu_ops": [[e.key[:60], round(e.self_cpu_time_total / 1e6, 3), e.count] for e in top]}


def measure_generation(folder: str, backend: str, setting: str, max_pixels: int, new_tokens: int,
                       ways: list[str]) -> dict:
    """Seconds of 05's caption generation for a batch of the setting's images: the prefill (1 new token)
    and ``new_tokens`` tokens, each called twice, for each way of ``GENERATE_WAYS`` (its arguments and
    compile stance; its environment is the caller's to set), with the graphs compiled meanwhile, the
    first caption written and, on a GPU, a profile."""
    import torch

    from helpers import datasets
    from helpers.vision import generate_captions, load_vl_model

    s = SETTINGS[setting]
    cuda = torch.cuda.is_available()
    model, processor, loaded_with = load_vl_model(folder, load_in_4bit=s["load_in_4bit"] and cuda,
                                                  dtype=s["dtype"] if cuda else "float32", backend=backend)
    pairs = datasets.vl_examples(datasets.read_offline_vl_rows("test"), datasets.VL_OFFLINE,
                                 max_pixels=max_pixels).examples
    images = [pair["images"][0] for pair in pairs[:s["batch"]]]

    written: list[str] = []  # the last call's captions: do the ways write the same?

    def write(n: int, way: str) -> None:
        kwargs, _, stance = GENERATE_WAYS[way]
        with torch.compiler.set_stance(stance):  # min_new_tokens: exactly n tokens, whatever the weights
            written[:] = generate_captions(model, processor, images, datasets.VL_INSTRUCTION,
                                           max_new_tokens=n, batch_size=len(images), min_new_tokens=n,
                                           **kwargs)

    def seconds(n: int, way: str) -> tuple[float, int]:
        graphs, began = _graphs_compiled(), _now()
        write(n, way)
        return _now() - began, _graphs_compiled() - graphs

    rows = []
    for way in ways:
        (first_prefill, _), (first, graphs_first) = seconds(1, way), seconds(new_tokens, way)
        (prefill, _), (decode, graphs_repeat) = seconds(1, way), seconds(new_tokens, way)
        row = {"way": way, "first_prefill_s": first_prefill, "first_s": first, "prefill_s": prefill,
               "tokens_s": decode, "per_token_s": (decode - prefill) / max(new_tokens - 1, 1),
               "graphs_compiled_first": graphs_first, "graphs_compiled_repeat": graphs_repeat,
               "first_caption": written[0][:80]}
        if cuda:  # the profiler's CUDA side needs a GPU
            row |= _profile_generation(lambda way=way: write(min(new_tokens, 16), way))
        rows.append(row)
    return {"backend": loaded_with, "requested": backend, "setting": setting, "images": len(images),
            "new_tokens": new_tokens, "ways": rows,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "peak_gb": torch.cuda.max_memory_allocated() / 1024**3 if cuda else None}


def print_generation_table(title: str, results: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'setting':<7} {'backend':<13} {'way':<15} {'1st prefill':>11} {'1st N tok':>9} {'prefill':>8} "
          f"{'N tok':>7} {'s/token':>8} {'graphs':>9} {'GPU busy':>8}")
    for r in results:
        if "error" in r:
            last = r["error"].strip().splitlines()[-1] if r["error"].strip() else "no output"
            print(f"{r['setting']:<7} {r['requested']:<13} {r.get('way') or '':<15} failed: {last[:120]}")
            continue
        for w in r["ways"]:
            busy = f"{w['gpu_busy_share']:.0%}" if w.get("gpu_busy_share") is not None else "-"
            graphs = f"{w['graphs_compiled_first']}/{w['graphs_compiled_repeat']}"
            print(f"{r['setting']:<7} {r['backend']:<13} {w['way']:<15} {w['first_prefill_s']:>11.2f} "
                  f"{w['first_s']:>9.2f} {w['prefill_s']:>8.2f} {w['tokens_s']:>7.2f} "
                  f"{w['per_token_s']:>8.3f} {graphs:>9} {busy:>8}")
            for name, cpu_s, calls in w.get("top_cpu_ops", [])[:3]:
                print(f"{'':>38}{name:<60} {cpu_s:>7.3f} s CPU in {calls} calls")
    print("N tok: the batch writing --new-tokens tokens; s/token: (N tok - prefill) / (N - 1), the repeat; "
          "graphs: compiled during the first / the repeat N-token call; GPU busy: kernel time over wall time "
          "of a profiled call, with the operators that took most CPU time under it")


def _image_tokens(batch, processor) -> float:
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return float((batch["input_ids"] == image_id).sum()) / len(batch["image_grid_thw"])


def run_isolated(folder: str, backend: str, setting: str, steps: int, max_pixels: int,
                 extra: list[str] = (), way: str | None = None, ways: dict = TRAIN_WAYS) -> dict:
    """One measurement in a fresh process: a ``way`` of ``ways`` (TRAIN_WAYS or GENERATE_WAYS) runs with
    its own environment."""
    command = [__file__, "--one", backend, "--folder", folder, "--settings", setting,
               "--steps", str(steps), "--max-pixels", str(max_pixels), *extra]
    if way is not None:
        command += ["--ways", way]
    return report.run_isolated(command, None, env=ways[way][1] if way is not None else None,
                               backend=backend, requested=backend, setting=setting, way=way)


def build_checkpoint(args) -> str:
    """The model folder to measure: a given folder, the tiny model, or random weights of a real shape."""
    from helpers import vision

    if args.folder:
        return args.folder
    if args.tiny:
        return str(vision.make_tiny_vl_model())
    if not args.random:
        from helpers.hub import resolve_model

        return str(resolve_model(args.model, fallback=False).path)
    processor = vision.build_vl_processor("qwen3_vl", max_pixels=args.max_pixels,
                                          tokenizer_dir=args.tokenizer)
    dest = Path("/tmp/course-random") / args.model
    began = time.perf_counter()
    vision.make_random_vl_checkpoint(args.model, dest, processor=processor)
    print(f"random {args.model} checkpoint ready in {time.perf_counter() - began:.0f} s: {dest}", flush=True)
    return str(dest)


def print_table(title: str, results: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'setting':<7} {'backend':<13} {'way':<18} {'tokens/s':>9} {'s/step':>7} {'fwd':>4} {'bwd':>4} "
          f"{'opt':>4} {'vision':>6} {'collate':>7} {'peak GB':>8} {'tok/step':>8}  vs transformers")
    for r in results:
        if "error" in r:
            last = r["error"].strip().splitlines()[-1] if r["error"].strip() else "no output"
            print(f"{r['setting']:<7} {r['requested']:<13} {r.get('way') or '':<18} failed: {last[:120]}")
            continue
        backend = r["backend"] if r["backend"] == r["requested"] else f"{r['requested']}→{r['backend']}"
        base = next((b for b in results if b.get("setting") == r["setting"] and "error" not in b
                     and b.get("backend") == "transformers" and b.get("requested") == "transformers"
                     and b.get("way") == r["way"]), None)
        ratio = ""
        if base and base is not r:
            ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x speed"
            if r["peak_gb"] and base["peak_gb"]:
                ratio += f", {r['peak_gb'] / base['peak_gb']:.2f}x memory"
        peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "-"
        forward = r["seconds_per_step"] * r["forward_share"]
        vision = f"{r['vision_forward_seconds'] / forward:.0%}" if r["vision_forward_seconds"] else "-"
        print(f"{r['setting']:<7} {backend:<13} {r['way']:<18} {r['tokens_per_s']:>9.0f} "
              f"{r['seconds_per_step']:>7.2f} {r['forward_share']:>4.0%} {r['backward_share']:>4.0%} "
              f"{r['optimizer_share']:>4.0%} {vision:>6} {r['collate_seconds']:>7.3f} {peak:>8} "
              f"{r['tokens_per_step']:>8.0f}  {ratio}")
    print("fwd/bwd/opt: shares of a step; vision: the vision encoder alone (no gradients) over the forward; "
          "collate: CPU seconds a batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen3-VL-2B-Instruct",
                        help="hub id (with --random: its shape)")
    parser.add_argument("--folder", help="a local model folder (default: build or resolve --model)")
    parser.add_argument("--random", action="store_true", help="random weights of the model's published shape")
    parser.add_argument("--tiny", action="store_true", help="the cpu profile's tiny model (no GPU needed)")
    parser.add_argument("--tokenizer", help="tokenizer folder for --random (default: the embedded model's)")
    parser.add_argument("--settings", default="t4,80gb")
    parser.add_argument("--backends", default="transformers,unsloth")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--max-pixels", type=int, default=512 * 512, help="pixel budget per image")
    parser.add_argument("--generate", action="store_true", help="time caption generation, not training")
    parser.add_argument("--new-tokens", type=int, default=32, help="with --generate: tokens per caption")
    parser.add_argument("--ways", default=None,
                        help=f"training: any of {','.join(TRAIN_WAYS)} (default course); with --generate, "
                             f"any of {','.join(GENERATE_WAYS)} (default course,no-compile)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    known = GENERATE_WAYS if args.generate else TRAIN_WAYS
    ways = (args.ways or ("course,no-compile" if args.generate else "course")).split(",")
    if unknown := [w for w in ways if w not in known]:
        parser.error(f"--ways {','.join(unknown)}: choose among {', '.join(known)}")
    if args.one:
        if args.generate:
            print(json.dumps(measure_generation(args.folder, args.one, args.settings, args.max_pixels,
                                                args.new_tokens, ways)))
        else:
            print(json.dumps(measure(args.folder, args.one, args.settings, args.steps, args.max_pixels,
                                     ways[0])))
        return
    began = time.perf_counter()
    folder = build_checkpoint(args)
    if args.generate:
        extra = ["--generate", "--new-tokens", str(args.new_tokens)]
        results = [run_isolated(folder, b, s, args.steps, args.max_pixels, extra, way=w, ways=GENERATE_WAYS)
                   for s in args.settings.split(",") for b in args.backends.split(",") for w in ways]
    else:  # each way in its own process: unsloth reads its environment on import
        results = [run_isolated(folder, b, s, args.steps, args.max_pixels, way=w)
                   for s in args.settings.split(",") for b in args.backends.split(",") for w in ways]
    name = "tiny random Qwen3-VL" if args.tiny else args.model
    if args.random:
        name += " (random weights, real shape)"
    if args.generate:
        print_generation_table(f"{name}: captions as 05 writes them, seconds", results)
    else:
        print_table(f"{name}: vision-language LoRA training, {args.steps} timed steps", results)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
