"""GRU and LSTM steps with episode resets, and their whole-sequence form with a hand-written VJP.

Equations (the gates' pre-activations split as x_* = W_x x + b from the input and W_h h (+ b_h) from
the state; sigma is the logistic function):
- GRU (Cho et al. 2014, "Learning phrase representations using RNN encoder-decoder", in the form of
  PyTorch's nn.GRU and flax.linen.GRUCell, the reset gate scaling W_hn h + b_hn):
  r = sigma(x_r + W_hr h + b_hr), z = sigma(x_z + W_hz h + b_hz), n = tanh(x_n + r (W_hn h + b_hn)),
  h' = (1 - z) n + z h.
- LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers, Schmidhuber & Cummins 2000;
  gate order i, f, g, o as flax.linen.OptimizedLSTMCell, no state bias): a = x + W_h h,
  c' = sigma(a_f) c + sigma(a_i) tanh(a_g), h' = sigma(a_o) tanh(c').
A step first zeroes the state where ``reset`` is true (an episode starts there).

Why the sequence form is written by hand (docs/PERFORMANCE.md, "Recurrent policy"): the update
replays whole sequences, and on XLA:CPU the autodiff of a scanned cell runs each step as many
small kernels; worse, a fused kernel that reads one scanned array at several column offsets (the
three gate slices of W_x x) is compiled without SIMD, several times slower. Here, as in cuDNN's
RNN (Appleyard, Kocisky & Blunsom 2016, "Optimizing performance of recurrent neural networks on
GPUs"), the input projection of every step is ONE matmul before the loop (the caller's), handed
over split per gate so each step reads every scanned array once; a step does one matmul W_h h;
and the custom VJP's reverse loop computes only the gate gradients and dh = dgates W_h^T, the
weight gradient sum_t h_{t-1}^T dgates_t being ONE matmul over all steps after the loop.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

# Everything the networks need to know of a cell, so a new cell is written in this module alone
# (and named in tbjax.config_rules.POLICIES): its gates, the arrays its state holds, whether its
# state matmul has a bias; its equations are cell_step and _cell_backward below.
CELLS = {"gru": 3, "lstm": 4}  # cell -> number of gates
STATE_PARTS = {"gru": 1, "lstm": 2}  # cell -> arrays in its state: h (GRU), (c, h) (LSTM)
STATE_BIAS = frozenset({"gru"})  # cells whose state matmul has a bias (the GRU's b_h, scaled by r)


def matmul(dtype, x, kernel, bias=None):
    """x W (+ b) computed in ``dtype`` (as flax's Dense does), returned in x's float type (float32
    whatever the compute dtype, so the gates and the state stay float32)."""
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
    if bias is not None:
        y = y + bias.astype(dtype)
    return y.astype(jnp.promote_types(x.dtype, jnp.float32))


def split_state(cell: str, state):
    """The state array [..., state] as the loop carries it: h (GRU) or (c, h) (LSTM)."""
    parts = STATE_PARTS[cell]
    return state if parts == 1 else tuple(jnp.split(state, parts, axis=-1))


def join_state(cell: str, carry):
    return carry if STATE_PARTS[cell] == 1 else jnp.concatenate(carry, axis=-1)


def _reset(carry, reset):
    return jax.tree_util.tree_map(lambda s: jnp.where(reset[..., None], 0.0, s), carry)


def cell_step(cell: str, dtype, kernel, bias, carry, gates_x, reset):
    """One step: (new carry, output h', residuals for the backward pass).

    ``gates_x`` is the tuple of the input's gate pre-activations (GRU: r, z, n; LSTM: i, f, g, o).
    """
    carry = _reset(carry, reset)
    if cell == "gru":
        h = carry
        hr, hz, hn = jnp.split(matmul(dtype, h, kernel, bias), 3, axis=-1)
        xr, xz, xn = gates_x
        r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h_new = (1.0 - z) * n + z * h
        return h_new, h_new, (h, r, z, n, hn)
    c, h = carry
    gh = jnp.split(matmul(dtype, h, kernel), 4, axis=-1)
    ai, af, ag, ao = (x + y for x, y in zip(gates_x, gh))
    i, f, g, o = jax.nn.sigmoid(ai), jax.nn.sigmoid(af), jnp.tanh(ag), jax.nn.sigmoid(ao)
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    h_new = o * tc
    return (c_new, h_new), h_new, (c, h, i, f, g, o, tc)


def _cell_backward(cell: str, dtype, kernel, residuals, dcarry, dout, reset):
    """Reverse of one step: (d carry before the step, d gates_x [B, gates * size], d of the state
    matmul's output, None when it equals d gates_x as in the LSTM)."""
    if cell == "gru":
        h, r, z, n, hn = residuals
        dh = dcarry + dout
        dan = dh * (1.0 - z) * (1.0 - n * n)
        dar = dan * hn * r * (1.0 - r)
        daz = dh * (h - n) * z * (1.0 - z)
        dgh = jnp.concatenate([dar, daz, dan * r], axis=-1)
        dh_prev = dh * z + matmul(dtype, dgh, kernel.T)
        return _reset(dh_prev, reset), jnp.concatenate([dar, daz, dan], axis=-1), dgh
    c, h, i, f, g, o, tc = residuals
    dc_next, dh_next = dcarry
    dh = dh_next + dout
    dc = dc_next + dh * o * (1.0 - tc * tc)
    da = (dc * g * i * (1.0 - i), dc * c * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o))
    dgh = jnp.concatenate(da, axis=-1)
    return _reset((dc * f, matmul(dtype, dgh, kernel.T)), reset), dgh, None  # d gates_x = d gates_h


def input_gates(dtype, w_x, b_x, x, n_gates: int):
    """The input's gate pre-activations W_x x + b_x, one matmul per gate: separate arrays, so the
    time loop reads each at one offset (a kernel reading one array at several offsets runs
    without SIMD on XLA:CPU) and nothing is sliced at full sequence size."""
    size = w_x.shape[-1] // n_gates
    return tuple(matmul(dtype, x, w_x[:, k * size:(k + 1) * size], b_x[k * size:(k + 1) * size])
                 for k in range(n_gates))


def _forward(cell, dtype, kernel, bias, carry, gates_x, reset, keep: bool):
    def body(carry, step):
        x, r = step
        carry, out, residuals = cell_step(cell, dtype, kernel, bias, carry, x, r)
        return carry, ((out, residuals) if keep else out)

    return jax.lax.scan(body, carry, (gates_x, reset))


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def sequence(cell: str, dtype, w_x, b_x, w_h, b_h, carry, x, reset):
    """Time-major sequence x [T, B, E], reset [T, B] -> (final carry, h [T, B, size]).

    Input weights W_x [E, gates * size], b_x; state weights W_h [size, gates * size] and b_h (the
    GRU's; None for the LSTM). Equal to scanning :func:`cell_step` over :func:`input_gates`;
    differentiated by the hand-written reverse loop, after which each weight gradient and the
    input's gradient is ONE matmul over all steps (module docstring).
    """
    gates_x = input_gates(dtype, w_x, b_x, x, CELLS[cell])
    return _forward(cell, dtype, w_h, b_h, carry, gates_x, reset, keep=False)


def _sequence_fwd(cell, dtype, w_x, b_x, w_h, b_h, carry, x, reset):
    gates_x = input_gates(dtype, w_x, b_x, x, CELLS[cell])
    final, (outs, residuals) = _forward(cell, dtype, w_h, b_h, carry, gates_x, reset, keep=True)
    return (final, outs), (w_x, b_x, w_h, b_h, x, residuals, reset)


def _rows(a):
    return a.reshape(-1, a.shape[-1])


def _sequence_bwd(cell, dtype, saved, cotangents):
    w_x, b_x, w_h, b_h, x, residuals, reset = saved
    d_final, d_outs = cotangents

    def body(dcarry, step):
        res, dout, r = step
        dcarry, d_gx, d_gh = _cell_backward(cell, dtype, w_h, res, dcarry, dout, r)
        return dcarry, (d_gx, d_gh)

    d_carry0, (d_gx, d_gh) = jax.lax.scan(body, d_final, (residuals, d_outs, reset), reverse=True)
    d_gx = _rows(d_gx)
    d_gh = d_gx if d_gh is None else _rows(d_gh)
    h_before = residuals[0] if cell == "gru" else residuals[1]  # the state each step's matmul read
    d_w_h = matmul(dtype, _rows(h_before).T, d_gh)
    d_b_h = None if b_h is None else jnp.sum(d_gh, axis=0)
    d_w_x = matmul(dtype, _rows(x).T, d_gx)
    d_x = matmul(dtype, d_gx, w_x.T).reshape(x.shape).astype(x.dtype)
    return d_w_x, jnp.sum(d_gx, axis=0), d_w_h, d_b_h, d_carry0, d_x, None


sequence.defvjp(_sequence_fwd, _sequence_bwd)
