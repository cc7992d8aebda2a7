"""Sections ``syncs``, ``deterministic`` and ``generation`` of the device check.

syncs: host syncs per training step of each task. On a GPU, ``torch.cuda.set_sync_debug_mode``
warns at every operation that makes the host wait for the device; on any device a
``TorchDispatchMode`` counts the data-dependent operations (``.item()``, ``nonzero``, ``unique``,
``masked_select``, copies to the CPU) that become such waits on a GPU. A step's window runs from
one ``on_train_batch_start`` to the next: forward, backward, optimizer, logging, every callback.

deterministic: ``trainer.deterministic=true`` trained twice per task: the weights and metrics
must be bit-identical.

generation: the char LM, briefly trained, continued greedily on the GPU and on the CPU; the
GPU's text fed back through both models gives the largest log-probability difference along it.
"""

import copy
import os
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import lightning as L
import torch
from common import FAIL, PASS, SHARED, SKIP, TASK_NAMES, TASKS, Context, failed_row, table
from device_arms import DeviceArmSpec
from omegaconf import open_dict
from torch.utils._python_dispatch import TorchDispatchMode

from seqmodels.cli.train import build_data_and_model, train

DATA_DEPENDENT = {"aten::_local_scalar_dense", "aten::nonzero", "aten::_unique",
                  "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
                  "aten::masked_select", "aten::nonzero_static"}
TORCH_DIR = str(Path(torch.__file__).parent)


def where(stack) -> str:
    """The innermost frame outside torch (often Lightning's), and the innermost seqmodels frame
    when that is another one: ``utilities/apply_func.py:134 < seqmodels/models/base.py:190``."""
    frames = [f for f in stack if not f.filename.startswith(TORCH_DIR)
              and "device_check" not in f.filename]

    def short(frame) -> str:
        return "/".join(Path(frame.filename).parts[-2:]) + f":{frame.lineno}"

    if not frames:
        return "?"
    ours = [f for f in frames if f"{os.sep}seqmodels{os.sep}" in f.filename]
    if not ours or ours[-1] is frames[-1]:
        return short(frames[-1])
    return f"{short(frames[-1])} < {short(ours[-1])}"


class HostReads(TorchDispatchMode):
    """Counts the data-dependent operations and device-to-CPU copies it sees, by place."""

    def __init__(self):
        super().__init__()
        self.places: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        hit = name in DATA_DEPENDENT
        if name == "aten::_to_copy" and args and isinstance(args[0], torch.Tensor):
            target = kwargs.get("device")
            hit = target is not None and torch.device(target).type == "cpu" \
                and args[0].device.type != "cpu"
        elif name == "aten::copy_" and len(args) > 1:
            hit = args[0].device.type == "cpu" and args[1].device.type != "cpu"
        if hit:  # the device read from: on a GPU only a non-CPU read makes the host wait
            tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
            device = "?" if tensor is None else tensor.device.type
            self.places[f"{name.split('::')[1]} ({device}) at "
                        f"{where(traceback.extract_stack())}"] += 1
        return func(*args, **kwargs)


class SyncCounter(L.Callback):
    """Host syncs and data-dependent ops per training step, after ``warmup`` steps."""

    def __init__(self, warmup: int, cuda: bool):
        self.warmup, self.cuda = warmup, cuda
        self.steps: list[dict] = []
        self._mode: HostReads | None = None
        self._warnings = None
        self._syncs: Counter = Counter()

    def _show(self, message, category, filename, lineno, file=None, line=None):
        if "synchronizing CUDA operation" in str(message):
            self._syncs[where(traceback.extract_stack())] += 1

    def _open(self, logs: bool) -> None:
        self._syncs = Counter()
        self._logs = logs
        if self.cuda:
            self._warnings = warnings.catch_warnings()
            self._warnings.__enter__()
            warnings.simplefilter("always")
            warnings.showwarning = self._show
            torch.cuda.set_sync_debug_mode("warn")
        self._mode = HostReads()
        self._mode.__enter__()

    def _close(self) -> None:
        if self._mode is None:
            return
        self._mode.__exit__(None, None, None)
        if self.cuda:
            torch.cuda.set_sync_debug_mode(0)
            self._warnings.__exit__(None, None, None)
        self.steps.append({"syncs": dict(self._syncs), "reads": dict(self._mode.places),
                           "logs": self._logs})
        self._mode = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._close()
        if trainer.global_step >= self.warmup:
            # Lightning logs the step after which (steps so far + 1) % log_every_n_steps == 0.
            self._open((trainer.global_step + 1) % trainer.log_every_n_steps == 0)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._close()  # a step's window ends before validation

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()


def top(counter: Counter, n: int = 3) -> str:
    return "; ".join(f"{place} x{count}" for place, count in counter.most_common(n)) or "-"


def syncs(ctx: Context):
    warmup, steps = (3, 10) if ctx.cuda else (1, 5)
    rows, figures, failed = [], {}, []
    for name in TASK_NAMES:
        try:
            rows.append(count_syncs(ctx, name, warmup, steps, figures))
        except Exception as error:  # noqa: BLE001  (one task fails; the others still run)
            traceback.print_exc()
            failed.append(name)
            rows.append(failed_row(f"`{TASKS[name].experiment}`", error, 6))
        ctx.partial(syncs_text(rows), figures)
    text = syncs_text(rows)
    waits = {name: f for name, f in figures.items() if any(f["syncs_per_step"])}
    if failed or (ctx.cuda and waits):
        return FAIL, (f"**host syncs on non-logging steps: {', '.join(waits)}**\n\n" if waits
                      else "") + text, figures
    if not ctx.cuda:
        return SKIP, ("no CUDA: `torch.cuda.set_sync_debug_mode` needs a GPU; the CPU count of "
                      "data-dependent ops ran\n\n" + text), figures
    return PASS, text, figures


def syncs_text(rows: list) -> str:
    return "\n".join([
        "Per training step after the warm-up, default callbacks (the trainer logs every 5th "
        "step): host syncs that `torch.cuda.set_sync_debug_mode('warn')` reports, and the "
        "data-dependent ops / copies to the CPU that a dispatch mode counts. A step's window "
        "runs from one `on_train_batch_start` to the next (the next batch's loading and copy "
        "included). Target: 0 on every step that does not log.", "",
        table(["task", "steps (logging)", "CUDA syncs per non-logging step",
               "on logging steps", "host reads per non-logging step", "where (most frequent)"],
              rows)])


def count_syncs(ctx: Context, name: str, warmup: int, steps: int, figures: dict) -> list:
    cfg = ctx.compose(name, f"++trainer.limit_train_batches={warmup + steps}",
                      "++trainer.limit_val_batches=1", "trainer.max_epochs=1",
                      "trainer.log_every_n_steps=5", "test=false")
    counter = SHARED[f"syncs_{name}"] = SyncCounter(warmup, ctx.cuda)
    with open_dict(cfg):
        cfg.callbacks.device_check_syncs = {"_target_": "common.shared",
                                            "key": f"syncs_{name}"}
    train(cfg)
    quiet = [s for s in counter.steps if not s["logs"]]
    logging_steps = [s for s in counter.steps if s["logs"]]
    per_step = [sum(s["syncs"].values()) for s in quiet]
    on_logging = [sum(s["syncs"].values()) for s in logging_steps]
    reads = [sum(s["reads"].values()) for s in quiet]
    places_s = sum((Counter(s["syncs"]) for s in quiet), Counter())
    places_r = sum((Counter(s["reads"]) for s in quiet), Counter())
    figures[name] = {"syncs_per_step": per_step, "syncs_on_logging_steps": on_logging,
                     "reads_per_step": reads, "sync_places": dict(places_s),
                     "read_places": dict(places_r)}
    cuda = ctx.cuda
    return [f"`{TASKS[name].experiment}`", f"{len(counter.steps)} ({len(logging_steps)})",
            " ".join(map(str, per_step)) if cuda else "- (no CUDA)",
            " ".join(map(str, on_logging)) if cuda else "-",
            " ".join(map(str, reads)), top(places_s if cuda else places_r)]


def deterministic(ctx: Context):
    batches = 20 if ctx.cuda else 3
    rows, figures, differ = [], {}, []
    for name in TASK_NAMES:
        if ctx.left() < (8 if ctx.cuda else 2):
            rows.append([f"`{TASKS[name].experiment}`", "not run: the section's budget was spent",
                         "", "", ""])
            continue
        try:
            rows.append(train_twice(ctx, name, batches, figures))
        except Exception as error:  # noqa: BLE001  (one task fails; the others still run)
            traceback.print_exc()
            rows.append([f"`{TASKS[name].experiment}`",
                         f"**failed**: {type(error).__name__}: {error}"[:200], "", "", ""])
        if not figures.get(name, {}).get("equal"):
            differ.append(name)
        ctx.partial(deterministic_text(ctx, batches, rows), figures)
    return (FAIL if differ else PASS), deterministic_text(ctx, batches, rows), figures


def deterministic_text(ctx: Context, batches: int, rows: list) -> str:
    return "\n".join([f"`trainer.deterministic=true`, one epoch of {batches} batches, twice per "
                      f"task on {ctx.device}:", "",
                      table(["task", "batches", "metric, run 1 / run 2", "max weight diff",
                             "bit-identical"], rows)])


def train_twice(ctx: Context, name: str, batches: int, figures: dict) -> list:
    runs = []
    for attempt in (1, 2):
        cfg = ctx.compose(name, "trainer.deterministic=true", "trainer.max_epochs=1",
                          f"++trainer.limit_train_batches={batches}",
                          "++trainer.limit_val_batches=2", "test=false",
                          label=f"{name}_{attempt}")
        metrics, objects = train(cfg)
        state = {k: v.detach().cpu().clone() for k, v in objects["model"].state_dict().items()
                 if isinstance(v, torch.Tensor)}
        runs.append((metrics, state))
    (m1, s1), (m2, s2) = runs
    diff = max((float((s1[k].double() - s2[k].double()).abs().max()) for k in s1
                if s1[k].is_floating_point() and s1[k].numel()), default=0.0)
    same = m1 == m2 and all(torch.equal(s1[k], s2[k]) for k in s1)
    monitor = "val/loss" if "val/loss" in m1 else sorted(m1)[0]
    figures[name] = {"metrics": [m1, m2], "max_weight_diff": diff, "equal": same}
    return [f"`{TASKS[name].experiment}`", batches,
            f"{m1.get(monitor)!r} / {m2.get(monitor)!r} ({monitor})", f"{diff:.3g}",
            "yes" if same else "**NO**"]


def generation(ctx: Context):
    steps, chars = (40, 200) if ctx.cuda else (5, 40)
    cfg = ctx.compose("charlm", label="generation")
    L.seed_everything(0, verbose=False)
    datamodule, model = build_data_and_model(cfg)
    device = ctx.device
    model.to(device)
    arm = DeviceArmSpec("warm-up").build(cfg, datamodule, model)
    arm.run_epoch(0, steps)  # a little training: an untrained model's logits are near ties
    trained = arm.model.eval()
    other = copy.deepcopy(trained).cpu()  # the CPU copy (on a dry run: a second CPU copy)
    prompt = "ROMEO:"
    timings, texts = {}, {}
    for label, m in (("device", trained), ("cpu", other)):
        start = time.perf_counter()
        texts[label] = m.generate(prompt, chars, temperature=0.0)
        timings[label] = chars / (time.perf_counter() - start)
    common = next((i for i, (a, b) in enumerate(zip(texts["device"], texts["cpu"])) if a != b),
                  min(len(texts["device"]), len(texts["cpu"])))
    # The device's text through both models: where do their next-character log-probs differ?
    ids = trained.encode_prompt(prompt + texts["device"])
    tokens = torch.tensor([ids])
    with torch.no_grad():
        a = torch.log_softmax(trained(tokens.to(device))[0].float(), -1).cpu()[0]
        b = torch.log_softmax(other(tokens)[0].float(), -1)[0]
    diff = float((a - b).abs().max())
    choices = b.argmax(-1)[len(prompt) - 1:-1]
    followed = torch.tensor(ids[len(prompt):])
    top2 = b.topk(2, -1).values
    gaps = (top2[:, 0] - top2[:, 1])[len(prompt) - 1:-1]
    flips = (choices != followed)
    real_flips = int((flips & (gaps > 2 * diff)).sum())  # not explained by a near tie
    ok = diff < 0.05 and real_flips == 0
    figures = {"max_logprob_diff": diff, "common_prefix": common, "chars": chars,
               "flips": int(flips.sum()), "unexplained_flips": real_flips,
               "chars_per_second": timings, "text_device": texts["device"][:120]}
    name = torch.cuda.get_device_name() if ctx.cuda else "a second CPU copy"
    text = "\n".join([
        f"Char LM after {steps} training steps, `generate(prompt={prompt!r}, {chars} chars, "
        f"temperature=0)` on {name} and on the CPU:", "",
        table(["max abs log-prob diff along the text", "identical leading chars",
               "greedy choices that differ (near ties excluded)", "chars/s device", "chars/s CPU"],
              [[f"{diff:.2e}", f"{common} / {chars}", f"{int(flips.sum())} ({real_flips})",
                f"{timings['device']:,.0f}", f"{timings['cpu']:,.0f}"]]),
        "", f"device text: `{texts['device'][:80]!r}`"])
    if not ok:
        return FAIL, text, figures
    if not ctx.cuda:
        return SKIP, "no CUDA: compared two CPU copies (the code path only)\n\n" + text, figures
    return PASS, text, figures


