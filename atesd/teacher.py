"""Teacher kinds: whose weights score the student's rollout under the privileged prompt.

- base: the frozen initial policy (a frozen copy; under LoRA the same model with adapters disabled)
- live: the current student weights, under stop-gradient
- ema:  an exponential moving average of the student's weights (slow teacher); under LoRA only the
        adapters are averaged (the frozen base is the student's own), swapped in while scoring
The prototype saw a live teacher collapse to 0% accuracy within 50 steps, so `base` is the
default. This module owns the teacher's weights; it knows nothing of prompts or losses.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedModel

from atesd.models import is_peft


@dataclass(frozen=True)
class TeacherConfig:
    kind: Literal["base", "live", "ema"] = field(
        default="base", metadata={"help": "which weights score as teacher"}
    )
    ema_decay: float = field(
        default=0.99, metadata={"help": "EMA teacher decay per student update, in [0, 1)"}
    )

    def __post_init__(self) -> None:
        if self.kind not in ("base", "live", "ema"):
            raise ValueError(f"teacher kind must be one of base, live, ema; got {self.kind!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


class Teacher:
    """Gives the teacher's final hidden states and output head for a batch; never tracks gradients."""

    def __init__(
        self,
        student: PreTrainedModel,
        cfg: TeacherConfig | None = None,
        copier: Callable[[PreTrainedModel], PreTrainedModel] | None = None,
    ) -> None:
        """`copier` makes the frozen or EMA copy where one is needed (default: a deep copy; under FSDP
        `atesd.distributed.sharded_copy`, which copies and shards one layer at a time)."""
        self.cfg = cfg or TeacherConfig()
        if self.cfg.kind == "ema":
            low = [n for n, p in student.named_parameters()
                   if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16)]  # fmt: skip
            if low:
                raise ValueError(
                    f"teacher kind ema averages the trained weights, which are 16-bit here ({low[0]}: "
                    f"{dict(student.named_parameters())[low[0]].dtype}): each update's (1 - ema_decay) "
                    "share of the difference rounds away below a 16-bit step, so the teacher hardly "
                    "moves; train in float32 (real.hf.dtype=float32), or with LoRA (float32 adapters)"
                )
        self.student = student
        self.uses_adapters = self.cfg.kind == "base" and is_peft(student)
        # an EMA teacher of a LoRA student averages only what trains (the adapters): its frozen base is
        # the student's, so a copy of the whole model (and a lerp over it every update) buys nothing.
        # Not where the output head trains: the engine reads the teacher's head after scoring
        head = student.get_output_embeddings()
        head_trains = head is not None and head.weight.requires_grad
        self.ema: dict[str, torch.Tensor] = {}
        if self.cfg.kind == "ema" and is_peft(student) and not head_trains:
            self.ema = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
        self.copy: PreTrainedModel | None = None
        if (self.cfg.kind == "ema" and not self.ema) or (self.cfg.kind == "base" and not self.uses_adapters):
            self.copy = (copier or copy.deepcopy)(student).eval()
            self.copy.requires_grad_(False)

    @property
    def model(self) -> PreTrainedModel:
        """The model that scores (the student itself for a live or LoRA teacher: inside `scoring` it
        has the teacher's weights, adapters off or the averaged adapters swapped in)."""
        return self.copy if self.copy is not None else self.student

    @contextlib.contextmanager
    def scoring(self) -> Iterator[PreTrainedModel]:
        """Context in which `model` computes teacher outputs (adapters off for a LoRA base teacher, the
        averaged adapters in for a LoRA EMA teacher)."""
        model = self.model
        was_training = model.training
        model.eval()
        try:  # the mode comes back on an error too (a live or LoRA teacher is the student itself)
            with (
                torch.no_grad(),
                model.disable_adapter() if self.uses_adapters else contextlib.nullcontext(),
                self._averaged_adapters(),
            ):
                yield model
        finally:
            model.train(was_training)

    @contextlib.contextmanager
    def _averaged_adapters(self) -> Iterator[None]:
        """A LoRA EMA teacher: the student's adapters hold the averages inside, their own values after
        (on an error too). Scoring precedes the student's forward, so no autograd graph holds them."""
        if not self.ema:
            yield
            return
        params = dict(self.student.named_parameters())
        held = {n: params[n].detach().clone() for n in self.ema}
        try:
            for n, average in self.ema.items():
                params[n].copy_(average)  # under no_grad: scoring entered it
            yield
        finally:
            for n, value in held.items():
                params[n].copy_(value)

    @torch.no_grad()
    def update(self) -> None:
        """After each student optimiser step: move an EMA teacher toward the student."""
        if self.cfg.kind != "ema":
            return
        d = self.cfg.ema_decay
        if self.ema:
            params = dict(self.student.named_parameters())
            for n, t in self.ema.items():
                t.lerp_(params[n].detach(), 1 - d)
            return
        for t, s in zip(self.copy.parameters(), self.student.parameters(), strict=True):
            t.lerp_(s.detach(), 1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that must be checkpointed: the EMA weights (under LoRA the averaged adapters alone); a
        base copy is re-creatable but saved too."""
        if self.ema:
            return dict(self.ema)
        return self.copy.state_dict() if self.copy is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.ema:  # a state of the whole copy (checkpoints before the adapters alone) holds them too
            missing = sorted(set(self.ema) - set(state))
            if missing:
                raise ValueError(f"the teacher state lacks averaged adapter weights: {missing[:3]}")
            for n, t in self.ema.items():
                t.copy_(state[n])
            return
        if self.copy is not None:
            self.copy.load_state_dict(state)
