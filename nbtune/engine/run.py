"""Run: one fine-tuning run built from a RunConfig, started in the foreground or a background thread,
steered through `run.control`, observed through sinks, saved and resumed exactly.

Example:
    >>> from nbtune import RunConfig, Run
    >>> run = Run(RunConfig(model="minilm", data="intents-en"))        # doctest: +SKIP
    >>> run.start(background=True); run.control.set("lr", 1e-4)          # doctest: +SKIP
    >>> run.wait(); run.results["test"]["accuracy"]                     # doctest: +SKIP
"""
from __future__ import annotations

import contextvars
import dataclasses
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterable

import torch

from nbtune.config import RunConfig
from nbtune.engine import build, checkpoint as ckpt, loop
from nbtune.engine.batching import epoch_batches, pad_batch
from nbtune.engine.control import Control, interrupts_stop
from nbtune.engine.edits import apply_command, apply_trainable_edit, check_target, set_lr
from nbtune.engine.sinks import ConsoleSink, JsonlSink, MetricSink, TensorBoardSink
from nbtune.engine.state_io import load_run_state, save_run_state
from nbtune.methods.base import PlanState


class Run:
    """Everything one run owns: accelerator, model, optimizer, scheduler, data plan, control, sinks."""

    def __init__(self, config: RunConfig, dataset=None, *, sinks: Iterable[MetricSink] = (),
                 run_dir: str | Path | None = None) -> None:
        from nbtune import assets
        from transformers import set_seed
        self.cfg = config
        self.accelerator = build.build_accelerator(build.changes_trainable_set(config))
        self.device = self.accelerator.device
        self.precision = build.resolve_precision(config.train.precision, self.device)
        set_seed(config.train.seed)

        resolved = assets.resolve_model(config.model.name)
        self.tokenizer = build.load_tokenizer(config, resolved)
        self.source_dataset = dataset  # what launch() hands to the processes it starts
        dataset, self.data_where = build.load_data(config, dataset)
        self.loaded_dataset = dataset  # the splits as trained on, before tokenizing (the Dashboard's Data tab)
        self.data = build.tokenize(config, dataset, self.tokenizer, self.data_where)
        self.dataset_fingerprint = self.data.fingerprint_source
        self._lengths = [len(r["input_ids"]) for r in self.data.rows["train"]]

        from nbtune.methods import build_methods
        self.methods = build_methods(config.methods)
        self.steps_per_epoch = None
        self.raw_model = build.build_model(config, resolved, self.data.label_names, self.tokenizer)
        self.raw_model.to(self.device)
        self.raw_model, method_groups = build.prepare_methods(self.methods, self.raw_model, config, self.device)
        self.steps_per_epoch, self.total_steps = build.total_steps_for(config, len(self.epoch_plan(0)))
        self.optimizer = build.build_optimizer(build.param_groups(self.raw_model, config, method_groups), config,
                                               self.device)
        self.scheduler = build.build_scheduler(self.optimizer, config, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.use_grad_scaler else None
        self.model = self.accelerator.prepare_model(self.raw_model)  # DDP under torchrun / accelerate launch
        # Dropout differs per rank; the data plan does not use this RNG at all.
        torch.manual_seed(config.train.seed + 1000 * self.accelerator.process_index)

        self.class_weights = build.class_weight_tensor(config, self.data, self.device)
        self.max_grad_norm = config.train.max_grad_norm
        self.control = Control()
        self.control.schedule_edits(config.train.edits)
        self.state = loop.TrainState()
        self.results: dict[str, dict] = {}
        self.last_step_record: dict | None = None
        self.error: BaseException | None = None
        self.traceback: str | None = None  # the formatted traceback when the run ended in an error
        self.window_loss = torch.zeros((), device=self.device)
        self.replan = False
        self._user_sinks = list(sinks)
        self._queued_records: list[dict[str, Any]] = []
        self._sinks: list[MetricSink] = []
        self._thread: threading.Thread | None = None
        self._done = threading.Event()  # set when a training ends (wait() blocks on it, not on Thread.join)
        self.run_dir = Path(run_dir) if run_dir else self._default_run_dir()

    # ---- data ----
    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches for one epoch: the engine's seeded plan, or a method's sampler (curriculum,
        domain mixing). Either is a pure function of the epoch, so a resumed run sees the same batches."""
        acc, t = self.accelerator, self.cfg.train

        def default() -> list[list[int]]:
            return epoch_batches(self._lengths, t.batch_size, t.seed, epoch, self.cfg.data.group_by_length,
                                 acc.process_index, acc.num_processes)
        plan = PlanState(epoch, t.batch_size, t.seed, acc.process_index, acc.num_processes, self.steps_per_epoch,
                         default)
        for method in getattr(self, "methods", ()):
            batches = method.sampler(self.data, plan)
            if batches is not None:
                return batches
        return default()

    def collate(self, indices: list[int], rows: list[dict]) -> dict[str, torch.Tensor]:
        d = self.cfg.data
        return pad_batch([rows[i] for i in indices], self.tokenizer.pad_token_id, d.pad_to_multiple_of,
                         d.max_length if d.pad_to_max_length else None)

    # ---- running ----
    def start(self, background: bool = False) -> "Run":
        """Train. In the background the notebook stays usable; `wait()` joins and re-raises errors. In the
        foreground a kernel interrupt stops the run with a checkpoint, then raises KeyboardInterrupt (see
        docs/interrupts.md; a third interrupt aborts without the checkpoint)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this run is already training; use run.control to pause or stop it")
        if self.state.status in ("finished", "running"):
            raise RuntimeError(f"this run is {self.state.status}; build a new Run to train again")
        self._done.clear()
        if background:
            # copy_context: widget updates from the thread need the kernel's context (ipykernel >= 7.1).
            ctx = contextvars.copy_context()
            self._thread = threading.Thread(target=ctx.run, args=(self._train_safely,), daemon=True,
                                            name=f"nbtune-{self.run_dir.name}")
            self._thread.start()
        else:
            # Ctrl+C / a kernel interrupt becomes a Stop (checkpoint at the next micro-batch), never an exception
            # inside a step or a save; with several processes each must stop at the same step, so not there.
            with interrupts_stop(self.control, self.accelerator.num_processes == 1) as interrupts:
                self._train_safely()
            if self.error is not None:
                raise self.error
            if interrupts:
                self._report_interrupt(len(interrupts))
                raise KeyboardInterrupt(f"training stopped at step {self.state.step}")
        return self

    def wait(self, timeout_s: float | None = None) -> "Run":
        """Join the training thread; re-raises its error. A kernel interrupt (Ctrl+C, Jupyter's stop button)
        while waiting is turned into Stop: the run saves a checkpoint and ends, then the interrupt goes on."""
        if self._thread is not None:
            # Block on an Event, not on Thread.join: on Python 3.11 a join interrupted by Ctrl+C marks the thread
            # as stopped while it still runs (CPython gh-90882), and the join after it would return at once.
            try:
                ended = self._done.wait(timeout_s)
            except KeyboardInterrupt:
                self._stop_after_interrupt()
                raise
            if ended:
                self._thread.join()
        if self.error is not None:
            raise self.error
        return self

    def _stop_after_interrupt(self) -> None:
        # Signals reach only the main thread, which is here, waiting; the training thread never sees them.
        self.control.stop()
        count = 1
        while not self._done.is_set():
            try:
                self._done.wait()
            except KeyboardInterrupt:  # a second interrupt while the checkpoint is written: finish it first
                count += 1
        self._thread.join()
        self._report_interrupt(count)

    def _report_interrupt(self, count: int) -> None:
        again = f" ({count - 1} more interrupt(s) ignored while it saved)" if count > 1 else ""
        print(f"nbtune: interrupted: training stopped at step {self.state.step} ({self.state.status}); "
              f"the checkpoint is in {self.run_dir / 'checkpoints'}{again}", file=sys.stderr)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _train_safely(self) -> None:
        self._open_sinks()
        self.state.status = "running"
        message = ""
        try:
            status = loop.train(self)
            if status == "finished":
                self.results["validation"] = self.evaluate("validation")
                self.results["test"] = self.evaluate("test")
                self.save_checkpoint()
                self._check_ranks_agree()
            self.state.status = status
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised by start()/wait()
            self.state.status, self.error = "error", exc
            message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.traceback = traceback.format_exc()
        finally:
            self.emit({"kind": "end", "step": self.state.step, "status": self.state.status, "time": time.time(),
                       "message": message, "results": self.results})
            self._close_sinks()
            self._done.set()

    def _check_ranks_agree(self) -> None:
        """Under DDP every rank must hold bit-identical weights at the end; a mismatch is a bug, not noise."""
        if self.accelerator.num_processes == 1:
            return
        from accelerate.utils import gather_object
        digests = gather_object([ckpt.weights_digest(self.raw_model)])
        self.results["weights_digest_by_rank"] = digests
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks disagree on the final weights: {digests}")

    def service_control(self) -> bool:
        """Apply due commands; block while paused. Returns True when the loop must stop."""
        while True:
            for cmd in self.control.due(self.state.step, self.state.micro_step):
                if cmd.name == "stop":
                    self.control.log(self.state.step, "stop", None, None)
                    self.emit(self.control.edits[-1])
                    self.save_checkpoint()
                    return True
                apply_command(self, cmd)
            if not self.control.paused:
                self.state.status = "running"
                return False
            self.state.status = "paused"
            self.control.wait_while_paused()

    def set_precision(self, name: str) -> None:
        """Choose fp32 / bf16 / fp16 / auto before training starts (the panel's precision choice)."""
        if self.state.step > 0 or self.state.status != "ready":
            raise RuntimeError(f"precision can change only before training starts (this run is {self.state.status} "
                               f"at step {self.state.step}); build a new Run with train.precision={name}")
        self.precision = build.resolve_precision(name, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.use_grad_scaler else None
        self.cfg.train.precision = name

    @property
    def guard(self):
        """The divergence guard and out-of-memory backoff (nbtune.engine.guard.Guard), built on first use from
        cfg.train; what it has done (skipped steps, rollbacks, micro-batch size) is in `run.state.guard`."""
        if getattr(self, "_guard", None) is None:
            from nbtune.engine.guard import Guard
            self._guard = Guard(self.cfg.train, self.accelerator.num_processes)
        return self._guard

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.raw_model.parameters() if p.requires_grad)

    def apply_trainable_edit(self, name: str, target: str) -> None:
        """Freeze or unfreeze a group now. Only parameters the optimizer holds can be opened again."""
        apply_trainable_edit(self, name, target)

    def freeze(self, target: str) -> None:
        """Stop training a group ("embeddings", "attention", "ffn", "norm", "head", "layer 3", "all") from the
        next step; checked against the model now, logged as an edit when applied."""
        check_target(self, target)
        self.control.freeze(target)

    def unfreeze(self, target: str) -> None:
        check_target(self, target)
        self.control.unfreeze(target)

    def _set_lr(self, new: float) -> tuple[float, float]:
        return set_lr(self, new)

    def evaluate(self, split: str = "validation") -> dict:
        """Loss and metrics on a split; the result is also sent to the sinks as an eval record."""
        result = loop.evaluate(self, split)
        self.emit({"kind": "eval", "step": self.state.step, "epoch": self.state.epoch, "split": split,
                   "time": time.time(), **result})
        return result

    # ---- sinks ----
    def add_sink(self, sink: MetricSink) -> MetricSink:
        """Attach a sink (a panel's pump, a custom logger); works before or during training."""
        self._user_sinks.append(sink)
        if self._sinks:  # already running: it sees records from the next one on
            self._sinks.append(sink)
        return sink

    def emit(self, record: dict[str, Any]) -> None:
        for sink in self._sinks:
            sink.write(record)

    def _open_sinks(self) -> None:
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml(), encoding="utf-8")
            self._sinks = [JsonlSink(self.run_dir / "metrics.jsonl")]
            if self.cfg.train.tensorboard:
                self._sinks.append(TensorBoardSink(self.run_dir / "tensorboard"))
            if self.cfg.train.progress_bar:
                self._sinks.append(ConsoleSink(self.total_steps, self.state.step))
        self._sinks += self._user_sinks
        self.emit({"kind": "start", "time": time.time(), "config": self.cfg.to_dict(), "device": str(self.device),
                   "precision": self.precision.name, "world_size": self.accelerator.num_processes,
                   "total_steps": self.total_steps, "step": self.state.step, "model": self.cfg.model.name,
                   "dataset": self.cfg.data.dataset, "label_names": self.data.label_names,
                   "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
                   "parameters": {"trainable": self.trainable_count(),
                                  "total": sum(p.numel() for p in self.raw_model.parameters())},
                   "methods": [m.name for m in self.methods]})
        queued, self._queued_records = self._queued_records, []
        for record in queued:
            self.emit(record)

    def queue_record(self, record: dict[str, Any]) -> None:
        """Send a record to the sinks when training next starts (they are closed between trainings)."""
        self._queued_records.append(record)

    def continue_with(self, items: Any, **options: Any) -> dict:
        """Train further on newly labelled rows (pairs, a {text: label} dict or a Dataset), mixed with a replay
        sample of the original rows, then call `start()`. See nbtune.engine.incremental.continue_with."""
        from nbtune.engine.incremental import continue_with
        return continue_with(self, items, **options)

    def lr_find(self, **options: Any):
        """The LR range test (nbtune.tune.lr_find): the loss over an exponential LR sweep and a suggested
        starting LR beside the usual range. The run is unchanged afterwards; call it before training."""
        from nbtune.tune.lr_find import lr_find
        return lr_find(self, **options)

    def launch(self, num_processes: int = 2, **options: Any) -> dict:
        """Train this config in `num_processes` processes (DDP) through accelerate's notebook_launcher and return
        rank 0's summary. The launched processes build their own runs from `self.cfg` (and the dataset this Run
        was built with) and write to `self.run_dir` while nothing has been written there yet, so another cell can
        follow them: `TrainPanel.follow(run.run_dir)`. This Run object is not trained and does not change; load
        the result with `safetensors.torch.load_model(run.raw_model, <run_dir>/checkpoints/<last>/model.safetensors)`.
        Limits (CUDA untouched in this kernel, one process per GPU): nbtune.engine.launch.launch.
        Example: ``run.launch(2)["status"]`` -> 'finished'."""
        from nbtune.engine.launch import launch
        if options.get("dataset") is None and self.source_dataset is not None:
            options["dataset"] = self.source_dataset  # the launched processes need the same rows
        if "run_dir" not in options and not (self.run_dir / "metrics.jsonl").exists():
            options["run_dir"] = self.run_dir
        return launch(self.cfg, num_processes, **options)

    def export(self, format: str = "onnx", quantize: str | None = "int8", output_dir: str | Path | None = None,
               **options: Any):
        """Merge adapters, export to ONNX (and int8), check parity with PyTorch on the test split, time both,
        and write a Triton repository; returns the ExportReport, raises ParityError past a threshold. See
        nbtune.export.pipeline.export_run for the options. Example: ``run.export("onnx", quantize="int8")``."""
        from nbtune.export.pipeline import export_run
        return export_run(self, format, quantize, output_dir, **options)

    def _close_sinks(self) -> None:
        for sink in self._sinks:
            sink.close()
        self._sinks = []

    def _default_run_dir(self) -> Path:
        name = self.cfg.run_name or f"{Path(self.cfg.model.name).name}-{Path(self.cfg.data.dataset).stem}-" \
                                    f"{time.strftime('%Y%m%d-%H%M%S')}"
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list
            name = broadcast_object_list([name])[0]  # every rank writes under rank 0's timestamp
        return Path(self.cfg.output_dir) / name

    # ---- checkpoints ----
    def save_checkpoint(self) -> Path:
        """Write an atomic checkpoint of the current position; safe inside an accumulation window."""
        path = save_run_state(self)
        self.emit({"kind": "checkpoint", "step": self.state.step, "path": str(path), "time": time.time()})
        return path

    def load_checkpoint(self, path: str | Path) -> "Run":
        """Restore weights, optimizer, scheduler, RNG, position and edit log. Refuses a checkpoint whose
        config or dataset differs, listing what differs."""
        load_run_state(self, Path(path))
        return self

    @classmethod
    def resume(cls, path: str | Path, config: RunConfig | None = None, dataset=None, *,
               sinks: Iterable[MetricSink] = ()) -> "Run":
        """A Run rebuilt from a checkpoint directory (or a run directory: its newest complete checkpoint)."""
        path, chosen = Path(path), False
        if (path / "checkpoints").is_dir():
            found = ckpt.latest(path)
            if found is None:
                raise ckpt.CheckpointError(f"{path}: no complete checkpoint under {path / 'checkpoints'}")
            path, chosen = found, True
        saved = ckpt.verify(path)
        if chosen:  # after a crash or a kernel restart: say which checkpoint was chosen, and any newer one skipped
            step = saved["state"]["step"]
            newer = sorted(p.name for p in path.parent.glob("step-*") if p.name > f"step-{step:06d}")
            skipped = f"; skipped incomplete {', '.join(newer)}" if newer else ""
            print(f"nbtune: last complete checkpoint: step {step} ({path}){skipped}; resuming from it",
                  file=sys.stderr)
        run = cls(config or RunConfig.from_dict(saved["config"]), dataset, sinks=sinks, run_dir=path.parent.parent)
        return run.load_checkpoint(path)

    def panel(self, **options: Any):
        """The live training panel in JupyterLab; elsewhere a progress bar and report.html at the end.
        Imported only when called: the engine itself never loads a widget library."""
        from nbtune.ui.panels import open_panel
        return open_panel(self, **options)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Model and tokenizer in Hugging Face format (from_pretrained can load it)."""
        directory = Path(directory)
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.model).save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)
        return directory

    def summary(self) -> dict:
        return {"run_dir": str(self.run_dir), "status": self.state.status, "step": self.state.step,
                "total_steps": self.total_steps, "precision": self.precision.name, "device": str(self.device),
                "results": self.results, "edits": list(self.control.edits), "state": dataclasses.asdict(self.state)}

    def __repr__(self) -> str:
        return (f"Run({self.cfg.model.name!r} on {self.cfg.data.dataset!r}, {self.cfg.task}, step "
                f"{self.state.step}/{self.total_steps}, {self.state.status}, {self.precision.name} on {self.device})")

