"""Optimizers and LR schedules checked against their formulas, worked by hand.

Each optimizer takes a step or two on a 3-parameter model (a 1x2 weight that decays and a
bias that does not) with gradients set by hand, in float64, and the result is compared
with the textbook update. Schedules are checked factor by factor.
"""

from __future__ import annotations

import math

import pytest
import torch

from fine_tune_cli.engine.optim import Schedule, build_optimizer, lr_factor, param_groups
from fine_tune_cli.models import FAMILIES
from fine_tune_cli.recipe import OptimSpec, ScheduleSpec, optim_spec

HEADS = ("classifier",)  # the head module WithHead declares, as a model family does
BERT_HEADS = FAMILIES.get("bert").head_modules

W0 = [0.5, -1.0]  # dense.weight (1x2): decays
B0 = 0.25  # dense.bias: never decays
GRADS = [  # two steps of hand-picked gradients: (weight, bias)
    ([0.1, -0.2], 0.3),
    ([-0.4, 0.05], 0.3),
]


class ThreeParams(torch.nn.Module):
    """y = w . x + b: three parameters, one weight matrix and one bias."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(2, 1, dtype=torch.float64)
        with torch.no_grad():
            self.dense.weight.copy_(torch.tensor([W0], dtype=torch.float64))
            self.dense.bias.fill_(B0)


class WithHead(ThreeParams):
    """The same body plus a task head (`classifier`, declared in HEADS)."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.classifier.weight.fill_(2.0)


def train(spec: OptimSpec, steps: int = len(GRADS)) -> tuple[list[float], float]:
    """Apply the first `steps` hand gradients; return (weight, bias) after them."""
    model = ThreeParams()
    optimizer = build_optimizer(model, spec, HEADS)
    for gw, gb in GRADS[:steps]:
        model.dense.weight.grad = torch.tensor([gw], dtype=torch.float64)
        model.dense.bias.grad = torch.tensor([gb], dtype=torch.float64)
        optimizer.step()
    return model.dense.weight.detach()[0].tolist(), float(model.dense.bias.detach())


def per_element(update, wd: float, steps: int = len(GRADS)) -> tuple[list[float], float]:
    """Run a scalar reference `update(p, grads, wd)` on every element; biases get wd=0."""
    weight = [update(W0[i], [g[0][i] for g in GRADS[:steps]], wd) for i in range(2)]
    bias = update(B0, [g[1] for g in GRADS[:steps]], 0.0)
    return weight, bias


def assert_close(got: tuple[list[float], float], want: tuple[list[float], float]) -> None:
    assert got[0] == pytest.approx(want[0], rel=1e-12, abs=1e-14)
    assert got[1] == pytest.approx(want[1], rel=1e-12, abs=1e-14)


# --------------------------------------------------------------------------- adam(w)
def adam_reference(lr: float, b1: float, b2: float, eps: float, decoupled: bool):
    def update(p: float, grads: list[float], wd: float) -> float:
        m = v = 0.0
        for t, g in enumerate(grads, start=1):
            if decoupled:
                p *= 1 - lr * wd  # AdamW: decay the weight itself
            else:
                g += wd * p  # Adam: L2 folded into the gradient
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)  # bias correction
            p -= lr * m_hat / (math.sqrt(v_hat) + eps)
        return p

    return update


def test_adam_first_step_moves_each_parameter_by_lr_against_its_gradient() -> None:
    # Step 1 with bias correction: m_hat = g, v_hat = g^2, so the update is lr*sign(g).
    weight, bias = train(optim_spec(name="adam", lr=0.01, weight_decay=0.0, eps=1e-12), 1)
    assert weight == pytest.approx([0.5 - 0.01, -1.0 + 0.01], abs=1e-10)
    assert bias == pytest.approx(0.25 - 0.01, abs=1e-10)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_two_steps_with_bias_correction_and_weight_decay(name: str) -> None:
    spec = optim_spec(name=name, lr=0.05, weight_decay=0.1, betas=(0.8, 0.95), eps=1e-6)
    ref = adam_reference(0.05, 0.8, 0.95, 1e-6, decoupled=name == "adamw")
    assert_close(train(spec), per_element(ref, wd=0.1))


def test_adamw_decays_weights_but_not_biases() -> None:
    # Zero gradients: Adam's update is 0/(0+eps) = 0, so only the decoupled decay moves.
    model = ThreeParams()
    optimizer = build_optimizer(model, optim_spec(name="adamw", lr=0.1, weight_decay=0.5), HEADS)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert model.dense.weight.detach()[0].tolist() == pytest.approx([0.5 * 0.95, -1.0 * 0.95])
    assert float(model.dense.bias.detach()) == B0


# --------------------------------------------------------------------------- sgd
def sgd_reference(lr: float, momentum: float, nesterov: bool):
    def update(p: float, grads: list[float], wd: float) -> float:
        buf = None
        for g in grads:
            g += wd * p
            buf = g if buf is None else momentum * buf + g
            p -= lr * (g + momentum * buf if nesterov else buf)
        return p

    return update


def test_sgd_plain_step_by_hand() -> None:
    weight, bias = train(optim_spec(name="sgd", lr=0.1, weight_decay=0.0), 1)
    assert weight == pytest.approx([0.5 - 0.01, -1.0 + 0.02])
    assert bias == pytest.approx(0.25 - 0.03)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_two_steps(nesterov: bool) -> None:
    spec = optim_spec(name="sgd", lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    assert_close(train(spec), per_element(sgd_reference(0.1, 0.9, nesterov), wd=0.01))


def test_sgd_nesterov_differs_from_heavy_ball() -> None:
    heavy = train(optim_spec(name="sgd", lr=0.1, momentum=0.9))
    nesterov = train(optim_spec(name="sgd", lr=0.1, momentum=0.9, nesterov=True))
    assert heavy[1] != pytest.approx(nesterov[1])
    # Bias, by hand: heavy ball 0.25 - 0.1*0.3 - 0.1*(0.9*0.3 + 0.3) = 0.163;
    # Nesterov uses g + mu*buf each step: 0.25 - 0.1*0.57 - 0.1*(0.3 + 0.9*0.57) = 0.1117.
    assert heavy[1] == pytest.approx(0.163)
    assert nesterov[1] == pytest.approx(0.1117)


# --------------------------------------------------------------------------- rmsprop
def rmsprop_reference(lr: float, alpha: float, eps: float, momentum: float):
    def update(p: float, grads: list[float], wd: float) -> float:
        square_avg = buf = 0.0
        for g in grads:
            g += wd * p
            square_avg = alpha * square_avg + (1 - alpha) * g * g
            step = g / (math.sqrt(square_avg) + eps)
            if momentum:
                buf = momentum * buf + step
                step = buf
            p -= lr * step
        return p

    return update


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_rmsprop_two_steps(momentum: float) -> None:
    spec = optim_spec(
        name="rmsprop", lr=0.01, alpha=0.9, eps=1e-8, momentum=momentum, weight_decay=0.1
    )
    assert_close(train(spec), per_element(rmsprop_reference(0.01, 0.9, 1e-8, momentum), 0.1))


def test_rmsprop_first_step_by_hand() -> None:
    # v = (1-alpha) g^2, so the step is lr * g / (sqrt(1-alpha)|g|) = lr/sqrt(0.1) * sign(g).
    spec = optim_spec(name="rmsprop", lr=0.01, alpha=0.9, eps=1e-12, weight_decay=0.0)
    weight, bias = train(spec, 1)
    step = 0.01 / math.sqrt(0.1)
    assert weight == pytest.approx([0.5 - step, -1.0 + step])
    assert bias == pytest.approx(0.25 - step)


# --------------------------------------------------------------------------- groups
def test_head_lr_gets_its_own_group() -> None:
    model = WithHead()
    spec = optim_spec(name="sgd", lr=0.1, head_lr=0.5, weight_decay=0.0)
    optimizer = build_optimizer(model, spec, HEADS)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert float(model.classifier.weight.detach()) == pytest.approx(2.0 - 0.5)
    assert model.dense.weight.detach()[0].tolist() == pytest.approx([0.5 - 0.1, -1.0 - 0.1])
    assert float(model.dense.bias.detach()) == pytest.approx(0.25 - 0.1)


def test_without_head_lr_the_head_shares_the_body_lr() -> None:
    groups = param_groups(WithHead(), optim_spec(name="sgd", lr=0.1), HEADS)
    assert {g["lr"] for g in groups} == {0.1}


def tiny_bert() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def test_param_groups_on_bert_exclude_biases_and_layernorm_from_decay() -> None:
    model = tiny_bert()
    spec = optim_spec(name="adamw", lr=1e-3, head_lr=1e-2, weight_decay=0.05)
    groups = param_groups(model, spec, BERT_HEADS)
    by_id = {id(p): g for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(by_id) == len(names)  # every trainable parameter lands in exactly one group
    for name, param in names.items():
        group = by_id[id(param)]
        no_decay = name.endswith(".bias") or "LayerNorm" in name
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
        assert group["lr"] == (1e-2 if name.startswith("classifier.") else 1e-3), name
    # All four (head|body) x (decay|no-decay) combinations occur.
    assert {(g["lr"], g["weight_decay"]) for g in groups} == {
        (1e-3, 0.05),
        (1e-3, 0.0),
        (1e-2, 0.05),
        (1e-2, 0.0),
    }
    optimizer = build_optimizer(model, spec, BERT_HEADS)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sorted(g["lr"] for g in optimizer.param_groups) == [1e-3, 1e-3, 1e-2, 1e-2]


def test_heads_are_declared_top_level_modules_not_substrings() -> None:
    """A body module whose name contains a head's name (T5's `decoder`, a `score_bias`)
    stays in the body; wrappers' prefixes (DDP, torch.compile) do not hide a head."""
    from fine_tune_cli.engine.optim import is_head_param

    heads = ("classifier", "lm_head")
    assert is_head_param("classifier.weight", heads)
    assert is_head_param("module.classifier.weight", heads)
    assert is_head_param("_orig_mod.module.lm_head.weight", heads)
    assert not is_head_param("decoder.block.0.layer.0.weight", heads)
    assert not is_head_param("encoder.classifier_norm.weight", heads)
    assert not is_head_param("body.classifier.weight", heads)
    assert FAMILIES.get("vit").head_modules == ("classifier", "decoder")


def test_frozen_parameters_are_left_out() -> None:
    model = WithHead()
    model.dense.weight.requires_grad_(False)
    groups = param_groups(model, optim_spec(name="sgd", lr=0.1), HEADS)
    params = [p for g in groups for p in g["params"]]
    assert all(p is not model.dense.weight for p in params)
    assert len(params) == 2


# --------------------------------------------------------------------------- schedules
def factors(spec: ScheduleSpec, total: int, steps: int | None = None) -> list[float]:
    f = lr_factor(spec, total)
    return [f(s) for s in range(total + 1 if steps is None else steps)]


def test_constant_schedule_is_flat_after_warmup() -> None:
    assert factors(ScheduleSpec(name="constant"), 5) == [1.0] * 6
    assert factors(ScheduleSpec(name="constant", warmup_steps=4), 6) == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    )


def test_linear_schedule_with_warmup_steps_and_floor() -> None:
    got = factors(ScheduleSpec(name="linear", warmup_steps=2, min_lr_ratio=0.1), 10, 13)
    # warmup (s+1)/2; then 0.1 + 0.9 * (1 - (s-2)/8), held at the floor past the end.
    want = [0.5, 1.0] + [0.1 + 0.9 * (1 - (s - 2) / 8) for s in range(2, 11)] + [0.1, 0.1]
    assert got == pytest.approx(want)
    assert got[6] == pytest.approx(0.55)  # halfway through the decay


def test_linear_schedule_decays_to_zero_without_floor() -> None:
    assert factors(ScheduleSpec(name="linear"), 4) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_cosine_schedule_with_warmup_ratio_and_floor() -> None:
    spec = ScheduleSpec(name="cosine", warmup_ratio=0.2, min_lr_ratio=0.2)  # 20% of 10 = 2
    got = factors(spec, 10)
    want = [0.5, 1.0] + [
        0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 11)
    ]
    assert got == pytest.approx(want)
    assert got[6] == pytest.approx(0.6)  # cos(pi/2) = 0: halfway between peak and floor
    assert got[10] == pytest.approx(0.2)


def test_warmup_ratio_rounds_down_to_whole_steps() -> None:
    # int(0.3 * 7) = 2 warmup steps.
    got = factors(ScheduleSpec(name="constant", warmup_ratio=0.3), 7, 3)
    assert got == pytest.approx([0.5, 1.0, 1.0])


def test_schedule_drives_every_param_group_including_the_head() -> None:
    model = WithHead()
    optimizer = build_optimizer(model, optim_spec(name="sgd", lr=0.1, head_lr=1.0), HEADS)
    spec = ScheduleSpec(name="linear", warmup_steps=2)
    schedule = Schedule(optimizer, spec, total_steps=6)
    f = lr_factor(spec, 6)
    for step in range(7):
        lrs = sorted(g["lr"] for g in optimizer.param_groups)
        assert lrs == pytest.approx([0.1 * f(step), 0.1 * f(step), 1.0 * f(step)]), step
        optimizer.step()
        schedule.step()


def test_schedule_state_round_trip_continues_identically() -> None:
    spec = ScheduleSpec(name="cosine", warmup_steps=1)
    opt_a = build_optimizer(ThreeParams(), optim_spec(name="sgd", lr=0.1), HEADS)
    a = Schedule(opt_a, spec, total_steps=8)
    for _ in range(3):
        opt_a.step()
        a.step()
    opt_b = build_optimizer(ThreeParams(), optim_spec(name="sgd", lr=0.1), HEADS)
    b = Schedule(opt_b, spec, total_steps=8)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        opt_a.step()
        a.step()
        opt_b.step()
        b.step()
        assert b.last_lr() == a.last_lr()
    assert a.last_lr() == pytest.approx(0.1 * lr_factor(spec, 8)(6))


def test_plateau_schedule_shrinks_lr_after_patience_bad_evals() -> None:
    optimizer = build_optimizer(ThreeParams(), optim_spec(name="sgd", lr=0.1), HEADS)
    schedule = Schedule(optimizer, ScheduleSpec(name="plateau", patience=1, factor=0.5), 10)

    def step() -> float:
        optimizer.step()
        schedule.step()
        return schedule.last_lr()

    assert step() == pytest.approx(0.1)
    schedule.observe(1.0, "min")  # first eval: best
    schedule.observe(1.1, "min")  # 1 bad eval: not more than patience
    assert step() == pytest.approx(0.1)
    schedule.observe(1.05, "min")  # 2 bad evals > patience 1: halve
    assert step() == pytest.approx(0.05)
    schedule.observe(0.9, "min")  # improvement resets the count
    schedule.observe(0.95, "min")
    assert step() == pytest.approx(0.05)
    schedule.observe(0.95, "min")  # equal is not better
    assert step() == pytest.approx(0.025)
    restored = Schedule(
        build_optimizer(ThreeParams(), optim_spec(name="sgd", lr=0.1), HEADS),
        ScheduleSpec(name="plateau", patience=1, factor=0.5),
        10,
    )
    restored.load_state_dict(schedule.state_dict())
    assert restored.plateau_scale == 0.25
    assert restored.last_lr() == pytest.approx(0.025)


def test_plateau_in_max_mode_and_other_schedules_ignore_evals() -> None:
    optimizer = build_optimizer(ThreeParams(), optim_spec(name="sgd", lr=0.1), HEADS)
    plateau = Schedule(optimizer, ScheduleSpec(name="plateau", patience=0, factor=0.1), 10)
    plateau.observe(0.8, "max")
    plateau.observe(0.9, "max")  # higher is better here
    assert plateau.plateau_scale == 1.0
    plateau.observe(0.85, "max")
    assert plateau.plateau_scale == pytest.approx(0.1)

    constant = Schedule(
        build_optimizer(ThreeParams(), optim_spec(name="sgd", lr=0.1), HEADS),
        ScheduleSpec(name="constant"),
        10,
    )
    for value in (1.0, 2.0, 3.0, 4.0):
        constant.observe(value, "min")
    assert constant.plateau_scale == 1.0
