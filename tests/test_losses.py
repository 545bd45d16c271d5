"""Each divergence against a value computed by hand on a 3-token vocabulary."""

import math

import pytest
import torch

from sdft_lab.losses import (STAT_NAMES, DivergenceConfig, chunked_token_losses, divergence, loss_mask, masked_mean,
                             token_stats)

P_T = [0.7, 0.2, 0.1]  # teacher
P_S = [0.4, 0.45, 0.15]  # student


def logits(p):
    return torch.log(torch.tensor([p], dtype=torch.float64)) + 3.0  # any shift: softmax is invariant


def value(kind, **kw):
    return divergence(logits(P_T), logits(P_S), DivergenceConfig(kind=kind, **kw),
                      tokens=torch.tensor([1])).item()


def test_forward_kl():
    hand = 0.7 * math.log(0.7 / 0.4) + 0.2 * math.log(0.2 / 0.45) + 0.1 * math.log(0.1 / 0.15)
    assert value("forward_kl") == pytest.approx(hand, abs=1e-6)


def test_reverse_kl():
    hand = 0.4 * math.log(0.4 / 0.7) + 0.45 * math.log(0.45 / 0.2) + 0.15 * math.log(0.15 / 0.1)
    assert value("reverse_kl") == pytest.approx(hand, abs=1e-6)


def test_jsd_midpoint_and_endpoints():
    m = [0.5 * (t + s) for t, s in zip(P_T, P_S)]  # β = 0.5
    kl_tm = sum(t * math.log(t / mi) for t, mi in zip(P_T, m))
    kl_sm = sum(s * math.log(s / mi) for s, mi in zip(P_S, m))
    assert value("jsd", alpha=0.5) == pytest.approx(0.5 * kl_tm + 0.5 * kl_sm, abs=1e-6)
    m = [0.25 * t + 0.75 * s for t, s in zip(P_T, P_S)]  # β = 0.25: M = β·p_T + (1−β)·p_S
    kl_tm = sum(t * math.log(t / mi) for t, mi in zip(P_T, m))
    kl_sm = sum(s * math.log(s / mi) for s, mi in zip(P_S, m))
    assert value("jsd", alpha=0.25) == pytest.approx(0.25 * kl_tm + 0.75 * kl_sm, abs=1e-6)
    assert value("jsd", alpha=0.0) == pytest.approx(value("forward_kl"), abs=1e-9)
    assert value("jsd", alpha=1.0) == pytest.approx(value("reverse_kl"), abs=1e-9)


def test_top_k_with_tail_bucket_on_either_side():
    # teacher side, k=1: support {token 0} plus the tail → T = [0.7, 0.3], S = [0.4, 0.6]
    hand = 0.7 * math.log(0.7 / 0.4) + 0.3 * math.log(0.3 / 0.6)
    assert value("forward_kl", top_k=1, top_k_side="teacher") == pytest.approx(hand, abs=1e-6)
    # student side, k=1: the student's top token is 1 → T = [0.2, 0.8], S = [0.45, 0.55]
    hand = 0.2 * math.log(0.2 / 0.45) + 0.8 * math.log(0.8 / 0.55)
    assert value("forward_kl", top_k=1, top_k_side="student") == pytest.approx(hand, abs=1e-6)
    # k = vocabulary size: exactly the full divergence (the tail is empty)
    assert value("reverse_kl", top_k=3) == pytest.approx(value("reverse_kl"), abs=1e-6)


def test_sampled_token_value_and_reinforce_gradient():
    s = logits(P_S).requires_grad_(True)
    out = divergence(logits(P_T), s, DivergenceConfig(kind="sampled"), tokens=torch.tensor([1]))
    est = math.log(0.45 / 0.2)
    assert out.item() == pytest.approx(est, abs=1e-6)
    out.sum().backward()
    # ∇_logits of est·log p_S(y) is est·(onehot(y) − p_S)
    expected = est * (torch.tensor([0.0, 1.0, 0.0]) - torch.tensor(P_S))
    assert torch.allclose(s.grad[0].float(), expected, atol=1e-6)


def test_teacher_gets_no_gradient():
    t = logits(P_T).requires_grad_(True)
    s = logits(P_S).requires_grad_(True)
    divergence(t, s).sum().backward()
    assert t.grad is None and s.grad is not None


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "sampled"])
def test_chunked_equals_unchunked_values_and_gradients(kind):
    torch.manual_seed(0)
    B, T, H, V = 2, 5, 8, 11
    head = torch.nn.Linear(H, V, bias=False)
    s_h = torch.randn(B, T, H, requires_grad=True)
    t_h = torch.randn(B, T, H)
    tokens = torch.randint(0, V, (B, T))
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    cfg = DivergenceConfig(kind=kind)

    direct = divergence(head(t_h), head(s_h), cfg, tokens) * mask
    ref = masked_mean(direct, mask)
    ref_grad, = torch.autograd.grad(ref, s_h)
    for chunk in (1, 2, 3, 100):
        per_token, stats = chunked_token_losses(s_h, t_h, head, tokens, mask,
                                                DivergenceConfig(kind=kind, chunk_tokens=chunk))
        assert torch.allclose(per_token, direct, atol=1e-5)
        got = masked_mean(per_token, mask)
        grad, = torch.autograd.grad(got, s_h)
        assert torch.allclose(got, ref, atol=1e-6) and torch.allclose(grad, ref_grad, atol=1e-6)
        assert (stats["kl"][mask == 0] == 0).all() and (stats["kl"][mask == 1] >= 0).all()
        # the statistics reuse the loss's log-probs (and its value, for forward KL): the same as made alone
        alone = token_stats(head(t_h), head(s_h), tokens)
        for k, name in enumerate(STAT_NAMES):
            assert torch.allclose(stats[name][mask == 1], alone[..., k][mask == 1], atol=1e-5), name


def test_token_stats_by_hand():
    kl_ts = sum(t * math.log(t / s) for t, s in zip(P_T, P_S))
    entropy = -sum(s * math.log(s) for s in P_S)
    got = token_stats(logits(P_T), logits(P_S), torch.tensor([1]))[0].tolist()
    assert got == pytest.approx([kl_ts, math.log(0.2), math.log(0.45), entropy], abs=1e-6)


def test_skip_first_and_padding_masks():
    values = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 9.0, 9.0], [7.0, 9.0, 9.0, 9.0]])
    completion = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])  # 9s are padding
    mask = loss_mask(completion, skip_first=1)
    assert mask.tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    # seq 1: (2+3)/2 = 2.5; seq 2: 5; seq 3 has no tokens left and is left out of the mean
    assert masked_mean(values, mask).item() == pytest.approx((2.5 + 5.0) / 2)
    assert masked_mean(values, loss_mask(completion, 0)).item() == pytest.approx((2.0 + 4.5 + 7.0) / 3)


@pytest.mark.parametrize("bad, message", [
    (dict(kind="kl"), "divergence kind must be one of"), (dict(alpha=1.5), r"alpha must lie in \[0, 1\]"),
    (dict(alpha=-0.1), r"alpha must lie in \[0, 1\]"), (dict(top_k=0), "top_k must be None or ≥ 1"),
    (dict(top_k_side="both"), "top_k_side must be 'teacher' or 'student'"),
    (dict(kind="sampled", top_k=5), "not used with 'sampled'"), (dict(chunk_tokens=0), "chunk_tokens must be ≥ 1")])
def test_invalid_configs_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        DivergenceConfig(**bad)


def test_top_k_larger_than_vocabulary_is_a_clear_error():
    with pytest.raises(ValueError, match="larger than the vocabulary"):
        value("forward_kl", top_k=4)
