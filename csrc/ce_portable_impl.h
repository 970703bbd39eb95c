/* Portable primitives for one dtype; included by ce_portable.c once per dtype with
 *   T (storage type), C (compute type), SUF (dtype suffix), LOAD(p), STORE(p, v),
 *   EXP, TANH (of the compute type).
 * Blocks of CE_BLOCK elements: the capped values are kept in a small buffer so the block max
 * and the block sum read them from L1, and each block's (max, sum) is merged in double. */

#define CE_CAT_(a, b, c) a##_##b##_##c
#define CE_CAT(a, b, c) CE_CAT_(a, b, c)
#define CE_FN(op) CE_CAT(op, SUF, portable)

/* sum_j w_j*q_j into *sum_f and sum_j w_j*q_j*(y_j - ref) into *sum_fy, where w_j*q_j != 0
 * (a zero factor takes no part, even against y_j = -inf); w NULL: w_j = 1, q NULL: q_j = 1. */
static void CE_FN(factor_sums)(const T *x, const T *q, int64_t n, double softcap, const C *w,
                               double ref, double *sum_f, double *sum_fy)
{
    const C cap = (C)softcap, inv_cap = softcap > 0 ? (C)(1.0 / softcap) : (C)0, cr = (C)ref;
    double f = 0.0, fy = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += CE_BLOCK) {
        const int nb = (int)(n - i0 < CE_BLOCK ? n - i0 : CE_BLOCK);
        C bf = 0, bfy = 0;
        for (int j = 0; j < nb; j++) {
            C y = LOAD(x + i0 + j);
            if (softcap > 0) y = cap * TANH(y * inv_cap);
            const C wq = (w ? w[i0 + j] : (C)1) * (q ? LOAD(q + i0 + j) : (C)1);
            bf += wq;
            if (wq != 0) bfy += wq * (y - cr);
        }
        f += (double)bf;
        fy += (double)bfy;
    }
    *sum_f = f;
    *sum_fy = fy;
}

static void CE_FN(ce_stats)(const void *xv, int64_t n, const void *next, double softcap,
                            const void *wv, int want_wsum, void *ev, ce_stats *out)
{
    (void)next; /* the portable path leaves prefetching to the hardware */
    const T *x = (const T *)xv;
    const C *w = (const C *)wv;
    C *e = (C *)ev;
    const C cap = (C)softcap, inv_cap = softcap > 0 ? (C)(1.0 / softcap) : (C)0;
    /* the max of y = cap(x), NaNs skipped */
    C m = (C)-INFINITY;
    for (int64_t j = 0; j < n; j++) {
        C v = LOAD(x + j);
        if (softcap > 0) v = cap * TANH(v * inv_cap);
        if (v > m) m = v;
    }
    /* the exponentials relative to it (to 0 when it is -inf: they are 0, or NaN), kept where e
     * is given, and their sum: blocks summed in the compute type, then in double */
    const C ref = m == (C)-INFINITY ? (C)0 : m;
    double s = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += CE_BLOCK) {
        const int64_t i1 = n - i0 < CE_BLOCK ? n : i0 + CE_BLOCK;
        C bs = 0;
        for (int64_t j = i0; j < i1; j++) {
            C v = LOAD(x + j);
            if (softcap > 0) v = cap * TANH(v * inv_cap);
            v = EXP(v - ref);
            if (e) e[j] = v;
            bs += v;
        }
        s += (double)bs;
    }
    out->max = m;
    out->sum = s;
    out->wtotal = out->wsum = out->qsum = out->qysum = 0.0;
    if (want_wsum)
        CE_FN(factor_sums)(x, NULL, n, softcap, w, ce_stats_ref(m), &out->wtotal, &out->wsum);
}

static void CE_FN(ce_grad_exp)(const void *ev, const void *qv, int64_t n, const void *next, const void *wv,
                               double a, double bq, double b0, int stream, int64_t t, double tv, void *gv)
{
    (void)next;
    (void)stream;
    const C *e = (const C *)ev, *w = (const C *)wv;
    const T *q = (const T *)qv;
    T *g = (T *)gv;
    const C ca = (C)a, cbq = (C)bq, cb0 = (C)b0;
    for (int64_t j = 0; j < n; j++)
        STORE(g + j, ca * e[j] - (w ? w[j] : (C)1) * (q ? cbq * LOAD(q + j) + cb0 : cb0));
    if (t >= 0 && t < n) STORE(g + t, (C)tv);
}

static void CE_FN(ce_grad)(const void *xv, int64_t n, const void *next, double softcap,
                           const void *wv, double shift, double a, double b, int stream,
                           int64_t t, double tv, void *gv)
{
    (void)next;
    (void)stream; /* the portable path leaves stores and prefetches to the compiler */
    const T *x = (const T *)xv;
    const C *w = (const C *)wv;
    T *g = (T *)gv;
    const C cap = (C)softcap, inv_cap = softcap > 0 ? (C)(1.0 / softcap) : (C)0;
    const C cs = (C)shift, ca = (C)a, cb = (C)b;
    for (int64_t j = 0; j < n; j++) {
        C y = LOAD(x + j), d = 1;
        if (softcap > 0) {
            const C u = y * inv_cap, th = TANH(u);
            y = cap * th;
            d = 1 - th * th;
            if (u > 1 || u < -1) { /* as 4e/(1 + e)^2, e = exp(-2|u|): exact where tanh saturates */
                const C e = EXP((C)-2 * (u < 0 ? -u : u));
                d = (C)4 * e / (((C)1 + e) * ((C)1 + e));
            }
        }
        C v = ca * EXP(y - cs) - cb * (w ? w[j] : (C)1);
        STORE(g + j, v * d);
    }
    if (t >= 0 && t < n) STORE(g + t, (C)tv); /* in place, x_t was read at j = t */
}

static void CE_FN(ce_shift)(const void *xv, int64_t n, double shift, double c, void *ov)
{
    const T *x = (const T *)xv;
    T *o = (T *)ov;
    const C cs = (C)shift, cc = (C)c;
    for (int64_t j = 0; j < n; j++) STORE(o + j, (LOAD(x + j) - cs) - cc);
}

static void CE_FN(ce_stats_soft)(const void *xv, const void *qv, int64_t n, double softcap,
                                 const void *wv, int want_wsum, void *ev, ce_stats *out)
{
    CE_FN(ce_stats)(xv, n, NULL, softcap, wv, want_wsum, ev, out);
    /* The q sums need the max, so they are a pass of their own over a segment that is in
     * L1/L2 already. */
    CE_FN(factor_sums)((const T *)xv, (const T *)qv, n, softcap, (const C *)wv,
                       ce_stats_ref(out->max), &out->qsum, &out->qysum);
}

static void CE_FN(ce_grad_soft)(const void *xv, const void *qv, int64_t n, double softcap,
                                const void *wv, double shift, double a, double bq, double b0,
                                int stream, void *gv)
{
    (void)stream;
    const T *x = (const T *)xv;
    const T *q = (const T *)qv;
    const C *w = (const C *)wv;
    T *g = (T *)gv;
    const C cap = (C)softcap, inv_cap = softcap > 0 ? (C)(1.0 / softcap) : (C)0;
    const C cs = (C)shift, ca = (C)a, cbq = (C)bq, cb0 = (C)b0;
    for (int64_t j = 0; j < n; j++) {
        C y = LOAD(x + j), d = 1;
        if (softcap > 0) {
            const C u = y * inv_cap, th = TANH(u);
            y = cap * th;
            d = 1 - th * th;
            if (u > 1 || u < -1) { /* as 4e/(1 + e)^2, e = exp(-2|u|): exact where tanh saturates */
                const C e = EXP((C)-2 * (u < 0 ? -u : u));
                d = (C)4 * e / (((C)1 + e) * ((C)1 + e));
            }
        }
        const C v = ca * EXP(y - cs) - (w ? w[j] : (C)1) * (cbq * LOAD(q + j) + cb0);
        STORE(g + j, v * d);
    }
}

static double CE_FN(bce)(const void *xv, const void *tv, int64_t n, const void *wv, const void *pwv,
                         const void *gov, double scale, void *lossv, void *gv)
{
    const T *x = (const T *)xv;
    const T *t = (const T *)tv;
    const C *w = (const C *)wv, *pw = (const C *)pwv, *go = (const C *)gov;
    T *l = (T *)lossv, *g = (T *)gv;
    const C cscale = (C)scale;
    double total = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += CE_BLOCK) {
        const int64_t i1 = n - i0 < CE_BLOCK ? n : i0 + CE_BLOCK;
        C block = 0;
        for (int64_t j = i0; j < i1; j++) {
            const C xj = LOAD(x + j), tj = LOAD(t + j);
            const C wj = w ? w[j] : (C)1, pwj = pw ? pw[j] : (C)1;
            const C L = 1 + (pwj - 1) * tj;
            const C e = EXP(-FABS(xj)), log1p_e = LOG1P(e); /* e in (0, 1]: never overflows */
            const C sp_pos = (xj > 0 ? xj : (C)0) + log1p_e;  /* log(1 + e^x)  = -log(1 - sigmoid) */
            const C sp_neg = (xj < 0 ? -xj : (C)0) + log1p_e; /* log(1 + e^-x) = -log sigmoid */
            const C sig = xj >= 0 ? 1 / (1 + e) : e / (1 + e);
            /* two non-negative terms for t in [0, 1]: no cancellation, unlike (1 - t) x + L sp_neg */
            const C lj = wj * ((1 - tj) * sp_pos + pwj * tj * sp_neg);
            block += lj;
            if (l) STORE(l + j, lj);
            if (g) STORE(g + j, (go ? go[j] : cscale) * wj * (L * sig - pwj * tj));
        }
        total += (double)block;
    }
    return total;
}

#undef CE_FN
#undef CE_CAT
#undef CE_CAT_
