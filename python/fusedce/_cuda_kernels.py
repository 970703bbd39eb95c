"""The Numba CUDA kernels behind fusedce._cuda (importing this module imports numba.cuda).

Layout: one block per row, or ``n_chunks`` consecutive blocks per row when rows are few and
long. Threads stride through their block's span (thread i reads elements i, i+T, ...), so
loads coalesce, four loads in flight per thread. Reductions are shared-memory trees (the CUDA
simulator has no warp shuffles); the block size is a power of two no larger than the
``max_threads`` the kernels were built for.

Statistics of a span of a row are (m, s, ws, qs): the max of the capped logits y, the sum of
exp(y - m), the weighted sum of y that the loss needs with label smoothing (sum w_k y_k) or
probability targets (sum w_k q~_k y_k), and sum w_k q~_k for probability targets, with
q~ = keep q + smooth_per_class. Everything per element runs in the compute type (float64 for
float64 logits, float32 otherwise); the per-row epilogue (lse, loss, coefficients) in float64.
"""

from __future__ import annotations

import math
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
from numba import cuda, float32, float64, int64
from numba.core import types as nbtypes

# Where the rows kernel gets the statistics of its row.
STATS_NONE = 0  # none: the lse was given (backward with class targets)
STATS_ROW = 1  # scan the whole row in this block (one block per row)
STATS_PARTIALS = 2  # merge the per-chunk partials that chunk_stats wrote

# What the rows kernel writes per element after the statistics.
OUT_NONE = 0
OUT_GRAD = 1
OUT_SOFTMAX = 2
OUT_LOG_SOFTMAX = 3

N_STATS = 4  # (m, s, ws, qs) per partial

_ROW_TYPES = {"float16": nbtypes.float16, "float32": float32, "float64": float64}


def compute_dtype(dtype_name):
    return np.float64 if dtype_name == "float64" else np.float32


@lru_cache(maxsize=None)
def row_kernels(dtype_name: str, max_threads: int):
    """chunk_stats and rows kernels for logits of ``dtype_name``, blocks of <= max_threads."""
    row_t = _ROW_TYPES[dtype_name]  # what the shared-memory row cache holds: the raw logits
    np_ct = compute_dtype(dtype_name)
    ct = float64 if np_ct is np.float64 else float32
    zero, one, neg_inf = np_ct(0.0), np_ct(1.0), np_ct(-np.inf)

    @cuda.jit(device=True)
    def capped(v, cap, inv_cap):
        if cap > zero:
            return ct(cap * ct(math.tanh(v * inv_cap)))
        return v

    @cuda.jit(device=True)
    def soft_weight(q, row, j, weight, has_weight, keep, spc):
        """w_j q~_j of a probability target."""
        wq = keep * ct(q[row, j]) + spc
        if has_weight:
            wq *= weight[j]
        return wq

    @cuda.jit(device=True)
    def merge(m1, s1, m2, s2):
        m = max(m1, m2)
        if m == neg_inf:  # both spans empty or all -inf: avoid exp(-inf - -inf)
            return m, s1 + s2
        return m, s1 * ct(math.exp(m1 - m)) + s2 * ct(math.exp(m2 - m))

    @cuda.jit(device=True)
    def block_reduce(m, s, ws, qs, red):
        """Merge every thread's statistics; all threads get the block's. red: (4, threads)."""
        tid = cuda.threadIdx.x
        red[0, tid] = m
        red[1, tid] = s
        red[2, tid] = ws
        red[3, tid] = qs
        cuda.syncthreads()
        half = cuda.blockDim.x // 2
        while half > 0:
            if tid < half:
                mm, ss = merge(red[0, tid], red[1, tid], red[0, tid + half], red[1, tid + half])
                red[0, tid] = mm
                red[1, tid] = ss
                red[2, tid] += red[2, tid + half]
                red[3, tid] += red[3, tid + half]
            cuda.syncthreads()
            half //= 2
        return red[0, 0], red[1, 0], red[2, 0], red[3, 0]

    @cuda.jit(device=True)
    def absorb(m, s, ws, qs, raw, row, j, cap, inv_cap, q, soft, weight, has_weight,
               want_wsum, keep, spc):
        """Online update of the statistics with element j of the row."""
        y = capped(ct(raw), cap, inv_cap)
        if y > m:
            s = s * ct(math.exp(m - y)) + one
            m = y
        elif y != neg_inf:  # -inf adds nothing; NaN falls through and poisons s
            s += ct(math.exp(y - m))
        if soft:
            wq = soft_weight(q, row, j, weight, has_weight, keep, spc)
            qs += wq
            if wq != zero:  # a zero target weight takes no part, even against -inf
                ws += wq * y
        elif want_wsum:
            w = weight[j] if has_weight else one
            if w != zero:  # a zero-weight class takes no part, even against -inf
                ws += w * y
        return m, s, ws, qs

    @cuda.jit(device=True)
    def scan(x, row, lo, hi, cap, inv_cap, q, soft, weight, has_weight, want_wsum, keep, spc,
             cache, use_cache):
        """This thread's statistics over its elements of x[row, lo:hi] (cached if asked)."""
        m, s, ws, qs = neg_inf, zero, zero, zero
        step = cuda.blockDim.x
        j = lo + cuda.threadIdx.x
        # Four loads issued before any of them is used: more bytes in flight per thread.
        while j + 3 * step < hi:
            r0 = x[row, j]
            r1 = x[row, j + step]
            r2 = x[row, j + 2 * step]
            r3 = x[row, j + 3 * step]
            if use_cache:
                cache[j - lo] = r0
                cache[j - lo + step] = r1
                cache[j - lo + 2 * step] = r2
                cache[j - lo + 3 * step] = r3
            m, s, ws, qs = absorb(m, s, ws, qs, r0, row, j, cap, inv_cap, q, soft, weight,
                                  has_weight, want_wsum, keep, spc)
            m, s, ws, qs = absorb(m, s, ws, qs, r1, row, j + step, cap, inv_cap, q, soft, weight,
                                  has_weight, want_wsum, keep, spc)
            m, s, ws, qs = absorb(m, s, ws, qs, r2, row, j + 2 * step, cap, inv_cap, q, soft,
                                  weight, has_weight, want_wsum, keep, spc)
            m, s, ws, qs = absorb(m, s, ws, qs, r3, row, j + 3 * step, cap, inv_cap, q, soft,
                                  weight, has_weight, want_wsum, keep, spc)
            j += 4 * step
        while j < hi:
            raw = x[row, j]
            if use_cache:
                cache[j - lo] = raw
            m, s, ws, qs = absorb(m, s, ws, qs, raw, row, j, cap, inv_cap, q, soft, weight,
                                  has_weight, want_wsum, keep, spc)
            j += step
        return m, s, ws, qs

    @cuda.jit(device=True)
    def lse_of(m, s):
        if m == -neg_inf:  # +inf in the row: NaN, as exp(inf - inf) gives the reference
            return math.nan
        if m == neg_inf:  # only -inf: log(0)
            return -math.inf
        return float64(m) + math.log(float64(s))

    @cuda.jit(device=True)
    def emit(out, row, j, raw, out_kind, shift, a, b, at_target, t, q, soft, weight, has_weight,
             smoothing, keep, spc, cap, inv_cap):
        """Write out[row, j]: log_softmax, softmax or the gradient of element j."""
        y = capped(ct(raw), cap, inv_cap)
        if out_kind == OUT_LOG_SOFTMAX:
            out[row, j] = (y - shift) - a
        elif out_kind == OUT_SOFTMAX:
            out[row, j] = ct(math.exp(y - shift)) * a
        else:
            g = a * ct(math.exp(y - shift))
            if soft:
                g -= b * soft_weight(q, row, j, weight, has_weight, keep, spc)
            elif smoothing:
                g -= b * (weight[j] if has_weight else one)
            if j == t:
                g -= at_target
            if cap > zero:
                r = y * inv_cap
                au = abs(ct(raw) * inv_cap)
                if au > one:  # 1 - tanh(u)^2 as 4e/(1 + e)^2, e = exp(-2|u|): exact at saturation
                    e = ct(math.exp(ct(-2.0) * au))
                    g *= ct(4.0) * e / ((one + e) * (one + e))
                else:
                    g *= one - r * r
            out[row, j] = g  # rounded once to the logits dtype

    @cuda.jit
    def chunk_stats(x, target, q, weight, has_weight, soft, want_wsum, want_yt, ignore_index,
                    keep64, spc64, cap, inv_cap, n_chunks, chunk_len, partials, yt_buf):
        """partials[row, chunk] = the statistics of one chunk; with want_yt, yt_buf[row] = the
        capped target logit (read here: the gradient pass may overwrite it in place)."""
        red = cuda.shared.array((N_STATS, max_threads), ct)
        cache = cuda.shared.array(0, row_t)  # unused: chunks are read once here
        block = int64(cuda.blockIdx.x)
        row = block // n_chunks
        chunk = block - row * n_chunks
        lo = chunk * chunk_len
        hi = min(lo + chunk_len, x.shape[1])
        m, s, ws, qs = scan(x, row, lo, hi, cap, inv_cap, q, soft, weight, has_weight, want_wsum,
                            ct(keep64), ct(spc64), cache, False)
        m, s, ws, qs = block_reduce(m, s, ws, qs, red)
        if cuda.threadIdx.x == 0:
            partials[row, chunk, 0] = m
            partials[row, chunk, 1] = s
            partials[row, chunk, 2] = ws
            partials[row, chunk, 3] = qs
            if want_yt and chunk == 0:
                t = int64(target[row])
                if t != ignore_index:
                    yt_buf[row] = capped(ct(x[row, t]), cap, inv_cap)

    @cuda.jit
    def rows(x, target, q, weight, scale_arr, lse_in, partials, yt_buf, loss_out, lse_out, out,
             stats_src, lse_given, out_kind, n_parts, n_chunks, chunk_len, use_cache,
             has_target, soft, has_weight, has_scale_arr, want_loss, want_lse,
             ignore_index, keep64, spc64, z_loss, weight_sum, scale, cap, inv_cap):
        """Statistics of the row (scanned or merged), or its given lse; then loss/lse and the
        pass that writes out[row, chunk span]: gradient, softmax or log_softmax.

        keep64 = 1 - label_smoothing, spc64 = label_smoothing / K (smoothing per class).
        """
        red = cuda.shared.array((N_STATS, max_threads), ct)
        cache = cuda.shared.array(0, row_t)
        tid = cuda.threadIdx.x
        block = int64(cuda.blockIdx.x)
        row = block // n_chunks
        chunk = block - row * n_chunks
        lo = chunk * chunk_len
        hi = min(lo + chunk_len, x.shape[1])
        keep, spc = ct(keep64), ct(spc64)

        t = int64(-1)
        counted = soft  # probability targets count every row
        if has_target:
            t = int64(target[row])
            counted = t != ignore_index
        want_wsum = want_loss and spc64 > 0.0

        yt = zero
        lse = 0.0
        shift = zero
        ws = zero
        qs = zero
        if stats_src != STATS_NONE:
            if stats_src == STATS_ROW:
                if want_loss and counted and has_target and tid == 0:
                    # Read before block_reduce's barriers: with inplace=True the gradient
                    # pass overwrites x[row, t].
                    yt = capped(ct(x[row, t]), cap, inv_cap)
                m, s, ws, qs = scan(x, row, lo, hi, cap, inv_cap, q, soft, weight, has_weight,
                                    want_wsum, keep, spc, cache, use_cache)
            else:
                if want_loss and counted and has_target:
                    yt = yt_buf[row]
                m, s, ws, qs = neg_inf, zero, zero, zero
                if tid < n_parts:
                    m, s = partials[row, tid, 0], partials[row, tid, 1]
                    ws, qs = partials[row, tid, 2], partials[row, tid, 3]
            m, s, ws, qs = block_reduce(m, s, ws, qs, red)
            lse = lse_of(m, s)
            shift = m  # exact in the compute type, so y - shift loses nothing
        if lse_given:
            lse = float64(lse_in[row])
            shift = ct(lse)

        wt = 1.0
        if has_target and counted and has_weight:
            wt = float64(weight[t])
        if want_loss and chunk == 0 and tid == 0:
            loss = 0.0
            if soft:
                loss = float64(qs) * lse - float64(ws) + z_loss * lse * lse
            elif counted:
                loss = keep64 * wt * (lse - float64(yt))
                if spc64 > 0.0:
                    loss += spc64 * (weight_sum * lse - float64(ws))
                if z_loss > 0.0:
                    loss += z_loss * wt * lse * lse
            loss_out[row] = loss
        if want_lse and chunk == 0 and tid == 0:
            lse_out[row] = lse
        if out_kind == OUT_NONE:
            return

        # p_j = exp(y_j - lse) = exp(y_j - shift) * exp(shift - lse)
        norm = math.exp(float64(shift) - lse)
        a, b, at_target = zero, zero, zero
        if out_kind == OUT_GRAD:
            row_scale = scale_arr[row] if has_scale_arr else scale
            if soft:
                a = ct(row_scale * (float64(qs) + 2.0 * z_loss * lse) * norm)
                b = ct(row_scale)
            elif counted:
                c = keep64 * wt + spc64 * weight_sum + 2.0 * z_loss * wt * lse
                a = ct(row_scale * c * norm)
                b = ct(row_scale * spc64)
                at_target = ct(row_scale * keep64 * wt)
        elif out_kind == OUT_SOFTMAX:
            a = ct(norm)
        else:
            a = ct(lse - float64(shift))  # log_softmax = (y - shift) - a

        step = cuda.blockDim.x
        j = lo + tid
        if out_kind == OUT_GRAD and not counted:
            while j < hi:
                out[row, j] = zero  # ignored rows: 0 even where the logits are NaN
                j += step
            return
        smoothing = spc64 > 0.0
        while j + 3 * step < hi:  # loads first, as in scan
            if use_cache:
                r0 = cache[j - lo]
                r1 = cache[j - lo + step]
                r2 = cache[j - lo + 2 * step]
                r3 = cache[j - lo + 3 * step]
            else:
                r0 = x[row, j]
                r1 = x[row, j + step]
                r2 = x[row, j + 2 * step]
                r3 = x[row, j + 3 * step]
            emit(out, row, j, r0, out_kind, shift, a, b, at_target, t, q, soft, weight,
                 has_weight, smoothing, keep, spc, cap, inv_cap)
            emit(out, row, j + step, r1, out_kind, shift, a, b, at_target, t, q, soft, weight,
                 has_weight, smoothing, keep, spc, cap, inv_cap)
            emit(out, row, j + 2 * step, r2, out_kind, shift, a, b, at_target, t, q, soft, weight,
                 has_weight, smoothing, keep, spc, cap, inv_cap)
            emit(out, row, j + 3 * step, r3, out_kind, shift, a, b, at_target, t, q, soft, weight,
                 has_weight, smoothing, keep, spc, cap, inv_cap)
            j += 4 * step
        while j < hi:
            raw = cache[j - lo] if use_cache else x[row, j]
            emit(out, row, j, raw, out_kind, shift, a, b, at_target, t, q, soft, weight,
                 has_weight, smoothing, keep, spc, cap, inv_cap)
            j += step

    return SimpleNamespace(chunk_stats=chunk_stats, rows=rows)


@lru_cache(maxsize=None)
def reduce_kernels(max_threads: int):
    """Grid-stride reductions over a 1-D array, one partial result per block, and a cast."""

    @cuda.jit
    def check_targets(target, weight, has_weight, ignore_index, num_classes, out):
        """out[block] = (summed weight of counted rows, first row out of range or n)."""
        red_w = cuda.shared.array(max_threads, float64)
        red_bad = cuda.shared.array(max_threads, int64)
        tid = cuda.threadIdx.x
        n = target.shape[0]
        ws = 0.0
        bad = int64(n)
        i = int64(cuda.blockIdx.x) * cuda.blockDim.x + tid
        while i < n:
            t = int64(target[i])
            if t != ignore_index:
                if t < 0 or t >= num_classes:
                    bad = min(bad, i)
                elif has_weight:
                    ws += weight[t]
                else:
                    ws += 1.0
            i += int64(cuda.gridDim.x) * cuda.blockDim.x
        red_w[tid] = ws
        red_bad[tid] = bad
        cuda.syncthreads()
        half = cuda.blockDim.x // 2
        while half > 0:
            if tid < half:
                red_w[tid] += red_w[tid + half]
                red_bad[tid] = min(red_bad[tid], red_bad[tid + half])
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            out[cuda.blockIdx.x, 0] = red_w[0]
            out[cuda.blockIdx.x, 1] = float64(red_bad[0])

    @cuda.jit
    def sum_rows(values, out):
        """out[block] = this block's share of sum(values), in float64."""
        red = cuda.shared.array(max_threads, float64)
        tid = cuda.threadIdx.x
        total = 0.0
        i = int64(cuda.blockIdx.x) * cuda.blockDim.x + tid
        while i < values.shape[0]:
            total += float64(values[i])
            i += int64(cuda.gridDim.x) * cuda.blockDim.x
        red[tid] = total
        cuda.syncthreads()
        half = cuda.blockDim.x // 2
        while half > 0:
            if tid < half:
                red[tid] += red[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            out[cuda.blockIdx.x] = red[0]

    @cuda.jit
    def cast(src, dst):
        """dst[i] = src[i] converted (rounded once) to dst's dtype; both 1-D."""
        i = int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        while i < dst.shape[0]:
            dst[i] = src[i]
            i += int64(cuda.gridDim.x) * cuda.blockDim.x

    return SimpleNamespace(check_targets=check_targets, sum_rows=sum_rows, cast=cast)


@lru_cache(maxsize=None)
def bce_kernels(dtype_name: str, max_threads: int):
    """Binary cross-entropy with logits over (rows, C) arrays, in the compute type."""
    np_ct = compute_dtype(dtype_name)
    ct = float64 if np_ct is np.float64 else float32
    zero, one = np_ct(0.0), np_ct(1.0)

    @cuda.jit
    def bce(x, target, weight, weight_mode, pos_weight, pos_weight_mode, scale_arr, has_scale_arr,
            scale, loss_out, want_elements, grad, want_grad, partial):
        """Element losses (and their float64 sum, one partial per block) and gradients:
        l = w [(1 - t) x + L softplus(-x)], g = s w [L sigmoid(x) - pw t], L = 1 + (pw - 1) t.
        weight_mode, pos_weight_mode: 0 none, 1 per class (1, C), 2 per element (rows, C)."""
        red = cuda.shared.array(max_threads, float64)
        tid = cuda.threadIdx.x
        classes = x.shape[1]
        n = x.shape[0] * classes
        total = 0.0
        i = int64(cuda.blockIdx.x) * cuda.blockDim.x + tid
        while i < n:
            r = i // classes
            c = i - r * classes
            v = ct(x[r, c])
            t = ct(target[r, c])
            w = one
            if weight_mode == 1:
                w = weight[0, c]
            elif weight_mode == 2:
                w = weight[r, c]
            pw = one
            if pos_weight_mode == 1:
                pw = pos_weight[0, c]
            elif pos_weight_mode == 2:
                pw = pos_weight[r, c]
            big = one + (pw - one) * t
            e = ct(math.exp(-abs(v)))
            softplus_neg = max(-v, zero) + ct(math.log1p(e))
            loss = w * ((one - t) * v + big * softplus_neg)
            total += float64(loss)
            if want_elements:
                loss_out[r, c] = loss
            if want_grad:
                sig = one / (one + e) if v >= zero else e / (one + e)
                s = ct(scale_arr[r, c]) if has_scale_arr else ct(scale)
                grad[r, c] = s * w * (big * sig - pw * t)
            i += int64(cuda.gridDim.x) * cuda.blockDim.x
        red[tid] = total
        cuda.syncthreads()
        half = cuda.blockDim.x // 2
        while half > 0:
            if tid < half:
                red[tid] += red[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            partial[cuda.blockIdx.x] = red[0]

    return SimpleNamespace(bce=bce)
