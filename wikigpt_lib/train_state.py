"""What a training run saves and restores, so that a resumed run is the run that stopped: step
counters, the optimizer and gradient scaler, every random number generator, and the metrics.

`Checkpointing` is a part of the `Trainer` (train.py), kept in its own file: it writes
checkpoints through `wikigpt_lib.checkpoint` and reads them back in `Trainer.resume`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from wikigpt_lib.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from wikigpt_lib.config import TrainConfig


class Checkpointing:
    """Checkpoint writing and exact resuming for the Trainer (which sets every attribute used
    here: step, tokens_seen, optimizer, scaler, generator, run_dir, log, ...)."""

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "evals_without_improvement": self.evals_without_improvement,
            "elapsed_s": round(self.elapsed_s, 3),
            "world_size": self.world_size,
            "cpu_threads": torch.get_num_threads(),
        }

    def _trainer_state(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": cuda,
            "rng_batches": self.generator.get_state(),
        }

    def save_checkpoint(self, is_best: bool = False) -> Path | None:
        """Write a checkpoint into run_dir (main process only); returns its folder."""
        if self.run_dir is None or not self.is_main:
            return None
        self._checkpoint_step = self.step
        self.last_checkpoint = save_checkpoint(
            self.run_dir,
            model=self.model,
            train_config=self.config.to_dict(),
            state=self._state(),
            trainer_state=self._trainer_state(),
            tokenizer=self.tokenizer_name,
            data=self.data_name,
            is_best=is_best,
        )
        return self.last_checkpoint

    def load_trainer_state(self, state: dict[str, Any], trainer_state: dict[str, Any]) -> None:
        """Restore step counters, optimizer, scaler and RNG states saved by save_checkpoint."""
        saved_world = state.get("world_size", 1)
        if saved_world != self.world_size:
            raise CheckpointError(
                f"this run was trained with {saved_world} process(es) and is resumed with "
                f"{self.world_size}: the batches would differ. Resume with the same number."
            )
        threads = state.get("cpu_threads")
        if self.device.type == "cpu" and threads and threads != torch.get_num_threads():
            # CPU kernels split their sums across threads, so another thread count rounds
            # differently (about 1e-9 after a few steps, growing): train on as many as before.
            warnings.warn(
                f"this run was trained with {threads} CPU threads and this process has "
                f"{torch.get_num_threads()}: using {threads}, so that the resumed run is "
                "bit for bit the run that was interrupted.",
                stacklevel=2,
            )
            torch.set_num_threads(threads)
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.best_val_loss = state.get("best_val_loss")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.optimizer.load_state_dict(trainer_state["optimizer"])
        self.scaler.load_state_dict(trainer_state["scaler"])
        self.generator.set_state(trainer_state["rng_batches"])
        torch.set_rng_state(trainer_state["rng_torch"])
        if trainer_state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(trainer_state["rng_cuda"])

    @classmethod
    def resume(
        cls,
        run_dir: str | os.PathLike,
        train_data: Any,
        val_data: Any,
        *,
        callbacks: Sequence[Callable[[Any, dict[str, Any]], None]] = (),
        **overrides: Any,
    ) -> Any:
        """A Trainer that continues the run in `run_dir` from its latest checkpoint, exactly:
        the same batches, dropout masks and updates as if it had never stopped (a Trainer: this
        is its classmethod). `overrides` change TrainConfig fields (e.g. max_steps=2000 to train on, or progress=False)."""
        run_dir = Path(run_dir)
        ckpt = load_checkpoint(resolve_checkpoint(run_dir, "latest"))
        config = TrainConfig.from_dict({**ckpt.train_config, **overrides})
        model = ckpt.build_model().train()  # with its LoRA adapters, if it had some
        trainer = cls(
            model,
            train_data,
            val_data,
            config,
            run_dir=run_dir,
            tokenizer_name=ckpt.tokenizer,
            data_name=ckpt.data,
            callbacks=callbacks,
        )
        trainer.load_trainer_state(ckpt.state, ckpt.trainer_state(map_location="cpu"))
        trainer.last_checkpoint, trainer._checkpoint_step = ckpt.path, trainer.step
        trainer._restore_history()
        return trainer

    def _restore_history(self) -> None:
        """Reload metrics up to the checkpoint; drop records of steps that will be redone."""
        self.history = self.log.restore(self.step)
