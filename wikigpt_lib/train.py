"""The training loop: one optimizer step after another, with accumulation, clipping, mixed
precision, evaluation, early stopping, checkpoints, exact resuming, clean stops on signals, and
DDP across GPUs.

The `Trainer` knows nothing of GPT. It needs a model whose `forward(x, y)` returns
`(logits, loss)` (and, for a checkpoint, a `config`), a source of batches, and a TrainConfig.
A source of batches is a 1-D array of token ids (pretraining: `windows.TokenWindows` cuts it
into windows), or any object with `step_batches(step, config, rank, world_size, generator)`
and `eval_batches(batch_size)`, such as chat's `ConversationBatches` (padded or packed
conversations). Chat fine-tuning runs on this same loop.

    model_cfg, train_cfg = train_preset("cpu")
    result = train_model(model_cfg, train_cfg, train_ids, val_ids, run_dir="runs/cpu")
    result = Trainer.resume("runs/cpu", train_ids, val_ids).fit()   # after a crash or Ctrl-C
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wikigpt_lib.base import unwrap_model
from wikigpt_lib.config import GPTConfig, TrainConfig, train_preset
from wikigpt_lib.device import pick_device, pick_precision
from wikigpt_lib.metrics import RunLog, loss_sums
from wikigpt_lib.model import GPT
from wikigpt_lib.optim import configure_optimizer, lr_at, set_lr
from wikigpt_lib.runtime import (
    StopRequest,
    all_reduce_sum,
    dist_env,
    join_process_group,
    leave_process_group,
)
from wikigpt_lib.train_state import Checkpointing
from wikigpt_lib.windows import as_batch_source

__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainingDivergedError", "train_model",
           "train_preset"]  # fmt: skip


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the weights were left as they were before the step."""


@dataclass
class TrainResult:
    run_dir: Path | None
    steps: int
    tokens_seen: int
    best_val_loss: float | None
    history: list[dict[str, Any]]
    stopped: str  # "max_steps", "early_stop" or "interrupted"
    signal: int | None = None  # the signal that interrupted the run (None: Ctrl-C in code)


class Trainer(Checkpointing):
    """Trains `model` on a source of batches. Nothing is written unless `run_dir` is given.

    train_data / val_data: 1-D arrays of token ids (as `tokenize_split` returns), or batch
    sources (see the module's docstring); val_data may be None (no evaluation).
    callbacks: functions `cb(trainer, record)` called after every optimizer step; raising
    KeyboardInterrupt from one stops the run as Ctrl-C does (checkpoint saved, then return).

    Seeding: batches are drawn from a generator seeded with config.seed, and the global torch
    RNG (dropout masks) is reseeded with config.seed + rank, so a run is reproducible whatever
    random numbers were drawn before. With dropout, DDP runs therefore differ from a
    single-process run (each process has its own masks); without it they match.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Any,
        val_data: Any,
        config: TrainConfig,
        *,
        run_dir: str | os.PathLike | None = None,
        tokenizer_name: str = "wikitext2",
        data_name: str = "",
        callbacks: Sequence[Callable[[Trainer, dict[str, Any]], None]] = (),
    ) -> None:
        self.config = cfg = config
        self.rank, self.local_rank, self.world_size = dist_env()
        self.distributed = self.world_size > 1
        self.is_main = self.rank == 0
        self._owns_process_group = False
        if self.distributed:
            self.device, self._owns_process_group = join_process_group(cfg.device, self.local_rank)
        else:
            self.device = pick_device(cfg.device)
        self.precision = pick_precision(self.device, cfg.precision)
        self.block_size = unwrap_model(model).config.block_size
        if train_data is None:
            raise TypeError("train_data is required: token ids or a batch source.")
        self.train_data = as_batch_source(train_data, self.block_size, "train_data")
        self.val_data = as_batch_source(val_data, self.block_size, "val_data")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.tokenizer_name, self.data_name = tokenizer_name, data_name
        self.callbacks = list(callbacks)

        self.model = unwrap_model(model).to(self.device)  # the plain model: saved, evaluated
        self.forward_model: nn.Module = self.model  # what the training step calls
        if cfg.compile:
            self.forward_model = torch.compile(self.model)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.forward_model, device_ids=ids)
        self.optimizer = configure_optimizer(self.model, cfg, self.device.type)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.use_grad_scaler)
        # Batches come from their own generator: evaluation, dropout or user code drawing
        # random numbers cannot shift which windows training sees.
        self.generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed + self.rank)  # dropout masks

        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss: float | None = None
        self.evals_without_improvement = 0
        self.elapsed_s = 0.0  # training time over all sessions of this run
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        main_dir = self.run_dir if self.is_main else None  # only rank 0 writes
        self.log = RunLog(main_dir, tensorboard=cfg.tensorboard)
        self._checkpoint_step: int | None = None
        self._phase: str | None = None  # where train_step is: "gradients", "update" or None
        self._rewind: tuple[torch.Tensor, torch.Tensor] | None = None
        self._step_tokens = 0

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step when every batch is full windows (pretraining)."""
        c = self.config
        return c.batch_size * c.grad_accum_steps * self.world_size * self.block_size

    # -- one step ------------------------------------------------------------------------

    def train_step(self) -> float:
        """One optimizer step over grad_accum_steps micro-batches; returns the mean loss.

        Raises TrainingDivergedError (weights untouched) if the loss is NaN or infinite.
        """
        c = self.config
        # If a hard interrupt lands mid-step, fit() rewinds to this point before saving.
        self._rewind = (self.generator.get_state(), torch.get_rng_state())
        self._phase = "gradients"
        self.forward_model.train()
        lr = lr_at(self.step, c)
        set_lr(self.optimizer, lr)
        micro_batches = self.train_data.step_batches(
            self.step, c, self.rank, self.world_size, self.generator
        )
        sums = torch.zeros(2, device=self.device)  # loss, tokens
        for i, (x, y) in enumerate(micro_batches):
            x, y = self._to_device(x), self._to_device(y)
            last = i == len(micro_batches) - 1
            # DDP: average gradients across processes only once, after the last micro-batch.
            sync = (
                self.forward_model.no_sync()
                if self.distributed and not last
                else contextlib.nullcontext()
            )
            with sync:
                with self.precision.autocast():
                    _, loss = self.forward_model(x, y)
                # Dividing by the number of micro-batches makes the summed gradients those of
                # the mean loss over the whole batch. The library's one backward pass.
                self.scaler.scale(loss / len(micro_batches)).backward()
            sums[0] += loss.detach()
            sums[1] += x.numel()
        sums[0] /= len(micro_batches)
        if self.distributed:
            all_reduce_sum(sums)
            sums[0] /= self.world_size
        loss_value, tokens = sums.tolist()  # the one host sync per step
        if not math.isfinite(loss_value):
            self._diverged(f"the training loss is {loss_value}", lr)
        if c.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            if not self.precision.use_grad_scaler and not torch.isfinite(norm):
                self._diverged(f"the gradient norm is {float(norm)}", lr)
        self._phase = "update"  # from here on the weights change: no rewinding
        self.scaler.step(self.optimizer)  # with fp16, skips steps whose gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += int(tokens)
        self._step_tokens = int(tokens)
        self._phase = None
        return loss_value

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":  # pinned memory lets the copy overlap compute
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _diverged(self, what: str, lr: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        where = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint is not None
            else "no checkpoint was written yet"
        )
        raise TrainingDivergedError(
            f"{what} at step {self.step + 1} (learning rate {lr:.3g}); training stopped and "
            f"{where}. Try a lower learning rate (--lr), a longer warmup, gradient clipping, "
            "or precision fp32."
        )

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self) -> float:
        """Validation loss over the first eval_batches global batches of val_data (all of it
        with None), shared out across processes: N processes with batch B score the same
        windows as one process with batch N*B."""
        if self.val_data is None:
            raise ValueError("this Trainer has no val_data to evaluate on.")
        c = self.config
        batches = self.val_data.eval_batches(c.batch_size)
        if c.eval_batches is not None:  # counted in global batches, as for training
            limit = c.eval_batches * self.world_size
            batches = (b for _, b in zip(range(limit), batches, strict=False))
        mine = (b for i, b in enumerate(batches) if i % self.world_size == self.rank)
        total, count = loss_sums(self.model, mine, self.precision)
        if self.distributed:
            sums = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            total, count = all_reduce_sum(sums).tolist()
        return total / count

    # -- the loop ------------------------------------------------------------------------

    def _record(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.log.write(record)

    def _progress_bar(self):
        from tqdm.auto import tqdm

        show = self.config.progress and self.is_main
        return tqdm(total=self.config.max_steps, initial=self.step, disable=not show, unit="step")

    def _after_eval(self, val_loss: float) -> bool:
        """Record an evaluation, checkpoint, and say whether to stop early."""
        improved = self.best_val_loss is None or val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.evals_without_improvement = val_loss, 0
        else:
            self.evals_without_improvement += 1
        self._record(
            {
                "step": self.step,
                "split": "val",
                "loss": round(val_loss, 6),
                "ppl": round(math.exp(min(val_loss, 50.0)), 4),
                "elapsed_s": round(self.elapsed_s, 3),
            }
        )
        self.save_checkpoint(is_best=improved)
        patience = self.config.patience
        return patience is not None and self.evals_without_improvement >= patience

    def _log_line(self, train_loss: float, val_loss: float | None) -> None:
        """Without a progress bar, one line per evaluation, so a log file shows the run going."""
        if self.config.progress or not self.is_main:
            return
        val = "" if val_loss is None else f" | val loss {val_loss:.4f}"
        print(
            f"step {self.step}/{self.config.max_steps} | train loss {train_loss:.4f}{val} | "
            f"lr {lr_at(self.step - 1, self.config):.2e} | {self.elapsed_s:.0f} s",
            flush=True,
        )

    def _save_after_interrupt(self, signum: int | None = None) -> None:
        if self._phase == "gradients":  # half-way through a step: undo its side effects
            self.optimizer.zero_grad(set_to_none=True)
            self.generator.set_state(self._rewind[0])
            torch.set_rng_state(self._rewind[1])
            self._phase = None
        if self._phase == "update":  # the weights are half updated: don't save them
            if self.is_main:
                print(
                    f"\nInterrupted during an optimizer update: not saved; the latest "
                    f"checkpoint is {self.last_checkpoint}."
                )
            return
        saved = self.save_checkpoint()
        if saved is not None:
            what = signal.Signals(signum).name if signum else "Interrupted"
            print(f"\n{what} at step {self.step}: checkpoint saved to {saved}.", flush=True)

    def fit(self) -> TrainResult:
        """Train until max_steps, early stopping, or Ctrl-C (which saves a checkpoint first).

        Evaluates every eval_interval steps and at the end; keeps the best checkpoint (lowest
        validation loss) and the latest. Returns what happened as a TrainResult.
        """
        c = self.config
        self.log.open(self.step)
        stopped, signum = "max_steps", None
        bar = self._progress_bar()
        window_tokens, window_start = 0, time.perf_counter()
        try:
            with StopRequest() as stop:
                while self.step < c.max_steps:
                    t0 = time.perf_counter()
                    loss = self.train_step()
                    self.elapsed_s += time.perf_counter() - t0
                    window_tokens += self._step_tokens
                    record = {"step": self.step, "split": "train", "loss": loss}
                    record["lr"] = lr_at(self.step - 1, c)
                    if self.step % c.log_interval == 0 or self.step == c.max_steps:
                        now = time.perf_counter()
                        record["tokens_per_s"] = round(window_tokens / (now - window_start), 1)
                        record["elapsed_s"] = round(self.elapsed_s, 3)
                        self._record({**record, "loss": round(loss, 6)})
                        window_tokens, window_start = 0, now
                        bar.set_postfix(
                            loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:,.0f}",
                        )  # fmt: skip
                    bar.update(1)
                    for callback in self.callbacks:
                        callback(self, record)
                    if self.val_data is not None and (
                        self.step % c.eval_interval == 0 or self.step == c.max_steps
                    ):
                        val_loss = self.evaluate()
                        self._log_line(loss, val_loss)
                        if self._after_eval(val_loss):
                            stopped = "early_stop"
                            break
                        window_start = time.perf_counter()  # keep eval out of tokens/s
                    elif self.val_data is None and self.step % c.eval_interval == 0:
                        self._log_line(loss, None)
                        self.save_checkpoint()
                    if stop.requested:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            stopped, signum = "interrupted", stop.signum
            self._save_after_interrupt(signum)
        finally:
            bar.close()
            self.log.flush()
        saved_step = None if self.last_checkpoint is None else self._checkpoint_step
        if stopped == "max_steps" and self.val_data is None and saved_step != self.step:
            self.save_checkpoint()
        return TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            tokens_seen=self.tokens_seen,
            best_val_loss=self.best_val_loss,
            history=list(self.history),
            stopped=stopped,
            signal=signum,
        )

    def close(self, wait: bool = True) -> None:
        """Leave the process group this trainer joined (a no-op on one process).

        Call it once training is over and before the process exits: every rank waits for
        the others, then the group is torn down. Skipping it lets gloo's threads die with
        the interpreter, which can abort the process ("terminate called without an
        active exception"). After an error pass wait=False: the other ranks may never
        reach the barrier. A group the caller created is left to the caller.
        """
        if not self._owns_process_group:
            return
        leave_process_group(wait)
        self._owns_process_group = False

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # `with Trainer(...) as t: t.fit()` closes on the way out; after an error it does
        # not wait for the other ranks, which may have died.
        self.close(wait=exc_type is None)


def train_model(
    model_config: GPTConfig,
    train_config: TrainConfig,
    train_data: Any,
    val_data: Any,
    *,
    run_dir: str | os.PathLike | None = None,
    **trainer_kwargs: Any,
) -> TrainResult:
    """Build a GPT (seeded with train_config.seed) and train it; see `Trainer`."""
    torch.manual_seed(train_config.seed)
    model = GPT(model_config)
    with Trainer(model, train_data, val_data, train_config, run_dir=run_dir, **trainer_kwargs) as t:
        return t.fit()
