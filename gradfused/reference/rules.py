"""docs/algorithms.md §2, one function per rule, with the signature of the fused op of the same name."""
from __future__ import annotations

import math

import torch

from .pipeline import run_pipeline, sqrt


# Each function's `**pipeline` are the keyword arguments of run_pipeline (maximize, grad_scale, ...).
def persistent_sgd_(params, grads, momentum_buffers, state_steps, *, lr, decay, dampening, weight_decay,
                    decoupled_weight_decay, nesterov, buffer_starts_at_grad=False, **pipeline):
    if not momentum_buffers and params and decay != 0:
        raise RuntimeError(f"gradfused.persistent_sgd_: momentum_buffers is empty, which only decay = 0 allows "
                           f"(got decay={decay})")

    def rule(g, st, t, i):
        if not momentum_buffers:  # plain SGD, no state
            return g
        buf = st[0]
        if buffer_starts_at_grad and t == 1:  # torch.optim.SGD's first step
            buf.copy_(g)
        else:
            buf.copy_(decay * buf + (1 - dampening) * g)
        return g + decay * buf if nesterov else buf

    run_pipeline(params, grads, [momentum_buffers] if momentum_buffers else [], state_steps, rule, lr=lr,
                 weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay, **pipeline)


def _adam_moments(g, m, v, beta1, beta2):
    m.copy_(beta1 * m + (1 - beta1) * g)
    v.copy_(beta2 * v + (1 - beta2) * g * g)


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr, beta1, beta2, eps,
          weight_decay, decoupled_weight_decay, amsgrad, **pipeline):
    def rule(g, st, t, i):
        m, v = st[0], st[1]
        _adam_moments(g, m, v, beta1, beta2)
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        v_hat = v
        if amsgrad:
            st[2] = st[2].maximum(v)  # a new tensor, not in place: autograd keeps the old max (differentiable)
            v_hat = st[2]
        # (m / bc1) / (sqrt(v̂) / sqrt(bc2) + eps), with the divisions by scalars as multiplications by
        # their reciprocals, as the kernels do (NOTE: [the kernels round as the reference does])
        return (m * (1 / bc1)) / (sqrt(v_hat) * (1 / math.sqrt(bc2)) + eps)

    states = [exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    run_pipeline(params, grads, states, state_steps, rule, lr=lr, weight_decay=weight_decay,
                 decoupled_weight_decay=decoupled_weight_decay, **pipeline)


def radam_(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, lr, beta1, beta2, eps, weight_decay,
           decoupled_weight_decay, **pipeline):
    def rule(g, st, t, i):
        m, v = st
        _adam_moments(g, m, v, beta1, beta2)
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        m_hat = m * (1 / bc1)
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * beta2**t / bc2
        if rho_t > 5:
            r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            return m_hat * (r * math.sqrt(bc2)) / (sqrt(v) + eps)
        return m_hat

    run_pipeline(params, grads, [exp_avgs, exp_avg_sqs], state_steps, rule, lr=lr, weight_decay=weight_decay,
                 decoupled_weight_decay=decoupled_weight_decay, **pipeline)


def adema_schedule(t: float, alpha: float, beta1: float, beta3: float, t_alpha_beta3):
    """α(t) and β3(t): constant, or the AdEMAMix warm-up over t_alpha_beta3 steps."""
    if t_alpha_beta3 is None:
        return alpha, beta3
    T = t_alpha_beta3
    alpha_t = min(t * alpha / T, alpha)
    ln_b1, ln_b3 = math.log(beta1), math.log(beta3)
    beta3_t = min(math.exp(ln_b1 * ln_b3 / ((1 - t / T) * ln_b3 + (t / T) * ln_b1)), beta3)
    return alpha_t, beta3_t


def adema_(params, grads, exp_avgs, exp_avg_sqs, exp_avg_slows, state_steps, *, lr, beta1, beta2, beta3, alpha,
           eps, weight_decay, t_alpha_beta3=None, **pipeline):
    slow = alpha != 0  # alpha == 0 is AdamW; the slow EMA is not used

    def rule(g, st, t, i):
        m1, v = st[0], st[1]
        _adam_moments(g, m1, v, beta1, beta2)
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        numerator = m1 * (1 / bc1)
        if slow:
            alpha_t, beta3_t = adema_schedule(t, alpha, beta1, beta3, t_alpha_beta3)
            m2 = st[2]
            m2.copy_(beta3_t * m2 + (1 - beta3_t) * g)
            numerator = numerator + alpha_t * m2
        return numerator / (sqrt(v) * (1 / math.sqrt(bc2)) + eps)

    states = [exp_avgs, exp_avg_sqs] + ([exp_avg_slows] if slow else [])
    run_pipeline(params, grads, states, state_steps, rule, lr=lr, weight_decay=weight_decay,
                 decoupled_weight_decay=True, **pipeline)


def nadam_mu(t: float, beta1: float, momentum_decay: float) -> float:
    return beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))


def nadam_(params, grads, exp_avgs, exp_avg_sqs, mu_products, state_steps, *, lr, beta1, beta2, eps, weight_decay,
           decoupled_weight_decay, momentum_decay, **pipeline):
    products = {}  # Πμ advances only if the step runs (found_inf): written after the pipeline

    def rule(g, st, t, i):
        m, v = st
        _adam_moments(g, m, v, beta1, beta2)
        # mu_product *= mu in the state's dtype, as torch.optim.NAdam (NOTE in csrc/common/rules.h)
        mu = torch.tensor(nadam_mu(t, beta1, momentum_decay), dtype=mu_products[i].dtype).item()
        product = mu_products[i].item() * mu
        products[i] = product
        product = torch.tensor(product, dtype=mu_products[i].dtype).item()  # as stored, as torch.optim.NAdam
        mu_next = nadam_mu(t + 1, beta1, momentum_decay)
        grad_coef = (1 - nadam_mu(t, beta1, momentum_decay)) / (1 - product)
        exp_avg_coef = mu_next / (1 - product * mu_next)
        denom = sqrt(v * (1 / (1 - beta2**t))) + eps
        return (grad_coef * g) / denom + (exp_avg_coef * m) / denom

    run_pipeline(params, grads, [exp_avgs, exp_avg_sqs], state_steps, rule, lr=lr, weight_decay=weight_decay,
                 decoupled_weight_decay=decoupled_weight_decay, **pipeline)
    for i, product in products.items():
        mu_products[i].fill_(product)


def rmsprop_(params, grads, square_avgs, momentum_buffers, grad_avgs, state_steps, *, lr, alpha, eps, weight_decay,
             momentum, centered, **pipeline):
    def rule(g, st, t, i):
        v = st[0]
        v.copy_(alpha * v + (1 - alpha) * g * g)
        if centered:
            ga = st[-1]
            ga.copy_(alpha * ga + (1 - alpha) * g)
            avg = sqrt(v - ga * ga) + eps
        else:
            avg = sqrt(v) + eps
        if momentum > 0:
            buf = st[1]
            buf.copy_(momentum * buf + g / avg)
            return buf
        return g / avg

    states = [square_avgs] + ([momentum_buffers] if momentum > 0 else []) + ([grad_avgs] if centered else [])
    run_pipeline(params, grads, states, state_steps, rule, lr=lr, weight_decay=weight_decay, **pipeline)


def gradient_ascent_lr_factor(t: float, lr_decay, warmup_steps: int) -> float:
    """lr_decay^(t-1), times t / warmup_steps during the warm-up."""
    factor = (1.0 if lr_decay is None else lr_decay) ** (t - 1)
    return factor * t / warmup_steps if t <= warmup_steps else factor


def gradient_ascent_(params, grads, momentum_buffers, square_avgs, state_steps, *, lr, momentum, beta, eps,
                     momentum_ema, nesterov, clip_value=None, lr_decay=None, warmup_steps=0, **pipeline):
    def rule(g, st, t, i):
        v, m = st
        if clip_value is not None:
            g = g.clamp(-clip_value, clip_value)
        gn = g + momentum * v if nesterov else g
        v.copy_(momentum * v + (1 - momentum) * gn if momentum_ema else momentum * v + gn)
        m.copy_(beta * m + (1 - beta) * gn * gn)
        return (v / (sqrt(m) + eps)) * gradient_ascent_lr_factor(t, lr_decay, warmup_steps)

    run_pipeline(params, grads, [momentum_buffers, square_avgs], state_steps, rule, lr=lr, **pipeline)
