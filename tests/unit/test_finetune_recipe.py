"""The fine-tune recipe (models.finetune): its replay covers rain, and a short run works end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import roadside.models.finetune as finetune_module
from roadside.models.finetune import (
    FinetuneConfig,
    LabelledFrame,
    ReplaySampler,
    finetune,
    rendered_frames,
    repeat_factors,
)
from roadside.shared.errors import ConfigError
from roadside.sim.synthetic import SceneConfig

DETECTOR = Path(__file__).resolve().parents[2] / "models" / "detector.onnx"


def test_replay_draws_every_condition_with_heavy_rain_and_no_fog() -> None:
    sampler = ReplaySampler(seed=3, pool=8, max_rain=0.8)
    for _ in range(3):
        image, targets = sampler.sample()
        assert image.shape == (3, 256, 320)
        assert targets.shape[1] == 5
    rainy = [c for c in sampler.drawn if c.rain > 0]
    assert len(sampler.drawn) == 8
    assert len(rainy) == 2  # a quarter of the pool, not 15 % of scenes on average
    assert all(0.3 <= c.rain <= 0.8 for c in rainy)
    assert all(c.fog == 0.0 for c in sampler.drawn)
    lights = sorted(c.light for c in sampler.drawn if c.rain == 0)
    assert lights[0] < 0.35  # night
    assert any(0.4 <= x <= 0.8 for x in lights)  # dusk
    assert lights[-1] >= 0.85  # day


def test_short_finetune_replays_rainy_scenes(monkeypatch: pytest.MonkeyPatch) -> None:
    samplers: list[ReplaySampler] = []

    class Recording(ReplaySampler):
        def __init__(self, seed: int, pool: int = 8, max_rain: float = 0.8) -> None:
            super().__init__(seed, pool=pool, max_rain=max_rain)
            samplers.append(self)

    monkeypatch.setattr(finetune_module, "ReplaySampler", Recording)
    frames = rendered_frames(4, SceneConfig(fog=0.6, spawn_rate=1.2, seed=2), scenes=2)
    config = FinetuneConfig(steps=2, batch_size=4, warmup_steps=1, replay_share=0.5)
    model, stats = finetune(DETECTOR, frames, config)
    assert stats["steps"] == 2.0
    assert np.isfinite(stats["cls"])
    assert np.isfinite(stats["box"])
    assert not model.training
    (sampler,) = samplers
    assert sampler.max_rain == config.replay_rain
    assert any(c.rain >= 0.3 for c in sampler.drawn)


def test_frozen_backbone_stays_put() -> None:
    from roadside.models.finetune import load_onnx_detector

    parent = load_onnx_detector(DETECTOR)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    frames = rendered_frames(2, SceneConfig(fog=0.6, seed=2), scenes=1)
    config = FinetuneConfig(steps=2, batch_size=2, warmup_steps=1, backbone_lr_scale=0.0)
    model, _ = finetune(load_onnx_detector(DETECTOR), frames, config)
    after = model.state_dict()
    # The EMA blends equal values, so only rounding may differ.
    assert all(
        np.allclose(after[k].numpy(), before[k].numpy(), atol=1e-6) for k in before if k.startswith("stem.")
    )
    assert any(
        not np.array_equal(after[k].numpy(), before[k].numpy()) for k in before if k.startswith("cls_head.")
    )


@pytest.mark.parametrize(
    "field", [{"replay_rain": 1.5}, {"backbone_lr_scale": -0.1}, {"repeat_threshold": 1.5}]
)
def test_config_refuses_out_of_range_recipe_settings(field: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        FinetuneConfig(**field)  # type: ignore[arg-type]


def _frame(*classes: int) -> LabelledFrame:
    boxes = np.array([[8.0 + 10 * k, 8.0, 16.0 + 10 * k, 30.0] for k in range(len(classes))], np.float32)
    return LabelledFrame(
        image=np.zeros((48, 64, 3), np.uint8), boxes=boxes.reshape(-1, 4), classes=np.array(classes, np.int64)
    )


def test_repeat_factors_follow_the_rarest_class_in_each_frame() -> None:
    # 100 frames: cars in all, a cyclist (3) in 4, a truck (1) in 25, one frame empty.
    frames = [_frame(0, 3) for _ in range(4)] + [_frame(0, 1) for _ in range(25)]
    frames += [_frame(0) for _ in range(70)] + [_frame()]
    factors = repeat_factors(frames, threshold=1.0)
    assert factors[:4] == pytest.approx([5.0] * 4)  # sqrt(1 / 0.04)
    assert factors[4:29] == pytest.approx([2.0] * 25)  # sqrt(1 / 0.25)
    assert factors[29:99] == pytest.approx([0.99**-0.5] * 70)  # cars are in 99 % of the frames
    assert factors[99] == 1.0  # no boxes
    assert repeat_factors(frames, threshold=0.0) == pytest.approx([1.0] * 100)
    # A class at the threshold is not rare.
    assert repeat_factors(frames, threshold=0.04)[:4] == pytest.approx([1.0] * 4)


def test_mixed_batches_oversample_frames_of_a_rare_class() -> None:
    frames = [_frame(0, 3)] + [_frame(0) for _ in range(19)]  # a cyclist in 5 % of the frames

    def cyclist_share(threshold: float) -> float:
        sampler = finetune_module._MixedSampler(frames, replay_share=0.0, seed=1, repeat_threshold=threshold)
        _, targets = sampler.batch(400)
        return float((targets[..., 0] == 3).any(dim=1).float().mean())

    assert cyclist_share(0.0) < 0.1
    # Factor sqrt(1 / 0.05) = 4.47 for the one frame: drawn 4.47 / (4.47 + 19) = 19 % of the time.
    assert 0.13 < cyclist_share(1.0) < 0.26


def test_a_time_budget_is_spent_when_the_first_steps_are_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake clock: the first five batches take 10 s each, the rest 1 s. Planned once at step 5
    # (10 s a step, 10 s left) the run stopped at step 6; replanned from the latest pace it runs
    # until the 60 s are spent.
    class Clock:
        now = 0.0
        batches = 0

        def monotonic(self) -> float:
            return self.now

    clock = Clock()
    real_batch = finetune_module._MixedSampler.batch

    def timed_batch(self: object, size: int) -> object:
        clock.now += 10.0 if clock.batches < 5 else 1.0
        clock.batches += 1
        return real_batch(self, size)  # type: ignore[arg-type]

    monkeypatch.setattr(finetune_module, "time", clock)
    monkeypatch.setattr(finetune_module._MixedSampler, "batch", timed_batch)
    frames = [_frame(0), _frame(0, 3)]
    config = FinetuneConfig(steps=None, seconds=60.0, batch_size=1, warmup_steps=1, replay_share=0.0)
    _, stats = finetune(DETECTOR, frames, config)
    assert stats["steps"] == 15.0
    assert stats["train_seconds"] == 60.0
