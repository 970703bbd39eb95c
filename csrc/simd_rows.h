/* The row primitives of kernels.h for one dtype, written once over a vocabulary: included by
 * simd_kernels.h with T (storage type), SUF (dtype suffix) and the lane family's V, M, CT, VN,
 * VOP set. Same contract as ce_portable.c (kernels.h); see there for the math.
 *
 * Tails (and the head of a streamed gradient) are partial vectors of m < VN elements: LDP
 * loads zeros past m, STP writes m elements; the math is the same vector code everywhere. */

#define STCP(p, m, v) CE_CAT(stp_, CSUF)(p, m, v)

/* y = cap(x) for one vector (the softcap's tanh), or x. */
CE_INLINE V CE_FN(capped_y)(V x, V cap, V inv_cap, const int capped)
{
    return capped ? VOP(mul)(cap, VTANH(VOP(mul)(x, inv_cap))) : x;
}

/* The max of four chains of lane maxima: one order of reduction for every pass that takes a
 * max (stats_max, stats_exp's ahead), so that they agree to the bit (even on -0 against +0). */
CE_INLINE CT CE_FN(max_of)(const V m[4]) { return VOP(hmax)(VOP(max)(VOP(max)(m[0], m[1]), VOP(max)(m[2], m[3]))); }

/* Pass A: the max of y over x[0..n), NaNs skipped (y stored in e when capped, so that pass B
 * does not take the tanh again). Four chains of max hide its latency; the loads come from
 * memory, so this pass sets the pace of the stream. */
CE_INLINE CT CE_FN(stats_max)(const T *x, int64_t n, CT *e, V cap, V inv_cap, const int capped)
{
    const V neg_inf = VOP(set1)((CT)-INFINITY);
    V acc[4] = {neg_inf, neg_inf, neg_inf, neg_inf};
    int64_t j = 0;
#define CE_MAX_AT(i, k)                                                                                \
    do {                                                                                               \
        const V y = CE_FN(capped_y)(LD(x + j + (k)), cap, inv_cap, capped);                            \
        if (capped) STC(e + j + (k), y);                                                               \
        acc[i] = VOP(max)(y, acc[i]);                                                                  \
    } while (0)
    for (; j + 4 * VN <= n; j += 4 * VN) {
        CE_MAX_AT(0, 0);
        CE_MAX_AT(1, VN);
        CE_MAX_AT(2, 2 * VN);
        CE_MAX_AT(3, 3 * VN);
    }
    for (; j + VN <= n; j += VN) CE_MAX_AT(0, 0);
#undef CE_MAX_AT
    if (j < n) {
        const int m = (int)(n - j);
        const V y = CE_FN(capped_y)(LDP(x + j, m), cap, inv_cap, capped);
        if (capped) STCP(e + j, m, y);
        acc[1] = VOP(max)(VOP(select)(VOP(lanes)(m), y, neg_inf), acc[1]);
    }
    return CE_FN(max_of)(acc);
}

/* The gradient `along` (kernels.h) of n elements, written alongside pass B so that its stores
 * drain while the exps compute; j: how far it is. */
typedef struct {
    const CT *pe, *w;
    T *g;
    int64_t n, j, t;
    CT tv;
    V a, b0;
} CE_FN(writer);

CE_INLINE CE_FN(writer) CE_FN(writer_of)(const ce_grad_along *al, int64_t n)
{
    const CE_FN(writer) wr = {(const CT *)al->pe, (const CT *)al->w, (T *)al->g, n, 0, al->t, (CT)al->tv,
                              VOP(set1)((CT)al->a), VOP(set1)((CT)al->b0)};
    return wr;
}

/* v, the gradient's elements from j on, with the target's (t, below j + VN and n) set to tv:
 * once a row, via a stack copy. */
CE_INLINE V CE_FN(with_target)(V v, int64_t j, int64_t t, CT tv)
{
    if ((uint64_t)(t - j) >= (uint64_t)VN) return v; /* t < j (or none, t < 0) or beyond */
    CT lanes[VN];
    STC(lanes, v);
    lanes[t - j] = tv;
    return LDC(lanes);
}

/* The writer's next m elements (a whole vector when m == VN). */
CE_INLINE void CE_FN(write_vec)(CE_FN(writer) *wr, int m, const int weighted, const int stream)
{
    const int64_t j = wr->j;
    const V pe = m == VN ? LDC(wr->pe + j) : LDCP(wr->pe + j, m);
    const V bw = weighted ? VOP(mul)(wr->b0, m == VN ? LDC(wr->w + j) : LDCP(wr->w + j, m)) : wr->b0;
    const V v = CE_FN(with_target)(VOP(fms)(wr->a, pe, bw), j, wr->t, wr->tv);
    wr->j = j + m;
#if CE_HAVE_STREAM
    if (stream && m == VN) {
        STNT(wr->g + j, v);
        return;
    }
#endif
    (void)stream;
    if (m == VN) ST(wr->g + j, v);
    else STP(wr->g + j, m, v);
}

/* Pass B: e_j = exp(y_j - ref) stored, and their sum: float sums of at most CE_BLOCK / VN terms
 * per lane, four chains, added in double per block. y comes back from cache (x, or e when
 * capped). It prefetches pf, what the caller reads next (into L1 if small, else L2): otherwise
 * the memory stream would idle while this pass computes. With ahead_on, the max of ahead[0..n)
 * is taken meanwhile into the four chains am, grouped as stats_max groups them (CE_BLOCK is a
 * multiple of 4 * VN, so the vectors of four and the single ones fall on the same j). */
CE_INLINE double CE_FN(stats_exp)(const T *x, int64_t n, CT ref, CT *e, const T *pf, const int capped,
                                  const int keep, CE_FN(writer) *wr, const int writing, const int weighted,
                                  const int stream, const T *ahead, V am[4], const int ahead_on)
{
    const int near = n * (int64_t)sizeof(T) <= 8192; /* a small next chunk fits L1 */
    const V vref = VOP(set1)(ref);
    double total = 0.0;
#define CE_Y(j) (capped ? LDC(e + (j)) : LD(x + (j)))
#define CE_EXP_AT(acc, k)                                                                              \
    do {                                                                                               \
        const V v = VEXPN_NONPOS(VOP(sub)(CE_Y(j + (k)), vref));                                       \
        if (keep) STC(e + j + (k), v);                                                                 \
        acc = VOP(add)(acc, v);                                                                        \
    } while (0)
#define CE_AHEAD_AT(i, k)                                                                              \
    do {                                                                                               \
        if (ahead_on) am[i] = VOP(max)(LD(ahead + j + (k)), am[i]);                                    \
    } while (0)
    for (int64_t i0 = 0; i0 < n; i0 += CE_BLOCK) {
        const int64_t i1 = n - i0 < CE_BLOCK ? n : i0 + CE_BLOCK;
        V s0 = VOP(set1)(0), s1 = s0, s2 = s0, s3 = s0;
        int64_t j = i0;
        for (; j + 4 * VN <= i1; j += 4 * VN) {
            if (near) CE_PREFETCH(pf + j, 4 * VN * sizeof(T), 3);
            else CE_PREFETCH(pf + j, 4 * VN * sizeof(T), 2);
            CE_EXP_AT(s0, 0);
            CE_AHEAD_AT(0, 0);
            CE_EXP_AT(s1, VN);
            CE_AHEAD_AT(1, VN);
            CE_EXP_AT(s2, 2 * VN);
            CE_AHEAD_AT(2, 2 * VN);
            CE_EXP_AT(s3, 3 * VN);
            CE_AHEAD_AT(3, 3 * VN);
            if (writing)
                for (int k = 0; k < 4 && wr->j + VN <= wr->n; k++) CE_FN(write_vec)(wr, VN, weighted, stream);
        }
        for (; j + VN <= i1; j += VN) {
            CE_EXP_AT(s0, 0);
            CE_AHEAD_AT(0, 0);
        }
        if (j < i1) {
            const int m = (int)(i1 - j);
            const V v = VEXPN_NONPOS(VOP(sub)(capped ? LDCP(e + j, m) : LDP(x + j, m), vref));
            if (keep) STCP(e + j, m, v);
            s1 = VOP(mask_add)(s1, VOP(lanes)(m), v);
            if (ahead_on)
                am[1] = VOP(max)(VOP(select)(VOP(lanes)(m), LDP(ahead + j, m), VOP(set1)((CT)-INFINITY)), am[1]);
        }
        total += VOP(hsum_d)(VOP(add)(VOP(add)(s0, s1), VOP(add)(s2, s3)));
    }
#undef CE_AHEAD_AT
#undef CE_EXP_AT
#undef CE_Y
    return total;
}

/* Pass 1 over a chunk: its max (pass A), then its exponentials relative to that max (kept in e
 * where e is given) and their sum (pass B); a chunk is in cache between the passes. */
CE_INLINE void CE_FN(stats_impl)(const T *x, int64_t n, const T *next, double softcap, CT *e, ce_stats *out,
                                 const int capped, const int keep)
{
    const V cap = VOP(set1)((CT)softcap);
    const V inv_cap = VOP(set1)(capped ? (CT)(1.0 / softcap) : (CT)0);
    const CT m = CE_FN(stats_max)(x, n, e, cap, inv_cap, capped);
    /* an all -inf (and NaN) chunk: exponentials of 0 and NaN, relative to 0 */
    out->max = m;
    out->sum = CE_FN(stats_exp)(x, n, m == (CT)-INFINITY ? (CT)0 : m, e, next ? next : x, capped, keep, NULL, 0, 0, 0,
                                NULL, NULL, 0);
}

static void CE_FN(factor_sums)(const T *x, const T *q, int64_t n, double softcap, const CT *w, double ref,
                               double *sum_f, double *sum_fy);

static void CE_FN(ce_stats)(const void *xv, int64_t n, const void *nextv, double softcap, const void *wv,
                            int want_wsum, void *ev, ce_stats *out)
{
    const T *x = (const T *)xv, *next = (const T *)nextv;
    if (softcap > 0) CE_FN(stats_impl)(x, n, next, softcap, (CT *)ev, out, 1, 1);
    else if (ev) CE_FN(stats_impl)(x, n, next, softcap, (CT *)ev, out, 0, 1);
    else CE_FN(stats_impl)(x, n, next, softcap, NULL, out, 0, 0);
    out->wtotal = out->wsum = out->qsum = out->qysum = 0.0;
    if (want_wsum)
        CE_FN(factor_sums)(x, NULL, n, softcap, (const CT *)wv, ce_stats_ref(out->max), &out->wtotal,
                           &out->wsum);
}

/* Pass 1 of an uncapped x[0..n): its max (known: has_max, else pass A), then pass B keeping
 * the exponentials in e (keep), with meanwhile either the max of ahead[0..n) into *ahead_max
 * (ahead_on: the forward's ce_stats_ahead) or an earlier row's gradient through wr (writing:
 * ce_stats_grad). Both at once measured slower than the fused pass with its max apart, where
 * memory is the limit (65536x1024 float32, Zen 5, alternated calls: up to 18 % slower on 2
 * threads, 26-39 % on one): the loads of the row ahead then stall the exps behind them. */
CE_INLINE void CE_FN(stats_along)(const T *x, int64_t n, CT max, const int has_max, const T *ahead, CT *ahead_max,
                                  const int ahead_on, const T *next, CT *e, const int keep, ce_stats *out,
                                  CE_FN(writer) *wr, const int writing, const int weighted, const int stream)
{
    const V zero = VOP(set1)(0), neg_inf = VOP(set1)((CT)-INFINITY);
    if (writing && stream) { /* ordinary stores up to a 64-byte boundary of g */
        int64_t head = (int64_t)((64 - ((uintptr_t)wr->g & 63)) & 63) / (int64_t)sizeof(T);
        if (head > n) head = n;
        while (wr->j < head) CE_FN(write_vec)(wr, head - wr->j < VN ? (int)(head - wr->j) : VN, weighted, 0);
    }
    const CT m = has_max ? max : CE_FN(stats_max)(x, n, e, zero, zero, 0);
    V am[4] = {neg_inf, neg_inf, neg_inf, neg_inf};
    out->max = m;
    out->sum = CE_FN(stats_exp)(x, n, m == (CT)-INFINITY ? (CT)0 : m, e, next ? next : x, 0, keep, wr, writing,
                                weighted, stream, ahead, am, ahead_on);
    if (ahead_on) *ahead_max = CE_FN(max_of)(am);
    if (writing)
        while (wr->j < n) CE_FN(write_vec)(wr, n - wr->j < VN ? (int)(n - wr->j) : VN, weighted, stream);
}

static void CE_FN(ce_stats_grad)(const void *xv, int64_t n, const void *nextv, const void *wv, int want_wsum,
                                 void *ev, ce_stats *out, const ce_grad_along *along)
{
    const T *x = (const T *)xv, *next = (const T *)nextv;
    CE_FN(writer) wr = CE_FN(writer_of)(along, n);
    /* streaming needs element-aligned g to reach a 64-byte boundary */
    const int stream = CE_HAVE_STREAM && along->stream && ((uintptr_t)along->g % sizeof(T)) == 0;
#define CE_SG(weighted, stream)                                                                        \
    CE_FN(stats_along)(x, n, 0, 0, NULL, NULL, 0, next, (CT *)ev, 1, out, &wr, 1, weighted, stream)
    if (along->w) {
        if (stream) CE_SG(1, 1);
        else CE_SG(1, 0);
    } else {
        if (stream) CE_SG(0, 1);
        else CE_SG(0, 0);
    }
#undef CE_SG
    out->wtotal = out->wsum = out->qsum = out->qysum = 0.0;
    if (want_wsum)
        CE_FN(factor_sums)(x, NULL, n, 0.0, (const CT *)wv, ce_stats_ref(out->max), &out->wtotal, &out->wsum);
}

static void CE_FN(ce_stats_ahead)(const void *xv, int64_t n, double max, const void *aheadv, const void *nextv,
                                  ce_stats *out, double *ahead_max)
{
    const T *x = (const T *)xv, *ahead = (const T *)aheadv;
    const V zero = VOP(set1)(0);
    if (!x) {
        *ahead_max = CE_FN(stats_max)(ahead, n, NULL, zero, zero, 0);
        return;
    }
    CT am;
    CE_FN(stats_along)(x, n, (CT)max, 1, ahead, &am, 1, (const T *)nextv, NULL, 0, out, NULL, 0, 0, 0);
    *ahead_max = am;
    out->wtotal = out->wsum = out->qsum = out->qysum = 0.0;
}

typedef struct {
    V cap, inv_cap, shift, a, b, bq, b0; /* b for hard targets, bq and b0 for soft (q) */
} CE_FN(grad_consts);

/* dy/dx = 1 - tanh(u)^2 under the softcap (u = x/softcap, th = tanh(u)). Beyond |u| = 1 it is
 * computed as 4e/(1 + e)^2 with e = exp(-2|u|), in the vectors that have such lanes only:
 * where tanh saturates, 1 - th^2 would keep little more than the rounding of th. */
CE_INLINE V CE_FN(cap_deriv)(V u, V th)
{
    const V one = VOP(set1)(1), au = VOP(abs)(u);
    V d = VOP(fnma)(th, th, one);
    const M far = VOP(gt)(au, one);
    if (VOP(any)(far)) {
        const V e = VEXP(VOP(mul)(VOP(set1)(-2), au)), one_e = VOP(add)(one, e);
        d = VOP(select)(far, VOP(div)(VOP(mul)(VOP(set1)(4), e), VOP(mul)(one_e, one_e)), d);
    }
    return d;
}

/* (a*exp(y - shift) - b*w) * (1 - tanh(u)^2) for one vector of x (and w), u = x/softcap, or
 * with soft targets (a*exp(y - shift) - w*(bq*q + b0)) * (1 - tanh(u)^2); from_e: src holds
 * the stored exponentials exp(y - shift) (uncapped rows). */
CE_INLINE V CE_FN(grad_vec)(V src, V w, V q, const CE_FN(grad_consts) *c, const int capped, const int weighted,
                            const int soft, const int from_e)
{
    V y = src, u = src, th = src;
    if (capped) {
        u = VOP(mul)(src, c->inv_cap);
        th = VTANH(u);
        y = VOP(mul)(c->cap, th);
    }
    const V b = soft ? VOP(fma)(c->bq, q, c->b0) : c->b;
    const V bw = weighted ? VOP(mul)(b, w) : b;
    const V v = VOP(fms)(c->a, from_e ? src : VEXPN(VOP(sub)(y, c->shift)), bw);
    return capped ? VOP(mul)(v, CE_FN(cap_deriv)(u, th)) : v;
}

/* w + j, q + j only when they exist (no arithmetic on NULL); w_j, q_j, or b's lanes unused.
 * The source: x, or the exponentials e. */
#define CE_W(j) (weighted ? w + (j) : w)
#define CE_WV(j) (weighted ? LDC(w + (j)) : c->b)
#define CE_QV(j) (soft ? LD(q + (j)) : c->b)
#define CE_SRC(j) (from_e ? LDC(e + (j)) : LD(x + (j)))
#define CE_GRAD_AT(j)                                                                                  \
    CE_FN(with_target)(CE_FN(grad_vec)(CE_SRC(j), CE_WV(j), CE_QV(j), c, capped, weighted, soft, from_e), j, t, tv)

/* The first m < VN elements from j on to g. */
CE_INLINE void CE_FN(grad_partial)(const T *x, const CT *e, const CT *w, const T *q, T *g, int64_t j, int m,
                                   const CE_FN(grad_consts) *c, const int capped, const int weighted,
                                   const int soft, const int from_e, int64_t t, CT tv)
{
    const V wv = weighted ? LDCP(w + j, m) : c->b;
    const V qv = soft ? LDP(q + j, m) : c->b;
    const V src = from_e ? LDCP(e + j, m) : LDP(x + j, m);
    STP(g + j, m, CE_FN(with_target)(CE_FN(grad_vec)(src, wv, qv, c, capped, weighted, soft, from_e), j, t, tv));
}

CE_INLINE void CE_FN(grad_impl)(const T *x, const CT *e, const T *q, int64_t n, const T *pf, const CT *w, T *g,
                                const CE_FN(grad_consts) *c, const int capped, const int weighted,
                                const int soft, const int stream, const int from_e, int64_t t, CT tv)
{
    int64_t j = 0;
#if CE_HAVE_STREAM
    if (stream) {
        /* Ordinary stores up to a 64-byte boundary of g, then aligned non-temporal stores. */
        int64_t head = (int64_t)((64 - ((uintptr_t)g & 63)) & 63) / (int64_t)sizeof(T);
        if (head > n) head = n;
        for (; j + VN <= head; j += VN) ST(g + j, CE_GRAD_AT(j));
        if (j < head) {
            CE_FN(grad_partial)(x, e, w, q, g, j, (int)(head - j), c, capped, weighted, soft, from_e, t, tv);
            j = head;
        }
        for (; j + VN <= n; j += VN) {
            CE_PREFETCH(pf + j, VN * sizeof(T), 2);
            STNT(g + j, CE_GRAD_AT(j));
        }
    } else
#endif
    {
        (void)stream;
        for (; j + VN <= n; j += VN) {
            CE_PREFETCH(pf + j, VN * sizeof(T), 2);
            ST(g + j, CE_GRAD_AT(j));
        }
    }
    if (j < n) CE_FN(grad_partial)(x, e, w, q, g, j, (int)(n - j), c, capped, weighted, soft, from_e, t, tv);
}
#undef CE_GRAD_AT
#undef CE_SRC
#undef CE_QV
#undef CE_WV
#undef CE_W

/* The hard- and soft-target gradients, from x or from stored exponentials e: specialised on
 * weights and streaming when uncapped (the hot path), runtime flags under the softcap's tanh. */
CE_INLINE void CE_FN(grad_any)(const T *x, const CT *e, const T *q, int64_t n, const T *next, double softcap,
                               const CT *w, double shift, double a, double b, double bq, double b0, int stream,
                               int64_t t, double tv, T *g, const int soft)
{
    const CE_FN(grad_consts) c = {
        VOP(set1)((CT)softcap), VOP(set1)(softcap > 0 ? (CT)(1.0 / softcap) : (CT)0),
        VOP(set1)((CT)shift),   VOP(set1)((CT)a),
        VOP(set1)((CT)b),       VOP(set1)((CT)bq),
        VOP(set1)((CT)b0),
    };
    /* the next row's segment, prefetched into L2 while this one computes (else the source) */
    const T *pf = next ? next : x ? x : (const T *)(const void *)e;
    /* Streaming needs element-aligned g to reach a 64-byte boundary. */
    stream = CE_HAVE_STREAM && stream && ((uintptr_t)g % sizeof(T)) == 0;
    const int weighted = w != NULL;
#define CE_GRAD_IMPL(capped, weighted, stream, from_e)                                                 \
    CE_FN(grad_impl)(x, e, q, n, pf, w, g, &c, capped, weighted, soft, stream, from_e, t, (CT)tv)
    if (softcap > 0) {
        CE_GRAD_IMPL(1, weighted, stream, 0); /* not the hot path */
    } else if (e) {
        if (stream) {
            if (weighted) CE_GRAD_IMPL(0, 1, 1, 1);
            else CE_GRAD_IMPL(0, 0, 1, 1);
        } else {
            if (weighted) CE_GRAD_IMPL(0, 1, 0, 1);
            else CE_GRAD_IMPL(0, 0, 0, 1);
        }
    } else if (stream) {
        if (weighted) CE_GRAD_IMPL(0, 1, 1, 0);
        else CE_GRAD_IMPL(0, 0, 1, 0);
    } else {
        if (weighted) CE_GRAD_IMPL(0, 1, 0, 0);
        else CE_GRAD_IMPL(0, 0, 0, 0);
    }
#undef CE_GRAD_IMPL
}

static void CE_FN(ce_grad)(const void *xv, int64_t n, const void *next, double softcap, const void *wv,
                           double shift, double a, double b, int stream, int64_t t, double tv, void *gv)
{
    CE_FN(grad_any)((const T *)xv, NULL, NULL, n, (const T *)next, softcap, (const CT *)wv, shift, a, b, 0.0, 0.0,
                    stream, t, tv, (T *)gv, 0);
}

static void CE_FN(ce_grad_soft)(const void *xv, const void *qv, int64_t n, double softcap, const void *wv,
                                double shift, double a, double bq, double b0, int stream, void *gv)
{
    CE_FN(grad_any)((const T *)xv, NULL, (const T *)qv, n, NULL, softcap, (const CT *)wv, shift, a, 0.0, bq, b0,
                    stream, -1, 0.0, (T *)gv, 1);
}

static void CE_FN(ce_grad_exp)(const void *ev, const void *qv, int64_t n, const void *next, const void *wv,
                               double a, double bq, double b0, int stream, int64_t t, double tv, void *gv)
{
    CE_FN(grad_any)(NULL, (const CT *)ev, (const T *)qv, n, (const T *)next, 0.0, (const CT *)wv, 0.0, a, b0, bq,
                    b0, stream, t, tv, (T *)gv, qv != NULL);
}

/* Factor sums over the first m <= VN elements: f = w*q (1 for an absent w or q) into vq,
 * f*(y - ref) into vqy where f != 0 (a zero factor takes no part, even against y = -inf). */
CE_INLINE void CE_FN(factor_sums_vec)(const T *x, const T *q, const CT *w, int m, V cap, V inv_cap, V ref,
                                      V *vq, V *vqy, const int capped, const int weighted, const int has_q)
{
    /* partial loads give f = 0 past m, so those lanes add nothing */
    V y = m == VN ? LD(x) : LDP(x, m);
    V wq = has_q ? (m == VN ? LD(q) : LDP(q, m)) : VOP(maskz)(VOP(lanes)(m), VOP(set1)(1));
    if (capped) y = VOP(mul)(cap, VTANH(VOP(mul)(y, inv_cap)));
    if (weighted) wq = VOP(mul)(m == VN ? LDC(w) : LDCP(w, m), wq);
    *vq = VOP(add)(*vq, wq);
    *vqy = VOP(select)(VOP(neq)(wq, VOP(set1)(0)), VOP(fma)(wq, VOP(sub)(y, ref), *vqy), *vqy);
}

/* sum f and sum f*(y - ref), f = w*q: a pass of its own like the portable one (the segment is
 * in L1/L2 after the stats pass), blocks of CT sums merged in double. */
CE_INLINE void CE_FN(factor_sums_impl)(const T *x, const T *q, int64_t n, double softcap, const CT *w,
                                       double ref, double *sum_f, double *sum_fy, const int capped,
                                       const int weighted, const int has_q)
{
    const V vref = VOP(set1)((CT)ref);
    const V cap = VOP(set1)((CT)softcap);
    const V inv_cap = VOP(set1)(capped ? (CT)(1.0 / softcap) : (CT)0);
    double qs = 0.0, qys = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += CE_BLOCK) {
        const int64_t i1 = n - i0 < CE_BLOCK ? n : i0 + CE_BLOCK;
        V vq0 = VOP(set1)(0), vq1 = vq0, vqy0 = vq0, vqy1 = vq0;
        int64_t j = i0;
#define CE_WQ(j) (weighted ? w + (j) : w)
#define CE_QQ(j) (has_q ? q + (j) : q)
        for (; j + 2 * VN <= i1; j += 2 * VN) { /* two chains hide the add latency */
            CE_FN(factor_sums_vec)(x + j, CE_QQ(j), CE_WQ(j), VN, cap, inv_cap, vref, &vq0, &vqy0, capped,
                                   weighted, has_q);
            CE_FN(factor_sums_vec)(x + j + VN, CE_QQ(j + VN), CE_WQ(j + VN), VN, cap, inv_cap, vref, &vq1,
                                   &vqy1, capped, weighted, has_q);
        }
        for (; j + VN <= i1; j += VN)
            CE_FN(factor_sums_vec)(x + j, CE_QQ(j), CE_WQ(j), VN, cap, inv_cap, vref, &vq0, &vqy0, capped,
                                   weighted, has_q);
        if (j < i1)
            CE_FN(factor_sums_vec)(x + j, CE_QQ(j), CE_WQ(j), (int)(i1 - j), cap, inv_cap, vref, &vq0,
                                   &vqy0, capped, weighted, has_q);
#undef CE_QQ
#undef CE_WQ
        qs += VOP(hsum_d)(VOP(add)(vq0, vq1));
        qys += VOP(hsum_d)(VOP(add)(vqy0, vqy1));
    }
    *sum_f = qs;
    *sum_fy = qys;
}

/* The specialisations of factor_sums_impl: on weights and q when uncapped (the hot path),
 * runtime flags under the softcap's tanh. */
static void CE_FN(factor_sums)(const T *x, const T *q, int64_t n, double softcap, const CT *w, double ref,
                               double *sum_f, double *sum_fy)
{
    if (softcap > 0)
        CE_FN(factor_sums_impl)(x, q, n, softcap, w, ref, sum_f, sum_fy, 1, w != NULL, q != NULL);
    else if (q && w) CE_FN(factor_sums_impl)(x, q, n, softcap, w, ref, sum_f, sum_fy, 0, 1, 1);
    else if (q) CE_FN(factor_sums_impl)(x, q, n, softcap, w, ref, sum_f, sum_fy, 0, 0, 1);
    else if (w) CE_FN(factor_sums_impl)(x, q, n, softcap, w, ref, sum_f, sum_fy, 0, 1, 0);
    else CE_FN(factor_sums_impl)(x, q, n, softcap, w, ref, sum_f, sum_fy, 0, 0, 0);
}

static void CE_FN(ce_stats_soft)(const void *xv, const void *qv, int64_t n, double softcap, const void *wv,
                                 int want_wsum, void *ev, ce_stats *out)
{
    CE_FN(ce_stats)(xv, n, NULL, softcap, wv, want_wsum, ev, out);
    CE_FN(factor_sums)((const T *)xv, (const T *)qv, n, softcap, (const CT *)wv, ce_stats_ref(out->max),
                       &out->qsum, &out->qysum);
}

/* BCE over the first m <= VN elements (see kernels.h): adds l to *acc, stores l and g where
 * wanted. softplus(+-x) = max(+-x, 0) + log1p(e) and sigmoid from the one e = exp(-|x|), which
 * never overflows; the NaN-skipping max gives 0 for a NaN x, as the portable comparisons do,
 * and the NaN comes through e. */
CE_INLINE void CE_FN(bce_vec)(const T *x, const T *t, const CT *w, const CT *pw, const CT *go, V scale, T *l,
                              T *g, int m, V *acc, const int want_l, const int want_g)
{
    const V one = VOP(set1)(1), zero = VOP(set1)(0);
    const V xv = m == VN ? LD(x) : LDP(x, m), tv = m == VN ? LD(t) : LDP(t, m);
    const V e = VEXP(VOP(neg)(VOP(abs)(xv))), lp = VLOG1P(e);
    const V sp_pos = VOP(add)(VOP(max)(xv, zero), lp);
    const V sp_neg = VOP(add)(VOP(max)(VOP(neg)(xv), zero), lp);
    const V pwv = pw ? (m == VN ? LDC(pw) : LDCP(pw, m)) : one;
    const V pt = pw ? VOP(mul)(pwv, tv) : tv;
    /* two non-negative terms for t in [0, 1]: no cancellation */
    V lv = VOP(fma)(VOP(sub)(one, tv), sp_pos, VOP(mul)(pt, sp_neg));
    const V wv = w ? (m == VN ? LDC(w) : LDCP(w, m)) : one;
    if (w) lv = VOP(mul)(wv, lv);
    *acc = m == VN ? VOP(add)(*acc, lv) : VOP(mask_add)(*acc, VOP(lanes)(m), lv);
    if (want_l) {
        if (m == VN) ST(l, lv);
        else STP(l, m, lv);
    }
    if (want_g) {
        const V L = pw ? VOP(fma)(VOP(sub)(pwv, one), tv, one) : one;
        const V sig = VOP(div)(VOP(select)(VOP(ge)(xv, zero), one, e), VOP(add)(one, e));
        V s = go ? (m == VN ? LDC(go) : LDCP(go, m)) : scale;
        if (w) s = VOP(mul)(s, wv);
        const V gv = VOP(mul)(s, VOP(fms)(L, sig, pt));
        if (m == VN) ST(g, gv);
        else STP(g, m, gv);
    }
}

CE_INLINE double CE_FN(bce_impl)(const T *x, const T *t, int64_t n, const CT *w, const CT *pw, const CT *go,
                                 double scale, T *l, T *g, const int want_l, const int want_g)
{
    const V vscale = VOP(set1)((CT)scale);
    double total = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += CE_BLOCK) {
        const int64_t i1 = n - i0 < CE_BLOCK ? n : i0 + CE_BLOCK;
        V acc = VOP(set1)(0);
        int64_t j = i0;
/* m elements at j; no arithmetic on NULL pointers */
#define CE_BCE_AT(j, m)                                                                               \
    CE_FN(bce_vec)(x + (j), t + (j), w ? w + (j) : w, pw ? pw + (j) : pw, go ? go + (j) : go, vscale,  \
                   want_l ? l + (j) : l, want_g ? g + (j) : g, m, &acc, want_l, want_g)
        for (; j + VN <= i1; j += VN) CE_BCE_AT(j, VN);
        if (j < i1) CE_BCE_AT(j, (int)(i1 - j));
#undef CE_BCE_AT
        total += VOP(hsum_d)(acc);
    }
    return total;
}

static double CE_FN(bce)(const void *xv, const void *tv, int64_t n, const void *wv, const void *pwv,
                         const void *gov, double scale, void *lossv, void *gv)
{
    const T *x = (const T *)xv, *t = (const T *)tv;
    const CT *w = (const CT *)wv, *pw = (const CT *)pwv, *go = (const CT *)gov;
    T *l = (T *)lossv, *g = (T *)gv;
    if (g) {
        if (l) return CE_FN(bce_impl)(x, t, n, w, pw, go, scale, l, g, 1, 1);
        return CE_FN(bce_impl)(x, t, n, w, pw, go, scale, l, g, 0, 1);
    }
    if (l) return CE_FN(bce_impl)(x, t, n, w, pw, go, scale, l, g, 1, 0);
    return CE_FN(bce_impl)(x, t, n, w, pw, go, scale, l, g, 0, 0);
}

static void CE_FN(ce_shift)(const void *xv, int64_t n, double shift, double c, void *ov)
{
    const T *x = (const T *)xv;
    T *o = (T *)ov;
    const V vs = VOP(set1)((CT)shift), vc = VOP(set1)((CT)c);
    int64_t j = 0;
    for (; j + VN <= n; j += VN) ST(o + j, VOP(sub)(VOP(sub)(LD(x + j), vs), vc));
    if (j < n) STP(o + j, (int)(n - j), VOP(sub)(VOP(sub)(LDP(x + j, (int)(n - j)), vs), vc));
}

#ifdef CE_ROWS_VEXP
/* The vector exps alone, y[i] = exp(x[i]), for the accuracy tests: the general one, and the
 * softmax's (VEXPN). */
static void CE_FN(vexp)(const T *x, int64_t n, T *y)
{
    int64_t i = 0;
    for (; i + VN <= n; i += VN) ST(y + i, VEXP(LD(x + i)));
    if (i < n) STP(y + i, (int)(n - i), VEXP(LDP(x + i, (int)(n - i))));
}
#endif
#ifdef CE_ROWS_VEXPN
CE_INLINE void CE_FN(vexpn_form)(const T *x, int64_t n, T *y, const int nonpos)
{
#define CE_EXPN_OF(v) (nonpos ? VEXPN_NONPOS(v) : VEXPN(v))
    int64_t i = 0;
    for (; i + VN <= n; i += VN) ST(y + i, CE_EXPN_OF(LD(x + i)));
    if (i < n) STP(y + i, (int)(n - i), CE_EXPN_OF(LDP(x + i, (int)(n - i))));
#undef CE_EXPN_OF
}
static void CE_FN(vexpn)(const T *x, int64_t n, T *y) { CE_FN(vexpn_form)(x, n, y, 0); }
static void CE_FN(vexpn_nonpos)(const T *x, int64_t n, T *y) { CE_FN(vexpn_form)(x, n, y, 1); }
#endif
