"""ALGORITHMS.md §2, one function per rule, with the signature of the fused op of the same name."""
from __future__ import annotations

import math

from .pipeline import run_pipeline


def _pipeline_kwargs(lr, weight_decay, decoupled_weight_decay, maximize, grad_scale, found_inf, alignment_scales):
    return dict(
        lr=lr,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
        alignment_scales=alignment_scales,
    )


def persistent_sgd_(params, grads, momentum_buffers, state_steps, *, lr, decay, dampening, weight_decay,
                    decoupled_weight_decay, nesterov, maximize=False, grad_scale=None, found_inf=None,
                    alignment_scales=None):
    def rule(g, st, t):
        buf = st[0]
        buf.copy_(decay * buf + (1 - dampening) * g)
        return g + decay * buf if nesterov else buf

    run_pipeline(params, grads, [momentum_buffers], state_steps, rule,
                 **_pipeline_kwargs(lr, weight_decay, decoupled_weight_decay, maximize, grad_scale, found_inf,
                                    alignment_scales))


def _adam_moments(g, m, v, beta1, beta2):
    m.copy_(beta1 * m + (1 - beta1) * g)
    v.copy_(beta2 * v + (1 - beta2) * g * g)


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr, beta1, beta2, eps,
          weight_decay, decoupled_weight_decay, amsgrad, maximize=False, grad_scale=None, found_inf=None,
          alignment_scales=None):
    def rule(g, st, t):
        m, v = st[0], st[1]
        _adam_moments(g, m, v, beta1, beta2)
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        v_hat = v
        if amsgrad:
            st[2].copy_(st[2].maximum(v))
            v_hat = st[2]
        # (m / bc1) / (sqrt(v̂) / sqrt(bc2) + eps), with the divisions by scalars as multiplications by
        # their reciprocals, as the kernels do (NOTE: [the kernels round as the reference does])
        return (m * (1 / bc1)) / (v_hat.sqrt() * (1 / math.sqrt(bc2)) + eps)

    states = [exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    run_pipeline(params, grads, states, state_steps, rule,
                 **_pipeline_kwargs(lr, weight_decay, decoupled_weight_decay, maximize, grad_scale, found_inf,
                                    alignment_scales))


def radam_(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, lr, beta1, beta2, eps, weight_decay,
           decoupled_weight_decay, maximize=False, grad_scale=None, found_inf=None, alignment_scales=None):
    def rule(g, st, t):
        m, v = st
        _adam_moments(g, m, v, beta1, beta2)
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        m_hat = m * (1 / bc1)
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * beta2**t / bc2
        if rho_t > 5:
            r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            return m_hat * (r * math.sqrt(bc2)) / (v.sqrt() + eps)
        return m_hat

    run_pipeline(params, grads, [exp_avgs, exp_avg_sqs], state_steps, rule,
                 **_pipeline_kwargs(lr, weight_decay, decoupled_weight_decay, maximize, grad_scale, found_inf,
                                    alignment_scales))


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
           eps, weight_decay, t_alpha_beta3=None, maximize=False, grad_scale=None, found_inf=None,
           alignment_scales=None):
    slow = alpha != 0  # alpha == 0 is AdamW; the slow EMA is not used

    def rule(g, st, t):
        m1, v = st[0], st[1]
        _adam_moments(g, m1, v, beta1, beta2)
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        numerator = m1 * (1 / bc1)
        if slow:
            alpha_t, beta3_t = adema_schedule(t, alpha, beta1, beta3, t_alpha_beta3)
            m2 = st[2]
            m2.copy_(beta3_t * m2 + (1 - beta3_t) * g)
            numerator = numerator + alpha_t * m2
        return numerator / (v.sqrt() * (1 / math.sqrt(bc2)) + eps)

    states = [exp_avgs, exp_avg_sqs] + ([exp_avg_slows] if slow else [])
    run_pipeline(params, grads, states, state_steps, rule,
                 **_pipeline_kwargs(lr, weight_decay, True, maximize, grad_scale, found_inf, alignment_scales))
