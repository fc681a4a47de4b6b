# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: language_level=3
"""Compiled pooling kernels, called by :mod:`pooling_lib.cython_tier` (never by users directly).

Every kernel takes C-contiguous arrays that the tier has allocated and checked, releases the GIL and shares its
outer loop among ``num_threads`` OpenMP threads (``prange``). The NCHW kernels of the calls the benchmark times
(:func:`extremum_nchw`, :func:`extremum_index_nchw`, :func:`max_backward_indices`, :func:`avg_nchw`,
:func:`avg_backward_nchw`) take ndarrays and check them in C, which is quicker to enter (the fixed cost of every
call, see :func:`extremum_nchw`); the others take typed memoryviews and check how the arrays' shapes fit together
(:func:`_check_dims`). Inputs are ``float`` or ``double`` (the fused type ``floating``); indices are ``int64``.
The kernels follow the naive tier's rules to the bit:

* max (min) pooling: a running best that starts at -inf (+inf) with the index of the window's first real cell and
  is replaced by a tap ``v`` when ``v > best`` (``v < best``) or ``v != v`` (NaN); padding is never read;
* backward: each window's gradient is added to its winner, window after window in row-major order, and all
  the windows that can touch one cell are handled by one thread;
* average pooling: the real cells are summed in the input dtype in row-major tap order, starting from 0, and
  the sum is divided once by the divisor converted to the dtype (no reciprocal, no fused multiply-add).

Layout. NCHW kernels run over planes ``n * C + c``; per output row they fold one input row at a time into a
row of running bests, the innermost loop running over the windows (vectorised, stride 1 or 2). NHWC kernels
(input ``(N, H, W, C)`` in memory) run over blocks of output rows and keep their innermost loop on the
contiguous channel axis.

Speed. The block at the top is the readable kernel the book's chapter 8 ends on; the tier calls it for NCHW
max pooling with indices when a window's taps lie too far apart for the fast path (an offset of 2**24 or more
in float32, 2**31 in float64).
The other paths are specialised, without changing a single result:

* a block (a plane, or the rows under some output rows) is scanned for NaN first; where there is none the
  rule reduces to ``v > best``, a single max instruction, and a winner is the first tap equal to the maximum.
  The rules are "tag" types of the fused type ``rule_t``, so Cython writes one C function per rule and the C
  compiler sees a fixed rule in every loop. An NCHW plane kernel prefetches the next plane while it works, so
  that plane's scan finds it in the cache instead of waiting for memory;
* 2x2 stride-2 windows and 3x3 stride-2 windows get straight-line code (all taps in one pass); windows cut
  by the padding are handled apart, so the main loops never test for it. With AVX2 the 2x2 forward takes 8
  (float32) or 4 (float64) windows at a time, and tests each block for NaN instead of each plane;
* winners are tracked as tap offsets held in the float type (same vector width as the values) and the
  backward adds each gradient to its winner in the same pass: one read of ``x``, one write of ``grad_x``;
* the average backward of 3x3 stride-2 padding-1 windows writes each gradient row once, from the shares of the
  one or two window rows over it, each cell's shares added from 0 in window order (:func:`_avg_row_3x3s2`), with
  no zeroing pass and no read-modify-write;
* the forward with indices runs the same winner search; the backward from indices (PyTorch's) and the average
  backward build each plane of a large gradient row by row (2x2 stride 2, and for max pooling 3x3 stride 2
  padding 1) or in a cached buffer, and write it with streaming stores, which skip the read of each line that an
  ordinary store makes first.
"""

# --- BEGIN CHAPTER 8 KERNEL ---
cimport cython
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
@cython.initializedcheck(False)
def max_pool2d_nchw(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, int64_t[:, :, :, ::1] indices,
                    int kernel_h, int kernel_w, int stride_h, int stride_w,
                    int pad_h, int pad_w, int dilation_h, int dilation_w, int num_threads=1):
    """Max pooling of a C-contiguous NCHW batch ``x``, with the index of every window's winner.

    The caller allocates ``out`` (float, like ``x``) and ``indices`` (int64), both of the output shape
    ``(N, C, out_h, out_w)``; this function fills them. ``out[n, c, i, j]`` is the largest value of window
    ``(i, j)`` of plane ``(n, c)``, and ``indices[n, c, i, j]`` is its flat position ``h * W + w`` in the
    unpadded plane. Padding is never read: each window's tap range is clipped to the plane. The running
    maximum starts at -inf with the index of the window's first real cell, and a tap ``v`` replaces it when
    ``v > best or v != v`` (larger, or NaN): the first maximum wins a tie and a NaN always wins. The GIL is
    released and the ``N * C`` planes are shared among ``num_threads`` OpenMP threads.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t out_h = out.shape[2], out_w = out.shape[3]
    cdef Py_ssize_t plane, n, c, i, j, a, b, h, w, h0, w0, a_lo, a_hi, b_lo, b_hi
    cdef int64_t winner
    cdef floating best, v
    for plane in prange(N * C, nogil=True, schedule="guided", num_threads=num_threads):
        n = plane // C
        c = plane % C
        for i in range(out_h):
            h0 = i * stride_h - pad_h                  # row of the window's first tap (may be in the padding)
            a_lo = 0                                   # first tap row inside the plane ...
            if h0 < 0:
                a_lo = (-h0 + dilation_h - 1) // dilation_h
            a_hi = min(kernel_h, (H - h0 + dilation_h - 1) // dilation_h)   # ... and one past the last
            for j in range(out_w):
                w0 = j * stride_w - pad_w
                b_lo = 0
                if w0 < 0:
                    b_lo = (-w0 + dilation_w - 1) // dilation_w
                b_hi = min(kernel_w, (W - w0 + dilation_w - 1) // dilation_w)
                best = -INFINITY
                winner = (h0 + a_lo * dilation_h) * W + (w0 + b_lo * dilation_w)
                for a in range(a_lo, a_hi):
                    h = h0 + a * dilation_h
                    for b in range(b_lo, b_hi):
                        w = w0 + b * dilation_w
                        v = x[n, c, h, w]
                        if v > best or v != v:
                            best = v
                            winner = h * W + w
                out[n, c, i, j] = best
                indices[n, c, i, j] = winner
# --- END CHAPTER 8 KERNEL ---

from cython.parallel cimport parallel, threadid
cimport numpy as cnp
from libc.stdint cimport int32_t, uint64_t
from libc.string cimport memcpy, memset

cnp.import_array()


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int pl_openmp_enabled(void) { return 1; }
    static int pl_default_threads(void) { return omp_get_max_threads(); }
    #else
    static int pl_openmp_enabled(void) { return 0; }
    static int pl_default_threads(void) { return 1; }
    #endif
    """
    int pl_openmp_enabled() noexcept nogil
    int pl_default_threads() noexcept nogil


cdef extern from *:
    """
    static int pl_cpu_has_avx2(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") != 0;   /* also checks that the OS saves the AVX registers */
    #else
        return 0;
    #endif
    }
    """
    int pl_cpu_has_avx2() noexcept nogil


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define PL_PREFETCH(p) __builtin_prefetch((const void*) (p), 0, 3)
    #else
    #define PL_PREFETCH(p) ((void) (p))
    #endif
    """
    void PL_PREFETCH(const void* p) noexcept nogil

cdef extern from *:
    """
    /* One 2x2 window of adjacent NHWC pixels (rows p0 and p1, C channels per pixel), for every channel: the
       gradient cells q0 (row p0) and q1 (row p1) get 0 + g[c] at the winner and +0 at the other three cells, as a
       scatter into a zeroed gradient would. The rule handles NaN (a NaN tap wins, the last one taking), as
       _winners_2x2 does. __restrict, and a function of its own (inlined into its caller, GCC 12 loses the
       __restrict): otherwise GCC cannot prove the nine streams apart and keeps the loop scalar, with a branch per
       tap. */
    #define PL_GRAD_2X2_LOOP(T, BETTER) \
        for (c = 0; c < C; c++) { \
            T b = p0[c], v1 = p0[C + c], v2 = p1[c], v3 = p1[C + c], gz; \
            int t1, t2, t3; \
            t1 = (v1 BETTER b) | (v1 != v1); b = t1 ? v1 : b; \
            t2 = (v2 BETTER b) | (v2 != v2); b = t2 ? v2 : b; \
            t3 = (v3 BETTER b) | (v3 != v3); \
            gz = zero + g[c];          /* here, not with the loads: there GCC 12 no longer if-converts the loop */ \
            q1[C + c] = t3 ? gz : zero; \
            q1[c] = (t3 | !t2) ? zero : gz; \
            q0[C + c] = (t3 | t2 | !t1) ? zero : gz; \
            q0[c] = (t3 | t2 | t1) ? zero : gz; \
        }
    #if defined(__GNUC__) || defined(__clang__)
    #define PL_NOINLINE __attribute__((noinline))
    #define PL_INLINE inline __attribute__((always_inline))
    #elif defined(_MSC_VER)
    #define PL_NOINLINE __declspec(noinline)
    #define PL_INLINE __forceinline
    #else
    #define PL_NOINLINE
    #define PL_INLINE inline
    #endif
    #define PL_GRAD_2X2(NAME, T) \
    static PL_NOINLINE void NAME(const T* __restrict p0, const T* __restrict p1, const T* __restrict g, \
                                 T* __restrict q0, T* __restrict q1, Py_ssize_t C, int minimum) { \
        const T zero = 0; \
        Py_ssize_t c; \
        if (minimum) { PL_GRAD_2X2_LOOP(T, <) } else { PL_GRAD_2X2_LOOP(T, >) } \
    }
    PL_GRAD_2X2(pl_grad_2x2_f32, float)
    PL_GRAD_2X2(pl_grad_2x2_f64, double)
    """
    void pl_grad_2x2_f32(const float* p0, const float* p1, const float* g, float* q0, float* q1, Py_ssize_t C,
                         int minimum) noexcept nogil
    void pl_grad_2x2_f64(const double* p0, const double* p1, const double* g, double* q0, double* q1, Py_ssize_t C,
                         int minimum) noexcept nogil

cdef extern from *:
    """
    /* g when the float t equals code, else +0: a select through the bits (t and code are whole numbers, never -0 or
       NaN, so bit equality is float equality). Written with integer masks because GCC, which assumes by default
       that a float comparison may trap, will not vectorise a loop with "t == code ? g : 0" in it. */
    #include <stdint.h>
    #include <string.h>
    #define PL_BIT_SELECTS(SUFFIX, T, I) \
    static inline T pl_pick_##SUFFIX(T g, T t, T code) { \
        I gi, ti, ci; \
        memcpy(&gi, &g, sizeof gi); memcpy(&ti, &t, sizeof ti); memcpy(&ci, &code, sizeof ci); \
        gi &= -(I) (ti == ci); \
        memcpy(&g, &gi, sizeof g); \
        return g; \
    } \
    /* a if cond else b, without a branch (for a select on a data-dependent float comparison in scalar code, \
       which GCC compiles to a branch that the CPU mispredicts about half the time) */ \
    static inline T pl_sel_##SUFFIX(int cond, T a, T b) { \
        I ai, bi, m = -(I) (cond != 0); \
        memcpy(&ai, &a, sizeof ai); memcpy(&bi, &b, sizeof bi); \
        ai = (ai & m) | (bi & ~m); \
        memcpy(&a, &ai, sizeof a); \
        return a; \
    }
    PL_BIT_SELECTS(f32, float, int32_t)
    PL_BIT_SELECTS(f64, double, int64_t)
    /* 1 in the AVX2 build. Two loops run in that build only, because GCC 12 leaves them scalar for SSE2: the NCHW
       3x3 stride-2 gather (pl_pick_f64 needs a 64-bit integer compare, which SSE2 lacks) and pl_grad_2x2_*. */
    #if defined(__AVX2__)
    #define PL_AVX2 1
    #else
    #define PL_AVX2 0
    #endif
    """
    float pl_pick_f32(float g, float t, float code) noexcept nogil
    double pl_pick_f64(double g, double t, double code) noexcept nogil
    float pl_sel_f32(bint cond, float a, float b) noexcept nogil
    double pl_sel_f64(bint cond, double a, double b) noexcept nogil
    bint PL_AVX2

cdef extern from *:
    """
    /* Winners of 3x3 stride-2 float windows, 8 at a time with AVX2 (in the AVX2 build only; elsewhere the function
       handles no window and the scalar loop does them all). For rows without NaN, lane by lane the same operations as
       the scalar loop of _taps_3x3s2: the nine taps folded with max (min) in scan order, then the first tap equal to
       the result. maxps(v, b) is exactly "v > b ? v : b", the NoNaN rule. */
    #if defined(__AVX2__)
    #include <immintrin.h>
    /* one row's taps q + 2k, q + 2k + 1, q + 2k + 2 of windows k = 0..7, in the lane order 0,1,4,5,2,3,6,7 */
    #define PL_ROW8(p, A, B, C) do { \
        __m256 lo_ = _mm256_loadu_ps(p), hi_ = _mm256_loadu_ps((p) + 8); \
        __m256 lo2_ = _mm256_loadu_ps((p) + 2), hi2_ = _mm256_loadu_ps((p) + 10); \
        A = _mm256_shuffle_ps(lo_, hi_, _MM_SHUFFLE(2, 0, 2, 0)); \
        B = _mm256_shuffle_ps(lo_, hi_, _MM_SHUFFLE(3, 1, 3, 1)); \
        C = _mm256_shuffle_ps(lo2_, hi2_, _MM_SHUFFLE(2, 0, 2, 0)); } while (0)
    #define PL_FOLD8(OP) do {                   /* the nine taps v0 .. v8 folded into b, in scan order */ \
        b = OP(v1, v0); b = OP(v2, b); b = OP(v3, b); b = OP(v4, b); \
        b = OP(v5, b); b = OP(v6, b); b = OP(v7, b); b = OP(v8, b); } while (0)

    /* The first window of the next block of B windows, for windows j.. of [jl, jh) when blocks may start at most
       at window last (their reads stay in the row): j itself when it can, else the block moved back to end at jh
       (overlapping the one before), or -1 when no block is left. */
    static inline Py_ssize_t pl_next_block(Py_ssize_t j, Py_ssize_t jl, Py_ssize_t jh, Py_ssize_t last,
                                           Py_ssize_t B) {
        Py_ssize_t jb;
        if (j + B <= jh && j <= last)
            return j;
        jb = jh - B < last ? jh - B : last;
        return (jb < jl || jb + B <= j) ? -1 : jb;
    }

    /* Windows j in [jl, jh), all nine taps real (rows r0, r0 + W, r0 + 2W; window j starts at column 2j + off).
       A block of 8 windows reads columns up to 2j + off + 17, so it is used only where that stays in the row; the
       last block may be moved back to overlap the one before. Returns the first window it left to the caller.
       With ix NULL, tap[j] gets the winner's tap number; otherwise out[j] gets the window's best value and ix[j]
       the winner's flat index, at + 2j + the tap number (at: the flat index of window 0's first tap). Always
       inlined, so that each of the two callers below gets a copy without the test of ix. */
    static PL_INLINE Py_ssize_t pl_3x3s2_avx2_f32(float* tap, float* out, int64_t* ix, const float* r0, Py_ssize_t W,
                                                  Py_ssize_t jl, Py_ssize_t jh, Py_ssize_t off, int minimum,
                                                  int64_t at) {
        const float fw = (float) W;
        const __m256 o1 = _mm256_set1_ps(1.0f), o2 = _mm256_set1_ps(2.0f), o3 = _mm256_set1_ps(fw);
        const __m256 o4 = _mm256_set1_ps(fw + 1.0f), o5 = _mm256_set1_ps(fw + 2.0f);
        const __m256 o6 = _mm256_set1_ps(2.0f * fw), o7 = _mm256_set1_ps(2.0f * fw + 1.0f);
        const __m256 o8 = _mm256_set1_ps(2.0f * fw + 2.0f), zero = _mm256_setzero_ps();
        Py_ssize_t j = jl, jb, last;
        if (W - 18 - off < 0)
            return jl;
        last = (W - 18 - off) / 2;                  /* the last block start whose reads stay in the row */
        while (j < jh) {
            __m256 v0, v1, v2, v3, v4, v5, v6, v7, v8, b, t;
            const float* p;
            jb = pl_next_block(j, jl, jh, last, 8);
            if (jb < 0)
                return j;
            p = r0 + 2 * jb + off;
            PL_ROW8(p, v0, v1, v2);
            PL_ROW8(p + W, v3, v4, v5);
            PL_ROW8(p + 2 * W, v6, v7, v8);
            if (minimum) PL_FOLD8(_mm256_min_ps); else PL_FOLD8(_mm256_max_ps);
            t = _mm256_blendv_ps(o8, o7, _mm256_cmp_ps(v7, b, _CMP_EQ_OQ));
            t = _mm256_blendv_ps(t, o6, _mm256_cmp_ps(v6, b, _CMP_EQ_OQ));
            t = _mm256_blendv_ps(t, o5, _mm256_cmp_ps(v5, b, _CMP_EQ_OQ));
            t = _mm256_blendv_ps(t, o4, _mm256_cmp_ps(v4, b, _CMP_EQ_OQ));
            t = _mm256_blendv_ps(t, o3, _mm256_cmp_ps(v3, b, _CMP_EQ_OQ));
            t = _mm256_blendv_ps(t, o2, _mm256_cmp_ps(v2, b, _CMP_EQ_OQ));
            t = _mm256_blendv_ps(t, o1, _mm256_cmp_ps(v1, b, _CMP_EQ_OQ));
            t = _mm256_blendv_ps(t, zero, _mm256_cmp_ps(v0, b, _CMP_EQ_OQ));
            /* lanes 0,1,4,5,2,3,6,7 back into window order: swap the middle two 64-bit pairs */
            t = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), _MM_SHUFFLE(3, 1, 2, 0)));
            if (ix == NULL) {
                _mm256_storeu_ps(tap + jb, t);
            } else {                                /* tap numbers are small whole numbers: exact as int32 */
                const __m256i ti = _mm256_cvttps_epi32(t);
                const __m256i base = _mm256_add_epi64(_mm256_set1_epi64x(at + 2 * jb), _mm256_setr_epi64x(0, 2, 4, 6));
                b = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(b), _MM_SHUFFLE(3, 1, 2, 0)));
                _mm256_storeu_ps(out + jb, b);
                _mm256_storeu_si256((__m256i*) (ix + jb), _mm256_add_epi64(base,
                                    _mm256_cvtepi32_epi64(_mm256_castsi256_si128(ti))));
                _mm256_storeu_si256((__m256i*) (ix + jb + 4), _mm256_add_epi64(_mm256_add_epi64(base,
                                    _mm256_set1_epi64x(8)), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(ti, 1))));
            }
            j = jb + 8;
        }
        return j;
    }
    #else
    static Py_ssize_t pl_3x3s2_avx2_f32(float* tap, float* out, int64_t* ix, const float* r0, Py_ssize_t W,
                                        Py_ssize_t jl, Py_ssize_t jh, Py_ssize_t off, int minimum, int64_t at) {
        (void) tap; (void) out; (void) ix; (void) r0; (void) W; (void) jh; (void) off; (void) minimum; (void) at;
        return jl;
    }
    #endif
    static Py_ssize_t pl_taps_3x3s2_avx2(float* tap, const float* r0, Py_ssize_t W, Py_ssize_t jl, Py_ssize_t jh,
                                         Py_ssize_t off, int minimum) {
        return pl_3x3s2_avx2_f32(tap, NULL, NULL, r0, W, jl, jh, off, minimum, 0);
    }
    static Py_ssize_t pl_index_3x3s2_f32(float* out, int64_t* ix, const float* r0, Py_ssize_t W, Py_ssize_t jl,
                                         Py_ssize_t jh, Py_ssize_t off, int minimum, int64_t at) {
        return pl_3x3s2_avx2_f32(NULL, out, ix, r0, W, jl, jh, off, minimum, at);
    }
    """
    Py_ssize_t pl_taps_3x3s2_avx2(float* tap, const float* r0, Py_ssize_t W, Py_ssize_t jl, Py_ssize_t jh,
                                  Py_ssize_t off, int minimum) noexcept nogil
    Py_ssize_t pl_index_3x3s2_f32(float* out, int64_t* ix, const float* r0, Py_ssize_t W, Py_ssize_t jl,
                                  Py_ssize_t jh, Py_ssize_t off, int minimum, int64_t at) noexcept nogil

cdef extern from *:
    """
    /* Winners of one NHWC window for every channel, in the AVX2 build only (elsewhere the functions do no channel
       and the scalar loop does them all), for blocks without NaN. The window's real taps are the pixels
       p + offs[k] (k = 0 .. n-1, in scan order) with tap numbers tnum[k]. Lane by lane, the same operations as the
       scalar loop: the first tap's value is the running best; a tap wins when v > best (v < best), and then its
       value becomes the best (maxps(v, b) is exactly "v > b ? v : b") and its number the winner. The bests and
       winners of 4 vectors of channels stay in registers across all the taps. Returns the first channel left to
       the caller. */
    #if defined(__AVX2__)
    #include <immintrin.h>
    #define PL_NHWC_TAPS(NAME, T, V, LANES, LOAD, STORE, SET1, MAX, MIN, CMP, BLEND) \
    static Py_ssize_t NAME(T* tap, const T* p, const Py_ssize_t* offs, const T* tnum, Py_ssize_t n, \
                           Py_ssize_t C, int minimum) { \
        Py_ssize_t c = 0, k; \
        for (; c + 4 * LANES <= C; c += 4 * LANES) { \
            const T* q = p + offs[0] + c; \
            V b0 = LOAD(q), b1 = LOAD(q + LANES), b2 = LOAD(q + 2 * LANES), b3 = LOAD(q + 3 * LANES); \
            V t0 = SET1(tnum[0]), t1 = t0, t2 = t0, t3 = t0; \
            for (k = 1; k < n; k++) { \
                const V t = SET1(tnum[k]); \
                V v0, v1, v2, v3; \
                q = p + offs[k] + c; \
                v0 = LOAD(q); v1 = LOAD(q + LANES); v2 = LOAD(q + 2 * LANES); v3 = LOAD(q + 3 * LANES); \
                if (minimum) { \
                    t0 = BLEND(t0, t, CMP(v0, b0, _CMP_LT_OQ)); b0 = MIN(v0, b0); \
                    t1 = BLEND(t1, t, CMP(v1, b1, _CMP_LT_OQ)); b1 = MIN(v1, b1); \
                    t2 = BLEND(t2, t, CMP(v2, b2, _CMP_LT_OQ)); b2 = MIN(v2, b2); \
                    t3 = BLEND(t3, t, CMP(v3, b3, _CMP_LT_OQ)); b3 = MIN(v3, b3); \
                } else { \
                    t0 = BLEND(t0, t, CMP(v0, b0, _CMP_GT_OQ)); b0 = MAX(v0, b0); \
                    t1 = BLEND(t1, t, CMP(v1, b1, _CMP_GT_OQ)); b1 = MAX(v1, b1); \
                    t2 = BLEND(t2, t, CMP(v2, b2, _CMP_GT_OQ)); b2 = MAX(v2, b2); \
                    t3 = BLEND(t3, t, CMP(v3, b3, _CMP_GT_OQ)); b3 = MAX(v3, b3); \
                } \
            } \
            STORE(tap + c, t0); STORE(tap + c + LANES, t1); STORE(tap + c + 2 * LANES, t2); \
            STORE(tap + c + 3 * LANES, t3); \
        } \
        for (; c + LANES <= C; c += LANES) { \
            V b0 = LOAD(p + offs[0] + c), t0 = SET1(tnum[0]); \
            for (k = 1; k < n; k++) { \
                const V v0 = LOAD(p + offs[k] + c), t = SET1(tnum[k]); \
                if (minimum) { t0 = BLEND(t0, t, CMP(v0, b0, _CMP_LT_OQ)); b0 = MIN(v0, b0); } \
                else { t0 = BLEND(t0, t, CMP(v0, b0, _CMP_GT_OQ)); b0 = MAX(v0, b0); } \
            } \
            STORE(tap + c, t0); \
        } \
        return c; \
    }
    PL_NHWC_TAPS(pl_nhwc_taps_f32, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps,
                 _mm256_max_ps, _mm256_min_ps, _mm256_cmp_ps, _mm256_blendv_ps)
    PL_NHWC_TAPS(pl_nhwc_taps_f64, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd,
                 _mm256_max_pd, _mm256_min_pd, _mm256_cmp_pd, _mm256_blendv_pd)
    #else
    static Py_ssize_t pl_nhwc_taps_f32(float* tap, const float* p, const Py_ssize_t* offs, const float* tnum,
                                       Py_ssize_t n, Py_ssize_t C, int minimum) {
        (void) tap; (void) p; (void) offs; (void) tnum; (void) n; (void) C; (void) minimum;
        return 0;
    }
    static Py_ssize_t pl_nhwc_taps_f64(double* tap, const double* p, const Py_ssize_t* offs, const double* tnum,
                                       Py_ssize_t n, Py_ssize_t C, int minimum) {
        (void) tap; (void) p; (void) offs; (void) tnum; (void) n; (void) C; (void) minimum;
        return 0;
    }
    #endif
    """
    Py_ssize_t pl_nhwc_taps_f32(float* tap, const float* p, const Py_ssize_t* offs, const float* tnum,
                                Py_ssize_t n, Py_ssize_t C, int minimum) noexcept nogil
    Py_ssize_t pl_nhwc_taps_f64(double* tap, const double* p, const Py_ssize_t* offs, const double* tnum,
                                Py_ssize_t n, Py_ssize_t C, int minimum) noexcept nogil

cdef extern from *:
    """
    /* Averages of one NHWC window for every channel, in the AVX2 build only (elsewhere the functions do no
       channel): the sums of the real taps p + offs[k] (k = 0 .. n-1, in scan order), each starting from +0,
       divided by d. Lane by lane the scalar loop's additions in its order and its one division (no fused
       multiply-add), with the sums of 4 vectors of channels in registers across the taps. Returns the first
       channel left to the caller. */
    #if defined(__AVX2__)
    #include <immintrin.h>
    #define PL_NHWC_MEAN(NAME, T, V, LANES, LOAD, STORE, SET1, ADD, DIV, ZERO) \
    static Py_ssize_t NAME(T* out, const T* p, const Py_ssize_t* offs, Py_ssize_t n, Py_ssize_t C, T d) { \
        const V dv = SET1(d); \
        Py_ssize_t c = 0, k; \
        for (; c + 4 * LANES <= C; c += 4 * LANES) { \
            V s0 = ZERO(), s1 = ZERO(), s2 = ZERO(), s3 = ZERO(); \
            for (k = 0; k < n; k++) { \
                const T* q = p + offs[k] + c; \
                s0 = ADD(s0, LOAD(q)); s1 = ADD(s1, LOAD(q + LANES)); \
                s2 = ADD(s2, LOAD(q + 2 * LANES)); s3 = ADD(s3, LOAD(q + 3 * LANES)); \
            } \
            STORE(out + c, DIV(s0, dv)); STORE(out + c + LANES, DIV(s1, dv)); \
            STORE(out + c + 2 * LANES, DIV(s2, dv)); STORE(out + c + 3 * LANES, DIV(s3, dv)); \
        } \
        for (; c + LANES <= C; c += LANES) { \
            V s0 = ZERO(); \
            for (k = 0; k < n; k++) \
                s0 = ADD(s0, LOAD(p + offs[k] + c)); \
            STORE(out + c, DIV(s0, dv)); \
        } \
        return c; \
    }
    PL_NHWC_MEAN(pl_nhwc_mean_f32, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps,
                 _mm256_add_ps, _mm256_div_ps, _mm256_setzero_ps)
    PL_NHWC_MEAN(pl_nhwc_mean_f64, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd,
                 _mm256_add_pd, _mm256_div_pd, _mm256_setzero_pd)
    #else
    static Py_ssize_t pl_nhwc_mean_f32(float* out, const float* p, const Py_ssize_t* offs, Py_ssize_t n,
                                       Py_ssize_t C, float d) {
        (void) out; (void) p; (void) offs; (void) n; (void) C; (void) d;
        return 0;
    }
    static Py_ssize_t pl_nhwc_mean_f64(double* out, const double* p, const Py_ssize_t* offs, Py_ssize_t n,
                                       Py_ssize_t C, double d) {
        (void) out; (void) p; (void) offs; (void) n; (void) C; (void) d;
        return 0;
    }
    #endif
    """
    Py_ssize_t pl_nhwc_mean_f32(float* out, const float* p, const Py_ssize_t* offs, Py_ssize_t n, Py_ssize_t C,
                                float d) noexcept nogil
    Py_ssize_t pl_nhwc_mean_f64(double* out, const double* p, const Py_ssize_t* offs, Py_ssize_t n, Py_ssize_t C,
                                double d) noexcept nogil


cdef extern from *:
    """
    /* The values of 2x2 stride-2 windows (no padding), 8 (float) or 4 (double) at a time, in the AVX2 build only
       (elsewhere the functions do no window and the scalar loop does them all). Window j's taps are r0[2j],
       r0[2j + 1], r1[2j], r1[2j + 1], in that order, under the rule with NaN: a tap v replaces the running best b
       when v > b (v < b) or v is NaN. maxps(v, b) is exactly "v > b ? v : b", so where no tap of the block is NaN
       three maxps give the rule's bits (a tie keeps the earlier tap, so -0 and +0 come out as the scalar loop
       has them); a block with a NaN blends each NaN tap in after its maxps, as the rule does. The last block may
       be moved back to overlap the one before (its windows get the same values twice). Returns the first window
       left to the caller: n, or 0 when the row has fewer windows than a block. */
    #if defined(__AVX2__)
    #include <immintrin.h>
    #define PL_VALS_2X2(NAME, T, V, LANES, LOAD, STORE, MAX, MIN, CMP, BLEND, OR, TESTZ, DEAL_LO, DEAL_HI, ORDER) \
    static Py_ssize_t NAME(T* out, const T* r0, const T* r1, Py_ssize_t n, int minimum) { \
        Py_ssize_t j = 0, jb; \
        if (n < LANES) \
            return 0; \
        while (j < n) { \
            V a0, a1, c0, c1, t0, t1, t2, t3, b; \
            jb = j + LANES <= n ? j : n - LANES; \
            a0 = LOAD(r0 + 2 * jb); a1 = LOAD(r0 + 2 * jb + LANES); \
            c0 = LOAD(r1 + 2 * jb); c1 = LOAD(r1 + 2 * jb + LANES); \
            t0 = DEAL_LO(a0, a1); t1 = DEAL_HI(a0, a1); t2 = DEAL_LO(c0, c1); t3 = DEAL_HI(c0, c1); \
            if (minimum) { b = MIN(t1, t0); b = MIN(t2, b); b = MIN(t3, b); } \
            else { b = MAX(t1, t0); b = MAX(t2, b); b = MAX(t3, b); } \
            if (!TESTZ(OR(CMP(a0, a1, _CMP_UNORD_Q), CMP(c0, c1, _CMP_UNORD_Q)))) { \
                b = t0; \
                b = BLEND(minimum ? MIN(t1, b) : MAX(t1, b), t1, CMP(t1, t1, _CMP_UNORD_Q)); \
                b = BLEND(minimum ? MIN(t2, b) : MAX(t2, b), t2, CMP(t2, t2, _CMP_UNORD_Q)); \
                b = BLEND(minimum ? MIN(t3, b) : MAX(t3, b), t3, CMP(t3, t3, _CMP_UNORD_Q)); \
            } \
            STORE(out + jb, ORDER(b)); \
            j = jb + LANES; \
        } \
        return n; \
    }
    /* float: shuffle_ps deals the even and odd taps of windows 0,1,4,5,2,3,6,7; a swap of the middle two 64-bit
       pairs puts them back in order. double: unpacklo/hi deal windows 0,2,1,3; the same swap. */
    #define PL_TESTZ_PS(m) _mm256_testz_ps(m, m)
    #define PL_TESTZ_PD(m) _mm256_testz_pd(m, m)
    #define PL_EVEN_PS(a, b) _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))
    #define PL_ODD_PS(a, b) _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))
    #define PL_ORDER_PS(v) _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)))
    #define PL_ORDER_PD(v) _mm256_permute4x64_pd(v, _MM_SHUFFLE(3, 1, 2, 0))
    PL_VALS_2X2(pl_vals_2x2_f32, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_max_ps, _mm256_min_ps,
                _mm256_cmp_ps, _mm256_blendv_ps, _mm256_or_ps, PL_TESTZ_PS, PL_EVEN_PS, PL_ODD_PS, PL_ORDER_PS)
    PL_VALS_2X2(pl_vals_2x2_f64, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_max_pd,
                _mm256_min_pd, _mm256_cmp_pd, _mm256_blendv_pd, _mm256_or_pd, PL_TESTZ_PD, _mm256_unpacklo_pd,
                _mm256_unpackhi_pd, PL_ORDER_PD)
    #else
    static Py_ssize_t pl_vals_2x2_f32(float* out, const float* r0, const float* r1, Py_ssize_t n, int minimum) {
        (void) out; (void) r0; (void) r1; (void) n; (void) minimum;
        return 0;
    }
    static Py_ssize_t pl_vals_2x2_f64(double* out, const double* r0, const double* r1, Py_ssize_t n, int minimum) {
        (void) out; (void) r0; (void) r1; (void) n; (void) minimum;
        return 0;
    }
    #endif
    """
    Py_ssize_t pl_vals_2x2_f32(float* out, const float* r0, const float* r1, Py_ssize_t n, int minimum) noexcept nogil
    Py_ssize_t pl_vals_2x2_f64(double* out, const double* r0, const double* r1, Py_ssize_t n,
                               int minimum) noexcept nogil


def openmp_enabled():
    """True when the extension was compiled with OpenMP (``prange`` then really runs in parallel)."""
    return bool(pl_openmp_enabled())


def default_num_threads():
    """OpenMP's default team size (``omp_get_max_threads()``), or 1 without OpenMP."""
    return pl_default_threads()


def parallel_copy(const floating[::1] src, floating[::1] dst, int num_threads):
    """Copy ``src`` into ``dst`` (same length) in ``num_threads`` contiguous slabs at once: the benchmark's
    memory-bandwidth reference, run by the same OpenMP threads as the kernels."""
    cdef Py_ssize_t n = src.shape[0], slab, t, lo, hi, parts = max(1, num_threads)
    if dst.shape[0] != n:
        raise ValueError(f"dst must have the length of src ({n}), got {dst.shape[0]}")
    if n == 0:
        return
    slab = (n + parts - 1) // parts
    with nogil:
        for t in prange(parts, num_threads=parts, schedule="static"):
            lo = t * slab
            hi = min(n, lo + slab)
            if lo < hi:
                memcpy(&dst[lo], &src[lo], (hi - lo) * sizeof(floating))


def cpu_has_avx2():
    """True when this CPU (and its operating system) can run the AVX2 build ``_kernels_avx2``."""
    return bool(pl_cpu_has_avx2())


# ----------------------------------------------------------------------------------------------------------------
# The update rule, chosen at compile time. A kernel scans its data for NaN first; where there is none, the
# rule without the NaN test gives the same bits and compiles to a single max (min) instruction. The four
# rules are empty "tag" types of one fused type, so Cython writes one specialised C function per rule (and
# per float type), and the C compiler sees a fixed rule in every loop, whatever it decides to inline.

ctypedef struct MaxRule:
    char unused
ctypedef struct MinRule:
    char unused
ctypedef struct MaxRuleNoNaN:
    char unused
ctypedef struct MinRuleNoNaN:
    char unused

ctypedef fused rule_t:
    MaxRule
    MinRule
    MaxRuleNoNaN
    MinRuleNoNaN


cdef inline bint _wins(floating v, floating best, rule_t* rule) noexcept nogil:
    """True when the tap value v replaces the running best."""
    if rule_t is MaxRule:
        return (v > best) | (v != v)
    elif rule_t is MinRule:
        return (v < best) | (v != v)
    elif rule_t is MaxRuleNoNaN:
        return v > best
    else:
        return v < best


cdef inline void _step(floating v, floating* best, floating* tap, floating t, rule_t* rule) noexcept nogil:
    """One tap of a window, tracking its winner: when ``v`` wins over ``*best`` under the rule, ``v`` becomes
    ``*best`` and the tap's number ``t`` becomes ``*tap`` (as selects, not a branch)."""
    cdef bint take = _wins(v, best[0], rule)
    best[0] = v if take else best[0]
    tap[0] = t if take else tap[0]


cdef inline floating _winner9(floating v0, floating v1, floating v2, floating v3, floating v4, floating v5,
                              floating v6, floating v7, floating v8, floating t1, floating t2, floating t3,
                              floating t4, floating t5, floating t6, floating t7, floating t8,
                              rule_t* rule) noexcept nogil:
    """The winner of nine taps v0 .. v8 (in scan order) under a NoNaN rule, as its tap number (0 for v0, t1 for
    v1, ...): the best value is a plain max (min), and the winner is the first tap equal to it. Straight-line
    selects, which vectorise across windows or channels."""
    cdef floating bst = v0, tp = t8
    bst = v1 if _wins(v1, bst, rule) else bst
    bst = v2 if _wins(v2, bst, rule) else bst
    bst = v3 if _wins(v3, bst, rule) else bst
    bst = v4 if _wins(v4, bst, rule) else bst
    bst = v5 if _wins(v5, bst, rule) else bst
    bst = v6 if _wins(v6, bst, rule) else bst
    bst = v7 if _wins(v7, bst, rule) else bst
    bst = v8 if _wins(v8, bst, rule) else bst
    tp = t7 if v7 == bst else tp
    tp = t6 if v6 == bst else tp
    tp = t5 if v5 == bst else tp
    tp = t4 if v4 == bst else tp
    tp = t3 if v3 == bst else tp
    tp = t2 if v2 == bst else tp
    tp = t1 if v1 == bst else tp
    return 0 if v0 == bst else tp


cdef inline bint _is_min(rule_t* rule) noexcept nogil:
    return rule_t is MinRule or rule_t is MinRuleNoNaN


cdef inline bint _takes(floating v, floating best, bint minimum) noexcept nogil:
    """The full rule with a run-time choice of max or min (for the less travelled paths)."""
    if minimum:
        return (v < best) | (v != v)
    return (v > best) | (v != v)


cdef inline bint _has_nan(const floating* p, Py_ssize_t n) noexcept nogil:
    """True when p[0 .. n-1] holds a NaN. (An OR of ``v != v`` tests: integer ORs, which the compiler may
    reorder and so turns into vector operations, in an integer as wide as the float so that no lane needs
    repacking; a sum of ``v - v`` would be a chain of dependent adds.)"""
    cdef Py_ssize_t k
    cdef int32_t found32 = 0
    cdef int64_t found64 = 0
    if floating is float:
        for k in range(n):
            found32 |= p[k] != p[k]
        return found32 != 0
    else:
        for k in range(n):
            found64 |= p[k] != p[k]
        return found64 != 0


cdef inline void _prefetch_part(const floating* nxt, Py_ssize_t n, Py_ssize_t part, Py_ssize_t parts) noexcept nogil:
    """Ask the CPU to start loading part ``part`` of ``parts`` of nxt[0 .. n-1] into the cache (nothing if nxt is
    NULL). A plane kernel calls it once per output row for the next plane, whose NaN scan then finds the plane in
    the cache instead of waiting for memory."""
    cdef const char* c
    cdef Py_ssize_t k, lo, hi
    if nxt == NULL:
        return
    c = <const char*> nxt
    lo = part * n // parts * sizeof(floating)
    hi = (part + 1) * n // parts * sizeof(floating)
    for k in range(lo, hi, 64):
        PL_PREFETCH(c + k)


cdef enum:
    PF_AHEAD = 2   # window rows ahead that the NCHW loops prefetch (4 measured no better)


cdef inline void _prefetch_rows(const floating* base, Py_ssize_t r_lo, Py_ssize_t r_hi, Py_ssize_t W,
                                Py_ssize_t rows) noexcept nogil:
    """Ask the CPU to start loading rows r_lo .. r_hi-1 (``W`` values each, row 0 at ``base``) into the cache,
    keeping to rows 0 .. rows-1: the part of the array the loop may touch (a plane, or a plane and the next), so
    that no address beyond it is formed.

    The NCHW forward loops read their input as one sequential stream, and on a cold cache one core's hardware
    prefetcher does not keep enough loads in flight for it: the 2x2 max forward, timed after reading 128 MiB of
    other data, took 0.82x its time when each output row first asked for the input rows of the window row
    ``PF_AHEAD`` further on (0.84-0.90x for the average forward).

    The NCHW max backward (2x2 stride 2, and 3x3 stride 2 padding 1) asks instead for the gradient rows it will
    write ``PF_AHEAD`` window rows further on: writing a line first reads it in, and those reads came one at a
    time. With it the backward took 0.93-0.96x its time (2x2) and 0.88x (float32) and 0.93x (float64) for 3x3.
    Prefetching its input as the forward does made the 2x2 backward 1.13-1.15x slower."""
    cdef const char* c = <const char*> base
    cdef Py_ssize_t k
    if r_lo < 0:
        r_lo = 0
    if r_hi > rows:
        r_hi = rows
    for k in range(r_lo * W * <Py_ssize_t> sizeof(floating), r_hi * W * <Py_ssize_t> sizeof(floating), 64):
        PL_PREFETCH(c + k)


# ----------------------------------------------------------------------------------------------------------------
# Geometry helpers

cdef inline Py_ssize_t _tap_lo(Py_ssize_t start, Py_ssize_t step) noexcept nogil:
    """First t >= 0 with start + t * step >= 0."""
    if start >= 0:
        return 0
    return (-start + step - 1) // step


cdef inline Py_ssize_t _tap_hi(Py_ssize_t start, Py_ssize_t count, Py_ssize_t step, Py_ssize_t length) noexcept nogil:
    """One past the last t < count with start + t * step < length (0 if there is none)."""
    cdef Py_ssize_t t
    if start >= length:
        return 0
    t = (length - start) if step == 1 else (length - start + step - 1) // step
    return t if t < count else count


cdef inline void _interior(Py_ssize_t out_w, Py_ssize_t k, Py_ssize_t s, Py_ssize_t p, Py_ssize_t d, Py_ssize_t L,
                           Py_ssize_t* jl, Py_ssize_t* jh) noexcept nogil:
    """[jl, jh): the windows whose k taps all lie inside [0, L) (jl == jh when there is none)."""
    cdef Py_ssize_t last = L - 1 - (k - 1) * d + p     # j * s <= last for the window's last tap to fit
    jl[0] = _tap_lo(-p, s)
    jh[0] = 0
    if last >= 0:
        jh[0] = last // s + 1
        if jh[0] > out_w:
            jh[0] = out_w
    if jl[0] > out_w:
        jl[0] = out_w
    if jh[0] < jl[0]:
        jh[0] = jl[0]


cdef inline bint _k2s2(Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w, int kh, int kw, int sh,
                       int sw, int ph, int pw, int dh, int dw) noexcept nogil:
    """True for 2x2 windows, stride 2, no padding or dilation, every window inside the input."""
    return (kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and dh == 1 and dw == 1
            and 2 * out_h <= H and 2 * out_w <= W)


# ----------------------------------------------------------------------------------------------------------------
# Row folds for NCHW planes. Window j's taps in one input row are row[j * S + off + b * D], b = 0 .. K-1;
# a fold applies the rule to them in order, so calling it tap row after tap row keeps row-major tap order.
# The fixed-size versions spell the taps out, which lets the compiler vectorise over j.

cdef inline void _fold(floating* best, const floating* row, Py_ssize_t jl, Py_ssize_t jh, Py_ssize_t K,
                       Py_ssize_t S, Py_ssize_t D, Py_ssize_t off, rule_t* rule) noexcept nogil:
    cdef Py_ssize_t j, b
    cdef floating bst, v
    for j in range(jl, jh):
        bst = best[j]
        for b in range(K):
            v = row[j * S + off + b * D]
            bst = v if _wins(v, bst, rule) else bst
        best[j] = bst


cdef inline void _fold_taps(floating* best, floating* tap, const floating* row, Py_ssize_t jl, Py_ssize_t jh,
                            Py_ssize_t K, Py_ssize_t S, Py_ssize_t D, Py_ssize_t off, floating t0,
                            rule_t* rule) noexcept nogil:
    """As :func:`_fold`; ``tap[j]`` follows the winner's offset ``t0 + b * D`` from the window's first tap,
    held in a float so that every select has the width of the values."""
    cdef Py_ssize_t j, b
    cdef floating bst, tp
    for j in range(jl, jh):
        bst = best[j]
        tp = tap[j]
        for b in range(K):
            _step(row[j * S + off + b * D], &bst, &tp, (t0 + b * D), rule)
        best[j] = bst
        tap[j] = tp


cdef inline void _fold_index(floating* best, int64_t* win, const floating* row, Py_ssize_t jl, Py_ssize_t jh,
                             Py_ssize_t K, Py_ssize_t S, Py_ssize_t D, Py_ssize_t off, int64_t base,
                             bint minimum) noexcept nogil:
    """As :func:`_fold` with the full rule; ``win[j]`` follows the winner's flat index ``base + j*S + off + b*D``."""
    cdef Py_ssize_t j, b
    cdef floating bst, v
    cdef int64_t wi
    cdef bint take
    for j in range(jl, jh):
        bst = best[j]
        wi = win[j]
        for b in range(K):
            v = row[j * S + off + b * D]
            take = _takes(v, bst, minimum)
            bst = v if take else bst
            wi = (base + j * S + off + b * D) if take else wi
        best[j] = bst
        win[j] = wi


cdef inline void _fold_3s2(floating* best, const floating* row, Py_ssize_t jl, Py_ssize_t jh, Py_ssize_t off,
                           rule_t* rule) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating bst, v
    for j in range(jl, jh):
        bst = best[j]
        v = row[2 * j + off]
        bst = v if _wins(v, bst, rule) else bst
        v = row[2 * j + off + 1]
        bst = v if _wins(v, bst, rule) else bst
        v = row[2 * j + off + 2]
        bst = v if _wins(v, bst, rule) else bst
        best[j] = bst


cdef inline void _fold_3s1(floating* best, const floating* row, Py_ssize_t jl, Py_ssize_t jh, Py_ssize_t off,
                           rule_t* rule) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating bst, v
    for j in range(jl, jh):
        bst = best[j]
        v = row[j + off]
        bst = v if _wins(v, bst, rule) else bst
        v = row[j + off + 1]
        bst = v if _wins(v, bst, rule) else bst
        v = row[j + off + 2]
        bst = v if _wins(v, bst, rule) else bst
        best[j] = bst


cdef inline void _fold_2s1(floating* best, const floating* row, Py_ssize_t jl, Py_ssize_t jh, Py_ssize_t off,
                           rule_t* rule) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating bst, v
    for j in range(jl, jh):
        bst = best[j]
        v = row[j + off]
        bst = v if _wins(v, bst, rule) else bst
        v = row[j + off + 1]
        bst = v if _wins(v, bst, rule) else bst
        best[j] = bst


cdef inline void _fold_taps_3s2(floating* best, floating* tap, const floating* row, Py_ssize_t jl, Py_ssize_t jh,
                                Py_ssize_t off, floating t0, rule_t* rule) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating bst, tp, t1 = t0 + 1, t2 = t0 + 2
    for j in range(jl, jh):
        bst = best[j]
        tp = tap[j]
        _step(row[2 * j + off], &bst, &tp, t0, rule)
        _step(row[2 * j + off + 1], &bst, &tp, t1, rule)
        _step(row[2 * j + off + 2], &bst, &tp, t2, rule)
        best[j] = bst
        tap[j] = tp


cdef void _fold_taps_row(floating* best, floating* tap, const floating* row, Py_ssize_t jl, Py_ssize_t jh,
                         Py_ssize_t K, Py_ssize_t S, Py_ssize_t D, Py_ssize_t off, floating t0,
                         rule_t* rule) noexcept nogil:
    """:func:`_fold_taps` with the common window widths and strides (no dilation) as constants: the calls pass
    literals into the inline fold, so the compiler unrolls the tap loop and vectorises the loop over windows,
    which it does not do with ``K`` and ``S`` known only at run time (3x3 stride-1 windows took 4x as long)."""
    if D == 1:
        if S == 1 and K == 2:
            _fold_taps(best, tap, row, jl, jh, 2, 1, 1, off, t0, rule)
            return
        if S == 1 and K == 3:
            _fold_taps(best, tap, row, jl, jh, 3, 1, 1, off, t0, rule)
            return
        if S == 1 and K == 5:
            _fold_taps(best, tap, row, jl, jh, 5, 1, 1, off, t0, rule)
            return
        if S == 2 and K == 2:
            _fold_taps(best, tap, row, jl, jh, 2, 2, 1, off, t0, rule)
            return
        if S == 3 and K == 3:
            _fold_taps(best, tap, row, jl, jh, 3, 3, 1, off, t0, rule)
            return
    _fold_taps(best, tap, row, jl, jh, K, S, D, off, t0, rule)


cdef inline void _taps_3x3s2(floating* tap, const floating* r0, Py_ssize_t W, Py_ssize_t jl, Py_ssize_t jh,
                             Py_ssize_t off, rule_t* rule) noexcept nogil:
    """Winners of 3x3 stride-2 windows whose nine taps are all real (rows r0, r0 + W, r0 + 2W): ``tap[j]``
    becomes the winner's offset ``a * W + b`` from the window's first tap, in one pass."""
    cdef Py_ssize_t j, q
    cdef const floating* r1 = r0 + W
    cdef const floating* r2 = r1 + W
    cdef floating bst, tp, fw = W
    cdef floating o1 = 1, o2 = 2, o3 = fw, o4 = fw + 1, o5 = fw + 2, o6 = 2 * fw, o7 = 2 * fw + 1, o8 = 2 * fw + 2
    if rule_t is MaxRuleNoNaN or rule_t is MinRuleNoNaN:
        # no NaN: the best value is a plain max (min), and the winner is the first tap equal to it
        if floating is float:
            jl = pl_taps_3x3s2_avx2(tap, r0, W, jl, jh, off, rule_t is MinRuleNoNaN)   # AVX2 build: 8 at a time
        for j in range(jl, jh):
            q = 2 * j + off
            tap[j] = _winner9(r0[q], r0[q + 1], r0[q + 2], r1[q], r1[q + 1], r1[q + 2], r2[q], r2[q + 1], r2[q + 2],
                              o1, o2, o3, o4, o5, o6, o7, o8, rule)
        return
    for j in range(jl, jh):
        q = 2 * j + off
        bst = r0[q]
        tp = 0
        _step(r0[q + 1], &bst, &tp, o1, rule)
        _step(r0[q + 2], &bst, &tp, o2, rule)
        _step(r1[q], &bst, &tp, o3, rule)
        _step(r1[q + 1], &bst, &tp, o4, rule)
        _step(r1[q + 2], &bst, &tp, o5, rule)
        _step(r2[q], &bst, &tp, o6, rule)
        _step(r2[q + 1], &bst, &tp, o7, rule)
        _step(r2[q + 2], &bst, &tp, o8, rule)
        tap[j] = tp


cdef inline void _fold_3x3s2(floating* best, const floating* r0, Py_ssize_t W, Py_ssize_t jl, Py_ssize_t jh,
                             Py_ssize_t off, rule_t* rule) noexcept nogil:
    """Values of 3x3 stride-2 windows whose nine taps are all real (rows r0, r0 + W, r0 + 2W), in one pass."""
    cdef Py_ssize_t j, q
    cdef const floating* r1 = r0 + W
    cdef const floating* r2 = r1 + W
    cdef floating bst, v
    for j in range(jl, jh):
        q = 2 * j + off
        bst = r0[q]
        v = r0[q + 1]
        bst = v if _wins(v, bst, rule) else bst
        v = r0[q + 2]
        bst = v if _wins(v, bst, rule) else bst
        v = r1[q]
        bst = v if _wins(v, bst, rule) else bst
        v = r1[q + 1]
        bst = v if _wins(v, bst, rule) else bst
        v = r1[q + 2]
        bst = v if _wins(v, bst, rule) else bst
        v = r2[q]
        bst = v if _wins(v, bst, rule) else bst
        v = r2[q + 1]
        bst = v if _wins(v, bst, rule) else bst
        v = r2[q + 2]
        bst = v if _wins(v, bst, rule) else bst
        best[j] = bst


cdef inline floating _edge_window(const floating* r0, Py_ssize_t W, Py_ssize_t rows, Py_ssize_t c_lo,
                                  Py_ssize_t c_hi, Py_ssize_t origin, floating* tap, rule_t* rule) noexcept nogil:
    """One window of ``rows`` adjacent rows (the first at r0) and adjacent real columns c_lo .. c_hi-1 (a
    window cut by the padding, c_lo < c_hi): returns its best value; ``tap[0]`` becomes the winner's offset
    ``a * W + c - origin`` (``origin``: the column of the window's first tap, maybe in the padding)."""
    cdef Py_ssize_t a, c
    cdef floating bst = r0[c_lo], tp = c_lo - origin
    for a in range(rows):
        for c in range(c_lo, c_hi):
            _step(r0[a * W + c], &bst, &tp, (a * W + c - origin), rule)
    tap[0] = tp
    return bst


cdef inline floating _edge_3x2(const floating* r0, Py_ssize_t W, Py_ssize_t c, Py_ssize_t origin, floating* tap,
                               rule_t* rule) noexcept nogil:
    """A 3x3 window cut by the padding to two real columns c, c + 1 (rows r0, r0 + W, r0 + 2W): returns its
    best value; ``tap[0]`` becomes the winner's offset ``a * W + column - origin``. Straight-line code."""
    cdef floating v0 = r0[c], v1 = r0[c + 1], v2 = r0[W + c], v3 = r0[W + c + 1]
    cdef floating v4 = r0[2 * W + c], v5 = r0[2 * W + c + 1]
    cdef floating b = v0, tp, base = c - origin, fw = W
    if rule_t is MaxRuleNoNaN or rule_t is MinRuleNoNaN:
        b = v1 if _wins(v1, b, rule) else b
        b = v2 if _wins(v2, b, rule) else b
        b = v3 if _wins(v3, b, rule) else b
        b = v4 if _wins(v4, b, rule) else b
        b = v5 if _wins(v5, b, rule) else b
        tp = base + 2 * fw + 1                            # (branch-free selects: the tests go either way)
        tp = _sel(v4 == b, base + 2 * fw, tp)
        tp = _sel(v3 == b, base + fw + 1, tp)
        tp = _sel(v2 == b, base + fw, tp)
        tp = _sel(v1 == b, base + 1, tp)
        tp = _sel(v0 == b, base, tp)
    else:
        tp = base
        _step(v1, &b, &tp, (base + 1), rule)
        _step(v2, &b, &tp, (base + fw), rule)
        _step(v3, &b, &tp, (base + fw + 1), rule)
        _step(v4, &b, &tp, (base + 2 * fw), rule)
        _step(v5, &b, &tp, (base + 2 * fw + 1), rule)
    tap[0] = tp
    return b


cdef inline floating _edge_block(const floating* r0, Py_ssize_t W, Py_ssize_t w0, floating* tap,
                                 rule_t* rule) noexcept nogil:
    """A 3x3 window on three real rows whose columns w0 .. w0 + 2 are cut by the padding."""
    cdef Py_ssize_t c_lo = max(w0, 0), c_hi = min(w0 + 3, W)
    if c_hi - c_lo == 2:
        return _edge_3x2(r0, W, c_lo, w0, tap, rule)
    return _edge_window(r0, W, 3, c_lo, c_hi, w0, tap, rule)


cdef inline void _fold_2x2(floating* best, const floating* r0, const floating* r1, Py_ssize_t n,
                           rule_t* rule) noexcept nogil:
    """2x2 windows at stride 2 (no padding): window j's taps are r0[2j], r0[2j+1], r1[2j], r1[2j+1]. Rules with
    the NaN test run on AVX2 vectors where the build has them (:c:func:`pl_vals_2x2_f32`)."""
    cdef Py_ssize_t j, j0 = 0
    cdef floating bst, v
    if rule_t is MaxRule or rule_t is MinRule:
        if floating is float:
            j0 = pl_vals_2x2_f32(best, r0, r1, n, _is_min(rule))
        else:
            j0 = pl_vals_2x2_f64(best, r0, r1, n, _is_min(rule))
    for j in range(j0, n):
        bst = r0[2 * j]                                  # the rule applied to -inf (+inf) and the first tap
        v = r0[2 * j + 1]
        bst = v if _wins(v, bst, rule) else bst
        v = r1[2 * j]
        bst = v if _wins(v, bst, rule) else bst
        v = r1[2 * j + 1]
        bst = v if _wins(v, bst, rule) else bst
        best[j] = bst


# ----------------------------------------------------------------------------------------------------------------
# Max / min pooling, NCHW

cdef inline void _row_vals(const floating* xp, floating* best, Py_ssize_t i, Py_ssize_t H, Py_ssize_t W,
                           Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t jl, Py_ssize_t jh,
                           rule_t* rule) noexcept nogil:
    """Output row i of one NCHW plane, values only: each tap row folds its taps into best[:]."""
    cdef Py_ssize_t j, a, h, h0 = i * sh - ph, w0, b_lo, b_hi
    cdef Py_ssize_t a_lo = _tap_lo(h0, dh), a_hi = _tap_hi(h0, kh, dh, H)
    cdef const floating* row
    cdef floating worst = INFINITY if _is_min(rule) else -INFINITY
    cdef floating scratch
    if kh == 3 and kw == 3 and dh == 1 and dw == 1 and sw == 2 and a_hi - a_lo == 3:
        # 3x3 stride-2 windows on three real rows: all nine taps in one pass; windows cut by the padding apart
        _fold_3x3s2(best, xp + h0 * W, W, jl, jh, -pw, rule)
        for j in range(jl):
            best[j] = _edge_block(xp + h0 * W, W, 2 * j - pw, &scratch, rule)
        for j in range(jh, out_w):
            best[j] = _edge_block(xp + h0 * W, W, 2 * j - pw, &scratch, rule)
        return
    for j in range(out_w):
        best[j] = worst
    for a in range(a_lo, a_hi):
        h = h0 + a * dh
        row = xp + h * W
        if jl < jh:
            if dw == 1 and sw == 2 and kw == 3:
                _fold_3s2(best, row, jl, jh, -pw, rule)
            elif dw == 1 and sw == 1 and kw == 3:
                _fold_3s1(best, row, jl, jh, -pw, rule)
            elif dw == 1 and sw == 1 and kw == 2:
                _fold_2s1(best, row, jl, jh, -pw, rule)
            else:
                _fold(best, row, jl, jh, kw, sw, dw, -pw, rule)
        for j in range(jl):                               # windows reaching into the padding: clipped taps
            w0 = j * sw - pw
            b_lo = _tap_lo(w0, dw)
            b_hi = _tap_hi(w0, kw, dw, W)
            _fold(best, row, j, j + 1, b_hi - b_lo, sw, dw, -pw + b_lo * dw, rule)
        for j in range(jh, out_w):
            w0 = j * sw - pw
            b_lo = _tap_lo(w0, dw)
            b_hi = _tap_hi(w0, kw, dw, W)
            _fold(best, row, j, j + 1, b_hi - b_lo, sw, dw, -pw + b_lo * dw, rule)


cdef inline bint _k3s2p1(Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                         Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """3x3 windows, stride 2, padding 1, no dilation: the most common pooling of all (ResNet's first max pool)."""
    return kh == 3 and kw == 3 and sh == 2 and sw == 2 and ph == 1 and pw == 1 and dh == 1 and dw == 1


cdef void _plane_vals(const floating* xp, floating* op, Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h,
                      Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                      Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, const floating* nxt, rule_t* rule) noexcept nogil:
    """Max (min) pooling of one NCHW plane, values only; ``nxt``: the next plane to prefetch, or NULL.

    3x3 stride-2 padding-1 windows get a copy of the loop with that geometry in constants, which the compiler folds
    into the code: the forward took 0.77-0.85x the general loop's time on the benchmark input.
    """
    if _k3s2p1(kh, kw, sh, sw, ph, pw, dh, dw):
        _plane_vals_body(xp, op, H, W, out_h, out_w, 3, 3, 2, 2, 1, 1, 1, 1, nxt, rule)
    else:
        _plane_vals_body(xp, op, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw, nxt, rule)


cdef inline void _plane_vals_body(const floating* xp, floating* op, Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h,
                                  Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                  Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, const floating* nxt,
                                  rule_t* rule) noexcept nogil:
    """The loop of :func:`_plane_vals`. The 2x2 stride-2 loop prefetches two window rows ahead
    (:func:`_prefetch_rows`); the others prefetch the next plane in parts, for its NaN scan."""
    cdef Py_ssize_t i, jl, jh
    cdef Py_ssize_t reach = (2 if nxt != NULL else 1) * H    # rows the prefetch may touch: this plane and the next
    if _k2s2(H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw):
        for i in range(out_h):
            _prefetch_rows(xp, 2 * (i + PF_AHEAD), 2 * (i + PF_AHEAD) + 2, W, reach)
            _fold_2x2(op + i * out_w, xp + 2 * i * W, xp + (2 * i + 1) * W, out_w, rule)
        return
    _interior(out_w, kw, sw, pw, dw, W, &jl, &jh)
    for i in range(out_h):
        _prefetch_part(nxt, H * W, i, out_h)
        _row_vals(xp, op + i * out_w, i, H, W, out_w, kh, kw, sh, sw, ph, pw, dh, dw, jl, jh, rule)


cdef void _plane_index(const floating* xp, floating* op, int64_t* ip, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                       Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                       bint minimum) noexcept nogil:
    """Max (min) pooling of one NCHW plane with winner indices (flat ``h * W + w``)."""
    cdef Py_ssize_t i, j, a, h, h0, a_lo, a_hi, w0, b_lo, b_hi
    cdef floating* best
    cdef int64_t* win
    cdef floating worst = INFINITY if minimum else -INFINITY
    for i in range(out_h):
        best = op + i * out_w
        win = ip + i * out_w
        h0 = i * sh - ph
        a_lo = _tap_lo(h0, dh)
        a_hi = _tap_hi(h0, kh, dh, H)
        for j in range(out_w):
            best[j] = worst
            w0 = j * sw - pw
            win[j] = (h0 + a_lo * dh) * W + w0 + _tap_lo(w0, dw) * dw
        for a in range(a_lo, a_hi):
            h = h0 + a * dh
            for j in range(out_w):
                w0 = j * sw - pw
                b_lo = _tap_lo(w0, dw)
                b_hi = _tap_hi(w0, kw, dw, W)
                _fold_index(best, win, xp + h * W, j, j + 1, b_hi - b_lo, sw, dw, -pw + b_lo * dw, h * W, minimum)


cdef void _extremum_nchw(const floating* x, floating* out, int64_t* indices, Py_ssize_t N, Py_ssize_t C,
                         Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w, int kh, int kw, int sh,
                         int sw, int ph, int pw, int dh, int dw, bint minimum, bint track,
                         int num_threads) noexcept nogil:
    """The loop of :func:`extremum_nchw`, on the arrays' memory."""
    cdef Py_ssize_t plane
    cdef const floating* xp
    cdef const floating* nxt
    cdef floating* op
    cdef bint k2s2 = _k2s2(H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw)
    if N * C == 0:
        return
    for plane in prange(N * C, schedule="guided", num_threads=num_threads):
        xp = x + plane * H * W
        op = out + plane * out_h * out_w
        nxt = (xp + H * W) if plane + 1 < N * C else NULL
        if track:
            _plane_index(xp, op, indices + plane * out_h * out_w, H, W, out_h, out_w,
                         kh, kw, sh, sw, ph, pw, dh, dw, minimum)
        elif k2s2 or _has_nan(xp, H * W):
            if minimum:
                _plane_vals(xp, op, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw, nxt, <MinRule*> NULL)
            else:
                _plane_vals(xp, op, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw, nxt, <MaxRule*> NULL)
        elif minimum:
            _plane_vals(xp, op, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw, nxt, <MinRuleNoNaN*> NULL)
        else:
            _plane_vals(xp, op, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw, nxt, <MaxRuleNoNaN*> NULL)


cdef int _check_array(cnp.ndarray a, str name, int typenum, int ndim, bint writeable) except -1:
    """The checks a C-contiguous typed memoryview of the dtype would make on ``a``, in C: ``ndim`` dimensions,
    C-contiguous, aligned, native byte order, the dtype ``typenum``, and writeable when ``writeable``."""
    if cnp.PyArray_NDIM(a) != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {cnp.PyArray_NDIM(a)}")
    if cnp.PyArray_TYPE(a) != typenum or not cnp.PyArray_ISNOTSWAPPED(a):
        raise ValueError(f"{name} has dtype {a.dtype}, expected {cnp.PyArray_DescrFromType(typenum)} in native "
                         f"byte order")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)):
        raise ValueError(f"{name} must be C-contiguous and aligned")
    if writeable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{name} must be writeable")
    return 0


cdef tuple _shape4(const Py_ssize_t* shape):
    """The shape of a 4-d typed memoryview, as a tuple."""
    return (shape[0], shape[1], shape[2], shape[3])


cdef int _check_dims(Py_ssize_t xn, Py_ssize_t xc, Py_ssize_t xh, Py_ssize_t xw, Py_ssize_t on, Py_ssize_t oc,
                     Py_ssize_t oh, Py_ssize_t ow, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                     str x_name, str out_name) except -1:
    """Checks of a kernel's geometry against its input's ``N, C, H, W`` (``xn``, ...) and its output's (``on``, ...,
    whatever the layout): sizes, strides and dilations of at least 1, paddings of at least 0, the same ``N`` and
    ``C``, and no window that starts outside the input (true of every output size of
    :func:`pooling_lib.pool2d_output_size`)."""
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"kernel sizes, strides and dilations must be >= 1 and paddings >= 0, got kernel {kh} x {kw}, "
                         f"stride {sh} x {sw}, padding {ph} x {pw}, dilation {dh} x {dw}")
    if on != xn or oc != xc:
        raise ValueError(f"{out_name} must have the N and C of {x_name}, {xn} and {xc}, got {on} and {oc}")
    if (oh - 1) * sh - ph >= xh or (ow - 1) * sw - pw >= xw:
        raise ValueError(f"{out_name}'s last window starts outside {x_name}: {oh} x {ow} windows at stride "
                         f"{sh} x {sw}, padding {ph} x {pw}, on {xh} x {xw} cells")
    return 0


cdef int _check_divisors(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t out_h, Py_ssize_t out_w,
                         str out_name) except -1:
    """An average kernel's ``(rows, cols)`` divisors must have one per window of its ``out_h x out_w`` output."""
    if rows != out_h or cols != out_w:
        raise ValueError(f"divisors must have {out_name}'s {out_h} x {out_w} windows, got ({rows}, {cols})")
    return 0


cdef int _check_pool_arrays(cnp.ndarray x, cnp.ndarray out, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                            int dw, bint backward=False) except -1:
    """Checks of a forward kernel's input and output (4-d NCHW, C-contiguous, one float dtype, out writeable) and
    geometry (:func:`_check_dims`). Returns the dtype's type number. A ``backward`` kernel passes its ``grad_x`` and
    ``grad_out`` as ``x`` and ``out``: then the messages name them so, and ``x`` is the one that must be
    writeable."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef str x_name = "grad_x" if backward else "x"
    cdef str out_name = "grad_out" if backward else "out"
    cdef cnp.npy_intp* xs
    cdef cnp.npy_intp* os
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        raise ValueError(f"{x_name} must be float32 or float64, got {x.dtype}")
    _check_array(x, x_name, typenum, 4, backward)
    _check_array(out, out_name, typenum, 4, not backward)
    xs = cnp.PyArray_DIMS(x)
    os = cnp.PyArray_DIMS(out)
    _check_dims(xs[0], xs[1], xs[2], xs[3], os[0], os[1], os[2], os[3], kh, kw, sh, sw, ph, pw, dh, dw, x_name,
                out_name)
    return typenum


def extremum_nchw(cnp.ndarray x, cnp.ndarray out, cnp.ndarray indices, int kh, int kw, int sh, int sw, int ph,
                  int pw, int dh, int dw, bint minimum, bint track, int num_threads):
    """Max (min) pooling of a C-contiguous NCHW batch; ``indices`` (int64, the shape of ``out``) is filled only when
    ``track``.

    Without indices, each plane is first scanned for NaN, and a plane without one runs with the rule that
    skips the NaN test; 2x2 stride-2 windows skip the scan and always run the rule that handles NaN (the scan cost
    more than it saved; with AVX2, :c:func:`pl_vals_2x2_f32` tests each block of windows instead, which took the
    float32 forward on the benchmark input to 0.97x its time on one thread and 0.93x on two).

    The arrays come as ndarrays, checked in C (:func:`_check_pool_arrays`), not as typed memoryviews, as in
    :func:`avg_nchw`: entering a function costs every call, however small its input, and right after a cache sweep
    it took 27-29 µs this way against 48-51 µs with three memoryviews (on the README's machine, a 4x4 input).
    """
    cdef int typenum = _check_pool_arrays(x, out, kh, kw, sh, sw, ph, pw, dh, dw)
    cdef cnp.npy_intp* xs = cnp.PyArray_DIMS(x)
    cdef cnp.npy_intp* os = cnp.PyArray_DIMS(out)
    if track:
        _check_array(indices, "indices", cnp.NPY_INT64, 4, True)
        if not cnp.PyArray_SAMESHAPE(indices, out):
            raise ValueError(f"indices must have the shape of out, {(<object> out).shape}, got "
                             f"{(<object> indices).shape}")
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            _extremum_nchw(<const float*> cnp.PyArray_DATA(x), <float*> cnp.PyArray_DATA(out),
                           <int64_t*> cnp.PyArray_DATA(indices), xs[0], xs[1], xs[2], xs[3], os[2], os[3], kh, kw,
                           sh, sw, ph, pw, dh, dw, minimum, track, num_threads)
        else:
            _extremum_nchw(<const double*> cnp.PyArray_DATA(x), <double*> cnp.PyArray_DATA(out),
                           <int64_t*> cnp.PyArray_DATA(indices), xs[0], xs[1], xs[2], xs[3], os[2], os[3], kh, kw,
                           sh, sw, ph, pw, dh, dw, minimum, track, num_threads)


cdef inline void _winners_2x2(const floating* r0, const floating* r1, const floating* g, floating* g0, floating* g1,
                              Py_ssize_t out_w, rule_t* rule) noexcept nogil:
    """One output row of 2x2 stride-2 windows: write ``0 + g[j]`` into each window's winner and 0 into the
    other three cells (as ``+=`` into a zeroed gradient would: -0.0 becomes +0.0)."""
    cdef Py_ssize_t j
    cdef floating b, v1, v2, v3, gz, zero = 0
    cdef bint t1, t2, t3
    for j in range(out_w):
        b = r0[2 * j]
        v1 = r0[2 * j + 1]
        v2 = r1[2 * j]
        v3 = r1[2 * j + 1]
        t1 = _wins(v1, b, rule)
        b = v1 if t1 else b
        t2 = _wins(v2, b, rule)
        b = v2 if t2 else b
        t3 = _wins(v3, b, rule)
        gz = zero + g[j]
        g1[2 * j + 1] = gz if t3 else zero               # the last tap that takes is the winner
        g1[2 * j] = zero if (t3 | (not t2)) else gz
        g0[2 * j + 1] = zero if (t3 | t2 | (not t1)) else gz
        g0[2 * j] = zero if (t3 | t2 | t1) else gz


cdef inline void _route_row(floating* gx, const floating* g, const floating* tap, Py_ssize_t corner,
                            Py_ssize_t out_w, Py_ssize_t sw, bint cols_ok, Py_ssize_t W, Py_ssize_t kw,
                            Py_ssize_t dw, Py_ssize_t pw) noexcept nogil:
    """Add each window's gradient g[j] to its winner, in window order (the naive tier's += order).
    ``corner``: the flat position of window 0's first tap (maybe in the padding)."""
    cdef Py_ssize_t j, w0
    if cols_ok:
        for j in range(out_w):
            gx[corner + j * sw + <Py_ssize_t> tap[j]] += g[j]
    else:
        for j in range(out_w):
            w0 = j * sw - pw
            if _tap_lo(w0, dw) < _tap_hi(w0, kw, dw, W):   # a window column with no real cell: no winner
                gx[corner + j * sw + <Py_ssize_t> tap[j]] += g[j]


cdef void _plane_backward(const floating* xp, const floating* gp, floating* gx, floating* best, floating* tap,
                          Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t kh,
                          Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                          Py_ssize_t dw, bint cols_ok, const floating* nxt, rule_t* rule) noexcept nogil:
    """:func:`_plane_backward_body`; for 3x3 stride-2 padding-1 windows, :func:`_plane_backward_3x3s2p1` in the
    AVX2 build (same bits; in the baseline build it made float64 1.25x slower), else the body with that geometry in
    constants, which the compiler folds into the code. ``tap`` holds ``2 * out_w`` values."""
    if _k3s2p1(kh, kw, sh, sw, ph, pw, dh, dw):
        if PL_AVX2:
            _plane_backward_3x3s2p1(xp, gp, gx, best, tap, H, W, out_h, out_w, nxt, rule)
        else:
            _plane_backward_body(xp, gp, gx, best, tap, H, W, out_h, out_w, 3, 3, 2, 2, 1, 1, 1, 1, cols_ok, nxt, rule)
    else:
        _plane_backward_body(xp, gp, gx, best, tap, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw, cols_ok, nxt,
                             rule)


cdef inline void _taps_3x3s2_row(floating* tap, const floating* r0, Py_ssize_t W, Py_ssize_t out_w, Py_ssize_t jl,
                                 Py_ssize_t j0, Py_ssize_t jh, Py_ssize_t off, rule_t* rule) noexcept nogil:
    """The winners' tap offsets of one row of 3x3 stride-2 windows on three real rows (r0, r0 + W, r0 + 2W; window j
    starts at column 2j + off): the interior windows j0 .. jh-1 in one pass (:func:`_taps_3x3s2`; a caller that
    has done jl .. j0-1 another way passes j0 > jl), then the windows cut by the padding, 0 .. jl-1 and
    jh .. out_w-1."""
    cdef Py_ssize_t j
    _taps_3x3s2(tap, r0, W, j0, jh, off, rule)
    for j in range(jl):
        _edge_block(r0, W, 2 * j + off, tap + j, rule)
    for j in range(jh, out_w):
        _edge_block(r0, W, 2 * j + off, tap + j, rule)


cdef inline bint _winner_row(const floating* xp, floating* best, floating* tap, Py_ssize_t i, Py_ssize_t H,
                             Py_ssize_t W, Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                             Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t jl,
                             Py_ssize_t jh, rule_t* rule) noexcept nogil:
    """The winners of output row i of one NCHW plane: ``tap[j]`` becomes window j's winner as its offset
    ``a * dh * W + b * dw`` from the window's first tap (held in a float: exact below 2**24, which the caller
    ensures). Returns False, and writes nothing, when the window row has no real cell."""
    cdef Py_ssize_t j, a, h, h0 = i * sh - ph, w0, b_lo, b_hi
    cdef Py_ssize_t a_lo = _tap_lo(h0, dh), a_hi = _tap_hi(h0, kh, dh, H)
    cdef const floating* row
    cdef floating worst = INFINITY if _is_min(rule) else -INFINITY
    if a_lo >= a_hi:
        return False
    if kh == 3 and kw == 3 and dh == 1 and dw == 1 and sw == 2 and a_hi - a_lo == 3:
        # 3x3 stride-2 windows on three real rows: all nine taps in one pass; windows cut by the padding apart
        _taps_3x3s2_row(tap, xp + h0 * W, W, out_w, jl, jl, jh, -pw, rule)
        return True
    for j in range(out_w):
        best[j] = worst
        w0 = j * sw - pw
        tap[j] = a_lo * dh * W + _tap_lo(w0, dw) * dw
    for a in range(a_lo, a_hi):
        h = h0 + a * dh
        row = xp + h * W
        if jl < jh:
            if dw == 1 and sw == 2 and kw == 3:
                _fold_taps_3s2(best, tap, row, jl, jh, -pw, a * dh * W, rule)
            else:
                _fold_taps_row(best, tap, row, jl, jh, kw, sw, dw, -pw, a * dh * W, rule)
        for j in range(jl):
            w0 = j * sw - pw
            b_lo = _tap_lo(w0, dw)
            b_hi = _tap_hi(w0, kw, dw, W)
            _fold_taps(best, tap, row, j, j + 1, b_hi - b_lo, sw, dw, -pw + b_lo * dw, a * dh * W + b_lo * dw, rule)
        for j in range(jh, out_w):
            w0 = j * sw - pw
            b_lo = _tap_lo(w0, dw)
            b_hi = _tap_hi(w0, kw, dw, W)
            _fold_taps(best, tap, row, j, j + 1, b_hi - b_lo, sw, dw, -pw + b_lo * dw, a * dh * W + b_lo * dw, rule)
    return True


cdef inline void _plane_backward_body(const floating* xp, const floating* gp, floating* gx, floating* best,
                                      floating* tap, Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w,
                                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                                      Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, bint cols_ok, const floating* nxt,
                                      rule_t* rule) noexcept nogil:
    """Gradient of max (min) pooling for one NCHW plane; ``gx`` (the plane's gradient) is zeroed here.

    Per output row: find every window's winner (:func:`_winner_row`), then add the windows' gradients to their
    winners in window order. ``cols_ok``: every window column holds a real cell. ``nxt``: the next plane to
    prefetch, or NULL.
    """
    cdef Py_ssize_t i, jl, jh
    if _k2s2(H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw):
        if 2 * out_h < H or 2 * out_w < W:
            memset(gx, 0, H * W * sizeof(floating))       # rows or columns that no window covers
        for i in range(out_h):
            _prefetch_rows(gx, 2 * (i + PF_AHEAD), 2 * (i + PF_AHEAD) + 2, W, H)
            _winners_2x2(xp + 2 * i * W, xp + (2 * i + 1) * W, gp + i * out_w, gx + 2 * i * W,
                         gx + (2 * i + 1) * W, out_w, rule)
        return
    memset(gx, 0, H * W * sizeof(floating))
    _interior(out_w, kw, sw, pw, dw, W, &jl, &jh)
    for i in range(out_h):
        _prefetch_part(nxt, H * W, i, out_h)
        if _winner_row(xp, best, tap, i, H, W, out_w, kh, kw, sh, sw, ph, pw, dh, dw, jl, jh, rule):
            _route_row(gx, gp + i * out_w, tap, (i * sh - ph) * W - pw, out_w, sw, cols_ok, W, kw, dw, pw)


cdef inline floating _pick(floating g, floating t, floating code) noexcept nogil:
    """``g if t == code else 0``, for whole-number taps, without a branch (see ``pl_pick_f32``)."""
    if floating is float:
        return pl_pick_f32(g, t, code)
    else:
        return pl_pick_f64(g, t, code)


cdef inline floating _sel(bint cond, floating a, floating b) noexcept nogil:
    """``a if cond else b`` without a branch (see ``pl_sel_f32``)."""
    if floating is float:
        return pl_sel_f32(cond, a, b)
    else:
        return pl_sel_f64(cond, a, b)


cdef inline void _gather_3x3s2(floating* gr, Py_ssize_t W, Py_ssize_t out_w, const floating* t0, const floating* g0,
                               floating c0, const floating* t1, const floating* g1, floating c1,
                               bint two) noexcept nogil:
    """One gradient row under 3x3 stride-2 padding-1 windows, each cell written once: from 0, in window order,
    the gradient of every window whose winner the cell is. The row is tap row ``c0 / W`` of the window row with
    winners ``t0`` and gradients ``g0`` (and, when ``two``, then tap row ``c1 / W`` of the next window row).
    Cell 2m is tap 1 of window m; cell 2m + 1 is tap 2 of window m, then tap 0 of window m + 1. Adding 0 for a
    window that the cell does not win changes nothing (the sum is never -0.0), so these are the bits of the
    scatter ``gx[winner] += g`` over a zeroed row."""
    cdef Py_ssize_t m, M = (W - 1) // 2                   # out_w > M: window M exists (padding 1)
    cdef floating s, zero = 0, c0_1 = c0 + 1, c0_2 = c0 + 2, c1_1 = c1 + 1, c1_2 = c1 + 2
    for m in range(M):                                    # cells 2m and 2m + 1 < W - 1: windows m and m + 1
        s = zero + _pick(g0[m], t0[m], c0_1)
        if two:
            s = s + _pick(g1[m], t1[m], c1_1)
        gr[2 * m] = s
        s = zero + _pick(g0[m], t0[m], c0_2)
        s = s + _pick(g0[m + 1], t0[m + 1], c0)
        if two:
            s = s + _pick(g1[m], t1[m], c1_2)
            s = s + _pick(g1[m + 1], t1[m + 1], c1)
        gr[2 * m + 1] = s
    s = zero + _pick(g0[M], t0[M], c0_1)                  # the row's end: cell 2M, then 2M + 1 when W is even
    if two:
        s = s + _pick(g1[M], t1[M], c1_1)
    gr[2 * M] = s
    if 2 * M + 1 < W:
        s = zero + _pick(g0[M], t0[M], c0_2)
        if M + 1 < out_w:                                 # (ceil_mode: a last window from column W - 1)
            s = s + _pick(g0[M + 1], t0[M + 1], c0)
        if two:
            s = s + _pick(g1[M], t1[M], c1_2)
            if M + 1 < out_w:
                s = s + _pick(g1[M + 1], t1[M + 1], c1)
        gr[2 * M + 1] = s


cdef void _plane_backward_3x3s2p1(const floating* xp, const floating* gp, floating* gx, floating* best,
                                  floating* tap, Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w,
                                  const floating* nxt, rule_t* rule) noexcept nogil:
    """Gradient of max (min) pooling for one NCHW plane, 3x3 windows at stride 2 with padding 1: the winners of
    each window row (:func:`_winner_row`, in ``tap[:out_w]`` and ``tap[out_w:]`` by turns), then each gradient row
    once its last window row is known (:func:`_gather_3x3s2`): row 2i - 1 lies in window rows i - 1 and i, row
    2i in window row i only. No zeroing pass and no scattered read-modify-write."""
    cdef Py_ssize_t i, r, jl, jh
    cdef floating fw = W
    cdef floating* cur = tap
    cdef floating* prev = tap + out_w
    cdef floating* t
    _interior(out_w, 3, 2, 1, 1, W, &jl, &jh)
    for i in range(out_h):
        _prefetch_part(nxt, H * W, i, out_h)
        _prefetch_rows(gx, 2 * (i + PF_AHEAD) - 1, 2 * (i + PF_AHEAD) + 1, W, H)   # the rows it writes then
        _winner_row(xp, best, cur, i, H, W, out_w, 3, 3, 2, 2, 1, 1, 1, 1, jl, jh, rule)   # never empty here
        if i > 0:
            _gather_3x3s2(gx + (2 * i - 1) * W, W, out_w, prev, gp + (i - 1) * out_w, 2 * fw, cur, gp + i * out_w,
                          0, True)
        if 2 * i < H:
            _gather_3x3s2(gx + 2 * i * W, W, out_w, cur, gp + i * out_w, fw, NULL, NULL, 0, False)
        t = prev
        prev = cur
        cur = t
    r = 2 * out_h - 1                                     # below the last window row's middle (prev: its winners)
    if r < H:
        _gather_3x3s2(gx + r * W, W, out_w, prev, gp + (out_h - 1) * out_w, 2 * fw, NULL, NULL, 0, False)
    if r + 1 < H:
        memset(gx + (r + 1) * W, 0, (H - r - 1) * W * sizeof(floating))   # rows no window covers


cdef void _plane_backward_index(const floating* xp, const floating* gp, floating* gx, floating* best, int64_t* win,
                                Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t kh,
                                Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                                Py_ssize_t dh, Py_ssize_t dw, bint minimum) noexcept nogil:
    """As :func:`_plane_backward`, tracking int64 flat indices (for windows of 2**24 taps or more)."""
    cdef Py_ssize_t i, j, a, h, h0, a_lo, a_hi, w0, b_lo, b_hi
    cdef floating worst = INFINITY if minimum else -INFINITY
    memset(gx, 0, H * W * sizeof(floating))
    for i in range(out_h):
        h0 = i * sh - ph
        a_lo = _tap_lo(h0, dh)
        a_hi = _tap_hi(h0, kh, dh, H)
        if a_lo >= a_hi:
            continue
        for j in range(out_w):
            best[j] = worst
            w0 = j * sw - pw
            win[j] = (h0 + a_lo * dh) * W + w0 + _tap_lo(w0, dw) * dw
        for a in range(a_lo, a_hi):
            h = h0 + a * dh
            for j in range(out_w):
                w0 = j * sw - pw
                b_lo = _tap_lo(w0, dw)
                b_hi = _tap_hi(w0, kw, dw, W)
                _fold_index(best, win, xp + h * W, j, j + 1, b_hi - b_lo, sw, dw, -pw + b_lo * dw, h * W, minimum)
        for j in range(out_w):
            w0 = j * sw - pw
            if _tap_lo(w0, dw) < _tap_hi(w0, kw, dw, W):
                gx[win[j]] += gp[i * out_w + j]


def extremum_backward_nchw(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] grad_out,
                           floating[:, :, :, ::1] grad_x, floating[:, ::1] best_buf, floating[:, ::1] tap_buf,
                           int64_t[:, ::1] win_buf, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                           bint minimum, int num_threads):
    """Gradient of max (min) pooling, NCHW: find each window's winner and add its gradient there, in one pass.

    ``grad_x`` may be uninitialised: every plane is written in full. ``best_buf`` and ``win_buf`` hold a
    scratch row of at least ``out_w`` values per thread, ``tap_buf`` one of ``2 * out_w`` (the winners of two
    window rows). A window with no real cell (possible only with dilation and padding) has no winner and routes
    nothing.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t out_h = grad_out.shape[2], out_w = grad_out.shape[3]
    cdef Py_ssize_t plane, tid
    cdef const floating* xp
    cdef const floating* nxt
    cdef const floating* gp
    cdef floating* gx
    cdef floating* best
    cdef floating* tap
    cdef int64_t* win
    # winner offsets are exact in the float type up to its mantissa: 2**24 (float) or 2**53 (double)
    cdef bint float_taps = (<double> (kh - 1) * dh * W + (kw - 1) * dw
                            < (16777216.0 if sizeof(floating) == 4 else 9007199254740992.0))
    cdef bint cols_ok = True, k2s2 = _k2s2(H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw)
    cdef Py_ssize_t j, w0
    _check_threads(num_threads)
    _check_dims(N, C, H, W, grad_out.shape[0], grad_out.shape[1], out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw, "x",
                "grad_out")
    if _shape4(x.shape) != _shape4(grad_x.shape):
        raise ValueError(f"grad_x must have the shape of x, {_shape4(x.shape)}, got {_shape4(grad_x.shape)}")
    if N * C == 0:
        return
    if (min(best_buf.shape[0], tap_buf.shape[0], win_buf.shape[0]) < num_threads
            or min(best_buf.shape[1], win_buf.shape[1]) < out_w or tap_buf.shape[1] < 2 * out_w):
        raise ValueError(f"best_buf and win_buf need a row of at least out_w = {out_w} values and tap_buf one of "
                         f"2 * out_w = {2 * out_w} for each of the {num_threads} threads, got {best_buf.shape[0]} x "
                         f"{best_buf.shape[1]}, {win_buf.shape[0]} x {win_buf.shape[1]} and {tap_buf.shape[0]} x "
                         f"{tap_buf.shape[1]}")
    for j in range(out_w):
        w0 = j * sw - pw
        if _tap_lo(w0, dw) >= _tap_hi(w0, kw, dw, W):
            cols_ok = False
    with nogil, parallel(num_threads=num_threads):
        tid = threadid()
        best = &best_buf[tid, 0]
        tap = &tap_buf[tid, 0]
        win = &win_buf[tid, 0]
        for plane in prange(N * C, schedule="guided"):
            xp = &x[0, 0, 0, 0] + plane * H * W
            gp = &grad_out[0, 0, 0, 0] + plane * out_h * out_w
            gx = &grad_x[0, 0, 0, 0] + plane * H * W
            nxt = (xp + H * W) if plane + 1 < N * C else NULL
            if not float_taps:
                _plane_backward_index(xp, gp, gx, best, win, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw,
                                      minimum)
            elif k2s2 or _has_nan(xp, H * W):   # (2x2 windows always run the full rule: it vectorises better)
                if minimum:
                    _plane_backward(xp, gp, gx, best, tap, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw,
                                    cols_ok, nxt, <MinRule*> NULL)
                else:
                    _plane_backward(xp, gp, gx, best, tap, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw,
                                    cols_ok, nxt, <MaxRule*> NULL)
            elif minimum:
                _plane_backward(xp, gp, gx, best, tap, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw,
                                cols_ok, nxt, <MinRuleNoNaN*> NULL)
            else:
                _plane_backward(xp, gp, gx, best, tap, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw,
                                cols_ok, nxt, <MaxRuleNoNaN*> NULL)


# ----------------------------------------------------------------------------------------------------------------
# Max / min pooling with indices, NCHW, and the backward from those indices (PyTorch's forward+backward)

cdef extern from *:
    """
    /* Copy n bytes with non-temporal ("streaming") stores where the destination is 16-byte aligned: the lines go
       to memory without first being read into the cache, as an ordinary store would read them (and they do not
       push other data out of the cache). SSE2 is in every x86-64 CPU; elsewhere this is memcpy. pl_sfence()
       orders the streamed stores before any later store (call it before the data is handed on). */
    #include <string.h>
    #include <stdint.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    static void pl_stream_copy(void* dst, const void* src, size_t n) {
        char* d = (char*) dst;
        const char* s = (const char*) src;
        size_t head = (size_t) (-(uintptr_t) d) & 15;
        if (head > n)
            head = n;
        memcpy(d, s, head);
        d += head; s += head; n -= head;
        for (; n >= 64; n -= 64, d += 64, s += 64) {
            __m128i a = _mm_loadu_si128((const __m128i*) s), b = _mm_loadu_si128((const __m128i*) (s + 16));
            __m128i c = _mm_loadu_si128((const __m128i*) (s + 32)), e = _mm_loadu_si128((const __m128i*) (s + 48));
            _mm_stream_si128((__m128i*) d, a); _mm_stream_si128((__m128i*) (d + 16), b);
            _mm_stream_si128((__m128i*) (d + 32), c); _mm_stream_si128((__m128i*) (d + 48), e);
        }
        for (; n >= 16; n -= 16, d += 16, s += 16)
            _mm_stream_si128((__m128i*) d, _mm_loadu_si128((const __m128i*) s));
        memcpy(d, s, n);
    }
    static void pl_sfence(void) { _mm_sfence(); }
    #else
    static void pl_stream_copy(void* dst, const void* src, size_t n) { memcpy(dst, src, n); }
    static void pl_sfence(void) { }
    #endif
    """
    void pl_stream_copy(void* dst, const void* src, size_t n) noexcept nogil
    void pl_sfence() noexcept nogil


cdef extern from *:
    """
    /* Winners of 3x3 stride-2 float64 windows with their values and flat indices, for rows without NaN, 4 at a time
       in the AVX2 build only (elsewhere the function handles no window): as pl_index_3x3s2_f32 (pl_3x3s2_avx2_f32),
       lane by lane the operations of _winner9 (a max (min) fold in scan order, then the first tap equal to the
       result). */
    #if defined(__AVX2__)
    #include <immintrin.h>
    /* one row's taps q + 2k, q + 2k + 1, q + 2k + 2 of windows k = 0..3, in the lane order 0,2,1,3 */
    #define PL_ROW4(p, A, B, C) do { \
        __m256d lo_ = _mm256_loadu_pd(p), hi_ = _mm256_loadu_pd((p) + 4); \
        __m256d lo2_ = _mm256_loadu_pd((p) + 2), hi2_ = _mm256_loadu_pd((p) + 6); \
        A = _mm256_unpacklo_pd(lo_, hi_); B = _mm256_unpackhi_pd(lo_, hi_); C = _mm256_unpacklo_pd(lo2_, hi2_); \
    } while (0)
    static Py_ssize_t pl_index_3x3s2_f64(double* out, int64_t* ix, const double* r0, Py_ssize_t W, Py_ssize_t jl,
                                         Py_ssize_t jh, Py_ssize_t off, int minimum, int64_t at) {
        const __m256i o1 = _mm256_set1_epi64x(1), o2 = _mm256_set1_epi64x(2), o3 = _mm256_set1_epi64x(W);
        const __m256i o4 = _mm256_set1_epi64x(W + 1), o5 = _mm256_set1_epi64x(W + 2);
        const __m256i o6 = _mm256_set1_epi64x(2 * W), o7 = _mm256_set1_epi64x(2 * W + 1);
        const __m256i o8 = _mm256_set1_epi64x(2 * W + 2), zero = _mm256_setzero_si256();
        const __m256i step = _mm256_setr_epi64x(0, 2, 4, 6);
        Py_ssize_t j = jl, jb, last;
        if (W - 10 - off < 0)
            return jl;
        last = (W - 10 - off) / 2;
        while (j < jh) {
            __m256d v0, v1, v2, v3, v4, v5, v6, v7, v8, b;
            __m256i t;
            const double* p;
            jb = pl_next_block(j, jl, jh, last, 4);
            if (jb < 0)
                return j;
            p = r0 + 2 * jb + off;
            PL_ROW4(p, v0, v1, v2);
            PL_ROW4(p + W, v3, v4, v5);
            PL_ROW4(p + 2 * W, v6, v7, v8);
            if (minimum) PL_FOLD8(_mm256_min_pd); else PL_FOLD8(_mm256_max_pd);
            #define PL_EQ4(v) _mm256_castpd_si256(_mm256_cmp_pd(v, b, _CMP_EQ_OQ))
            t = _mm256_blendv_epi8(o8, o7, PL_EQ4(v7));
            t = _mm256_blendv_epi8(t, o6, PL_EQ4(v6));
            t = _mm256_blendv_epi8(t, o5, PL_EQ4(v5));
            t = _mm256_blendv_epi8(t, o4, PL_EQ4(v4));
            t = _mm256_blendv_epi8(t, o3, PL_EQ4(v3));
            t = _mm256_blendv_epi8(t, o2, PL_EQ4(v2));
            t = _mm256_blendv_epi8(t, o1, PL_EQ4(v1));
            t = _mm256_blendv_epi8(t, zero, PL_EQ4(v0));
            #undef PL_EQ4
            /* lanes 0,2,1,3 back into window order */
            t = _mm256_permute4x64_epi64(t, _MM_SHUFFLE(3, 1, 2, 0));
            b = _mm256_permute4x64_pd(b, _MM_SHUFFLE(3, 1, 2, 0));
            _mm256_storeu_pd(out + jb, b);
            _mm256_storeu_si256((__m256i*) (ix + jb),
                                _mm256_add_epi64(_mm256_add_epi64(_mm256_set1_epi64x(at + 2 * jb), step), t));
            j = jb + 4;
        }
        return j;
    }
    #else
    static Py_ssize_t pl_index_3x3s2_f64(double* out, int64_t* ix, const double* r0, Py_ssize_t W, Py_ssize_t jl,
                                         Py_ssize_t jh, Py_ssize_t off, int minimum, int64_t at) {
        (void) out; (void) ix; (void) r0; (void) W; (void) jh; (void) off; (void) minimum; (void) at;
        return jl;
    }
    #endif
    """
    Py_ssize_t pl_index_3x3s2_f64(double* out, int64_t* ix, const double* r0, Py_ssize_t W, Py_ssize_t jl,
                                  Py_ssize_t jh, Py_ssize_t off, int minimum, int64_t at) noexcept nogil


cdef inline void _index_2x2(const floating* r0, const floating* r1, floating* o, int64_t* ix, int64_t at,
                            int64_t W, Py_ssize_t out_w, rule_t* rule) noexcept nogil:
    """One output row of 2x2 stride-2 windows: each window's winner (the last tap that takes, in scan order) and
    its flat index; ``at``: the index of window 0's first tap."""
    cdef Py_ssize_t j
    cdef floating b, v1, v2, v3
    cdef bint t1, t2, t3
    cdef int64_t k
    for j in range(out_w):
        b = r0[2 * j]
        v1 = r0[2 * j + 1]
        v2 = r1[2 * j]
        v3 = r1[2 * j + 1]
        t1 = _wins(v1, b, rule)
        b = _sel(t1, v1, b)
        t2 = _wins(v2, b, rule)
        b = _sel(t2, v2, b)
        t3 = _wins(v3, b, rule)
        b = _sel(t3, v3, b)
        k = W + 1 if t3 else (W if t2 else (1 if t1 else 0))
        o[j] = b
        ix[j] = at + 2 * j + k


cdef inline void _index_row(const floating* xp, floating* o, int64_t* ix, const floating* tap, Py_ssize_t corner,
                            Py_ssize_t sw, Py_ssize_t j_lo, Py_ssize_t j_hi) noexcept nogil:
    """Windows j_lo .. j_hi-1 of an output row: the index ``corner + j * sw + tap[j]`` and the value there (the
    winner's own value, so a NaN keeps its bits)."""
    cdef Py_ssize_t j, k
    for j in range(j_lo, j_hi):
        k = corner + j * sw + <int32_t> tap[j]           # (int32: the conversion vectorises; the tier checks < 2**31)
        ix[j] = k
        o[j] = xp[k]


cdef void _plane_vals_index(const floating* xp, floating* op, int64_t* ip, floating* best, floating* tap,
                            Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t kh,
                            Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                            Py_ssize_t dw, const floating* nxt, rule_t* rule) noexcept nogil:
    """Max (min) pooling of one NCHW plane with winner indices, on the backward's winner search: per output row,
    the winners' tap offsets (:func:`_winner_row`), then each window's index and value (the winner's own value,
    so a NaN keeps its bits). Every window must hold a real cell, and the taps must be exact in the float type
    (the caller checks both)."""
    cdef Py_ssize_t i, jl, jh, j0, corner
    cdef Py_ssize_t reach = (2 if nxt != NULL else 1) * H
    cdef floating* o
    cdef int64_t* ix
    if _k2s2(H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw):
        for i in range(out_h):
            _prefetch_rows(xp, 2 * (i + PF_AHEAD), 2 * (i + PF_AHEAD) + 2, W, reach)
            _index_2x2(xp + 2 * i * W, xp + (2 * i + 1) * W, op + i * out_w, ip + i * out_w, 2 * i * W, W, out_w,
                       rule)
        return
    _interior(out_w, kw, sw, pw, dw, W, &jl, &jh)
    for i in range(out_h):
        _prefetch_part(nxt, H * W, i, out_h)
        corner = (i * sh - ph) * W - pw
        o = op + i * out_w
        ix = ip + i * out_w
        j0 = jl
        if ((rule_t is MaxRuleNoNaN or rule_t is MinRuleNoNaN) and _k3s2p1(kh, kw, sh, sw, ph, pw, dh, dw)
                and i >= 1 and 2 * i + 1 < H):
            # three real rows: the interior windows' values and indices in one AVX2 pass (AVX2 build)
            if floating is float:
                j0 = pl_index_3x3s2_f32(o, ix, xp + (2 * i - 1) * W, W, jl, jh, -1, rule_t is MinRuleNoNaN, corner)
            else:
                j0 = pl_index_3x3s2_f64(o, ix, xp + (2 * i - 1) * W, W, jl, jh, -1, rule_t is MinRuleNoNaN, corner)
        if j0 == jl:
            _winner_row(xp, best, tap, i, H, W, out_w, kh, kw, sh, sw, ph, pw, dh, dw, jl, jh, rule)
            _index_row(xp, o, ix, tap, corner, sw, 0, out_w)
        else:                                         # the edge windows, and any the AVX2 pass left
            _taps_3x3s2_row(tap, xp + (2 * i - 1) * W, W, out_w, jl, j0, jh, -1, rule)
            _index_row(xp, o, ix, tap, corner, sw, 0, jl)
            _index_row(xp, o, ix, tap, corner, sw, j0, out_w)


cdef int _check_threads(int num_threads) except -1:
    """OpenMP reads ``num_threads(0)`` as "the default number", which may exceed the per-thread rows a caller sized."""
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return 0


cdef int _need_rows(Py_ssize_t rows, Py_ssize_t cols, str name, int num_threads, Py_ssize_t width) except -1:
    """A per-thread scratch array of ``rows x cols`` values needs at least ``num_threads`` rows of ``width``."""
    if rows < num_threads or cols < width:
        raise ValueError(f"{name} needs a row of at least {width} values for each of the {num_threads} threads, got "
                         f"({rows}, {cols})")
    return 0


cdef int _check_rows(cnp.ndarray buf, str name, int typenum, int num_threads, Py_ssize_t width) except -1:
    """A per-thread scratch ndarray: 2-d, C-contiguous, of ``typenum``, writeable, with at least ``num_threads`` rows
    of at least ``width`` values."""
    _check_array(buf, name, typenum, 2, True)
    _need_rows(cnp.PyArray_DIMS(buf)[0], cnp.PyArray_DIMS(buf)[1], name, num_threads, width)
    return 0


cdef int _check_real_windows(Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w, int kh, int kw, int sh,
                             int sw, int ph, int pw, int dh, int dw) except -1:
    """Every window covers at least one cell of the ``H x W`` plane (the rule of
    :func:`pooling_lib.params.pool_geometry`). Only a window that starts in the padding can miss: the ones before
    the first that starts at a cell, a few at most."""
    cdef Py_ssize_t i
    for i in range(out_h):
        if i * sh - ph >= 0:
            break
        if _tap_lo(i * sh - ph, dh) >= _tap_hi(i * sh - ph, kh, dh, H):
            raise ValueError(f"every window must cover a cell of x: window {i} along H has every tap in the padding")
    for i in range(out_w):
        if i * sw - pw >= 0:
            break
        if _tap_lo(i * sw - pw, dw) >= _tap_hi(i * sw - pw, kw, dw, W):
            raise ValueError(f"every window must cover a cell of x: window {i} along W has every tap in the padding")
    return 0


cdef void _extremum_index_nchw(const floating* x, floating* out, int64_t* indices, floating* best_buf,
                               Py_ssize_t best_row, floating* tap_buf, Py_ssize_t tap_row, Py_ssize_t N, Py_ssize_t C,
                               Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w, int kh, int kw, int sh,
                               int sw, int ph, int pw, int dh, int dw, bint minimum, int num_threads) noexcept nogil:
    """The loop of :func:`extremum_index_nchw`, on the arrays' memory; thread ``tid``'s scratch rows start at
    ``best_buf + tid * best_row`` and ``tap_buf + tid * tap_row``."""
    cdef Py_ssize_t plane, tid
    cdef const floating* xp
    cdef const floating* nxt
    cdef floating* op
    cdef int64_t* ip
    cdef floating* best
    cdef floating* tap
    cdef bint k2s2 = _k2s2(H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw)
    if N * C == 0:
        return
    with parallel(num_threads=num_threads):
        tid = threadid()
        best = best_buf + tid * best_row
        tap = tap_buf + tid * tap_row
        for plane in prange(N * C, schedule="guided"):
            xp = x + plane * H * W
            op = out + plane * out_h * out_w
            ip = indices + plane * out_h * out_w
            nxt = (xp + H * W) if plane + 1 < N * C else NULL
            if k2s2 or _has_nan(xp, H * W):
                if minimum:
                    _plane_vals_index(xp, op, ip, best, tap, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw,
                                      nxt, <MinRule*> NULL)
                else:
                    _plane_vals_index(xp, op, ip, best, tap, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw,
                                      nxt, <MaxRule*> NULL)
            elif minimum:
                _plane_vals_index(xp, op, ip, best, tap, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw, nxt,
                                  <MinRuleNoNaN*> NULL)
            else:
                _plane_vals_index(xp, op, ip, best, tap, H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw, nxt,
                                  <MaxRuleNoNaN*> NULL)


def extremum_index_nchw(cnp.ndarray x, cnp.ndarray out, cnp.ndarray indices, cnp.ndarray best_buf,
                        cnp.ndarray tap_buf, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                        bint minimum, int num_threads):
    """Max (min) pooling of a C-contiguous NCHW batch with the winners' indices, for geometries where every
    window holds a real cell and a winner's offset in its window, ``(kh - 1) * dh * W + (kw - 1) * dw``, is exact
    in the float type and below 2**31 (the tier routes the others to :func:`max_pool2d_nchw`; this kernel refuses
    them). The same bits as that kernel; each plane is scanned for NaN first as in :func:`extremum_nchw`.
    ``best_buf`` and ``tap_buf``: a scratch row of at least ``out_w`` values per thread. The arrays come as
    ndarrays, checked in C, as in :func:`extremum_nchw`."""
    cdef int typenum = _check_pool_arrays(x, out, kh, kw, sh, sw, ph, pw, dh, dw)
    cdef cnp.npy_intp* xs = cnp.PyArray_DIMS(x)
    cdef cnp.npy_intp* os = cnp.PyArray_DIMS(out)
    cdef double reach = (<double> kh - 1) * dh * xs[3] + (<double> kw - 1) * dw
    _check_threads(num_threads)
    _check_array(indices, "indices", cnp.NPY_INT64, 4, True)
    if not cnp.PyArray_SAMESHAPE(indices, out):
        raise ValueError(f"indices must have the shape of out, {(<object> out).shape}, got {(<object> indices).shape}")
    _check_rows(best_buf, "best_buf", typenum, num_threads, os[3])
    _check_rows(tap_buf, "tap_buf", typenum, num_threads, os[3])
    if reach >= (2.0**24 if typenum == cnp.NPY_FLOAT else 2.0**31):
        raise ValueError(f"a window's last tap is {reach:.0f} cells after its first: this kernel needs less than "
                         f"{'2**24 in float32' if typenum == cnp.NPY_FLOAT else '2**31'}")
    _check_real_windows(xs[2], xs[3], os[2], os[3], kh, kw, sh, sw, ph, pw, dh, dw)
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            _extremum_index_nchw(<const float*> cnp.PyArray_DATA(x), <float*> cnp.PyArray_DATA(out),
                                 <int64_t*> cnp.PyArray_DATA(indices), <float*> cnp.PyArray_DATA(best_buf),
                                 cnp.PyArray_DIMS(best_buf)[1], <float*> cnp.PyArray_DATA(tap_buf),
                                 cnp.PyArray_DIMS(tap_buf)[1], xs[0], xs[1], xs[2], xs[3], os[2], os[3], kh, kw, sh,
                                 sw, ph, pw, dh, dw, minimum, num_threads)
        else:
            _extremum_index_nchw(<const double*> cnp.PyArray_DATA(x), <double*> cnp.PyArray_DATA(out),
                                 <int64_t*> cnp.PyArray_DATA(indices), <double*> cnp.PyArray_DATA(best_buf),
                                 cnp.PyArray_DIMS(best_buf)[1], <double*> cnp.PyArray_DATA(tap_buf),
                                 cnp.PyArray_DIMS(tap_buf)[1], xs[0], xs[1], xs[2], xs[3], os[2], os[3], kh, kw, sh,
                                 sw, ph, pw, dh, dw, minimum, num_threads)


cdef extern from *:
    """
    /* One output row of 2x2 stride-2 windows, from indices: each window's cells get 0 + g[j] where the window's
       index points and +0 elsewhere, as a scatter into a zeroed gradient would. Window j's cells are at
       at + 2j + {0, 1, W, W + 1}. Returns the number of windows whose index is one of their own cells: when it is
       not n, an index points elsewhere and the caller scatters the plane instead. One pass over the row, no
       branch: the compiler vectorises it. */
    #define PL_INDEX_ROW_2X2(NAME, T) \
    static Py_ssize_t NAME(T* __restrict q0, T* __restrict q1, const T* __restrict g, \
                           const int64_t* __restrict ix, Py_ssize_t n, int64_t at, int64_t W) { \
        Py_ssize_t j, hits = 0; \
        for (j = 0; j < n; j++) { \
            const int64_t d = ix[j] - (at + 2 * j); \
            const T gz = (T) 0 + g[j]; \
            q0[2 * j] = d == 0 ? gz : (T) 0; \
            q0[2 * j + 1] = d == 1 ? gz : (T) 0; \
            q1[2 * j] = d == W ? gz : (T) 0; \
            q1[2 * j + 1] = d == W + 1 ? gz : (T) 0; \
            hits += (d == 0) | (d == 1) | (d == W) | (d == W + 1); \
        } \
        return hits; \
    }
    PL_INDEX_ROW_2X2(pl_index_row_2x2_f32, float)
    PL_INDEX_ROW_2X2(pl_index_row_2x2_f64, double)

    /* The same row with AVX2, written straight to memory with streaming stores (in the AVX2 build only; elsewhere
       the functions do no window). q0 and q1 must be 16-byte aligned. Windows are done 4 at a time (in whole
       cache lines when the row is: a line written partly by streaming stores and partly by plain ones is slow);
       returns the first window left to the caller, or -1 as soon as a block holds an index outside its
       window (the caller then scatters the plane). The masks m0..m3 (index at cell 0, 1, W, W + 1) select g or
       +0 lane by lane, the same values as the loop above. */
    #if defined(__AVX2__)
    #include <immintrin.h>
    /* a 256-bit vector streamed as two 128-bit halves: q needs only 16-byte alignment, which NumPy's allocations
       have */
    #define PL_STREAM_PD(q, v) do { _mm_stream_pd((q), _mm256_castpd256_pd128(v)); \
                                    _mm_stream_pd((q) + 2, _mm256_extractf128_pd((v), 1)); } while (0)
    /* The 64-bit masks of 4 windows whose index is at cell 0, 1, W or W + 1 of their block (base: each window's
       first cell); returns 0 when some window's index is at none of them. */
    static inline int pl_block_masks(const int64_t* ix, __m256i base, int64_t W, __m256i m[4]) {
        const __m256i d = _mm256_sub_epi64(_mm256_loadu_si256((const __m256i*) ix), base);
        m[0] = _mm256_cmpeq_epi64(d, _mm256_setzero_si256());
        m[1] = _mm256_cmpeq_epi64(d, _mm256_set1_epi64x(1));
        m[2] = _mm256_cmpeq_epi64(d, _mm256_set1_epi64x(W));
        m[3] = _mm256_cmpeq_epi64(d, _mm256_set1_epi64x(W + 1));
        return _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_or_si256(m[0], m[1]),
                                                                       _mm256_or_si256(m[2], m[3])))) == 15;
    }
    static Py_ssize_t pl_stream_row_2x2_f64(double* q0, double* q1, const double* g, const int64_t* ix,
                                            Py_ssize_t n, int64_t at, int64_t W) {
        __m256i base = _mm256_add_epi64(_mm256_set1_epi64x(at), _mm256_setr_epi64x(0, 2, 4, 6)), m[4];
        Py_ssize_t j;
        for (j = 0; j + 4 <= n; j += 4, base = _mm256_add_epi64(base, _mm256_set1_epi64x(8))) {
            const __m256d gz = _mm256_add_pd(_mm256_setzero_pd(), _mm256_loadu_pd(g + j));
            __m256d e0, e1, lo, hi;
            if (!pl_block_masks(ix + j, base, W, m))
                return -1;
            e0 = _mm256_and_pd(_mm256_castsi256_pd(m[0]), gz); e1 = _mm256_and_pd(_mm256_castsi256_pd(m[1]), gz);
            lo = _mm256_unpacklo_pd(e0, e1); hi = _mm256_unpackhi_pd(e0, e1);
            PL_STREAM_PD(q0 + 2 * j, _mm256_permute2f128_pd(lo, hi, 0x20));
            PL_STREAM_PD(q0 + 2 * j + 4, _mm256_permute2f128_pd(lo, hi, 0x31));
            e0 = _mm256_and_pd(_mm256_castsi256_pd(m[2]), gz); e1 = _mm256_and_pd(_mm256_castsi256_pd(m[3]), gz);
            lo = _mm256_unpacklo_pd(e0, e1); hi = _mm256_unpackhi_pd(e0, e1);
            PL_STREAM_PD(q1 + 2 * j, _mm256_permute2f128_pd(lo, hi, 0x20));
            PL_STREAM_PD(q1 + 2 * j + 4, _mm256_permute2f128_pd(lo, hi, 0x31));
        }
        return j;
    }
    /* float: 4 windows in 128-bit vectors, their 64-bit index masks narrowed to 32-bit lanes */
    static inline __m128 pl_narrow_mask(__m256i m) {
        return _mm_castsi128_ps(_mm256_castsi256_si128(
            _mm256_permutevar8x32_epi32(m, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7))));
    }
    static Py_ssize_t pl_stream_row_2x2_f32(float* q0, float* q1, const float* g, const int64_t* ix,
                                            Py_ssize_t n, int64_t at, int64_t W) {
        __m256i base = _mm256_add_epi64(_mm256_set1_epi64x(at), _mm256_setr_epi64x(0, 2, 4, 6)), m[4];
        Py_ssize_t j;
        for (j = 0; j + 4 <= n; j += 4, base = _mm256_add_epi64(base, _mm256_set1_epi64x(8))) {
            const __m128 gz = _mm_add_ps(_mm_setzero_ps(), _mm_loadu_ps(g + j));
            __m128 e0, e1;
            if (!pl_block_masks(ix + j, base, W, m))
                return -1;
            e0 = _mm_and_ps(pl_narrow_mask(m[0]), gz); e1 = _mm_and_ps(pl_narrow_mask(m[1]), gz);
            _mm_stream_ps(q0 + 2 * j, _mm_unpacklo_ps(e0, e1));
            _mm_stream_ps(q0 + 2 * j + 4, _mm_unpackhi_ps(e0, e1));
            e0 = _mm_and_ps(pl_narrow_mask(m[2]), gz); e1 = _mm_and_ps(pl_narrow_mask(m[3]), gz);
            _mm_stream_ps(q1 + 2 * j, _mm_unpacklo_ps(e0, e1));
            _mm_stream_ps(q1 + 2 * j + 4, _mm_unpackhi_ps(e0, e1));
        }
        return j;
    }
    #else
    static Py_ssize_t pl_stream_row_2x2_f64(double* q0, double* q1, const double* g, const int64_t* ix,
                                            Py_ssize_t n, int64_t at, int64_t W) {
        (void) q0; (void) q1; (void) g; (void) ix; (void) n; (void) at; (void) W;
        return 0;
    }
    static Py_ssize_t pl_stream_row_2x2_f32(float* q0, float* q1, const float* g, const int64_t* ix,
                                            Py_ssize_t n, int64_t at, int64_t W) {
        (void) q0; (void) q1; (void) g; (void) ix; (void) n; (void) at; (void) W;
        return 0;
    }
    #endif
    """
    Py_ssize_t pl_index_row_2x2_f32(float* q0, float* q1, const float* g, const int64_t* ix, Py_ssize_t n,
                                    int64_t at, int64_t W) noexcept nogil
    Py_ssize_t pl_index_row_2x2_f64(double* q0, double* q1, const double* g, const int64_t* ix, Py_ssize_t n,
                                    int64_t at, int64_t W) noexcept nogil
    Py_ssize_t pl_stream_row_2x2_f32(float* q0, float* q1, const float* g, const int64_t* ix, Py_ssize_t n,
                                     int64_t at, int64_t W) noexcept nogil
    Py_ssize_t pl_stream_row_2x2_f64(double* q0, double* q1, const double* g, const int64_t* ix, Py_ssize_t n,
                                     int64_t at, int64_t W) noexcept nogil


cdef extern from *:
    """
    /* One gradient row under 3x3 stride-2 padding-1 windows, from indices, with AVX2 and streaming stores (in the
       AVX2 build only; elsewhere the functions do nothing and return -1). The plane has even W, and M = W / 2
       windows per row (a multiple of 4). Cell 2k of the row is covered by window k, cell 2k + 1 by windows k and
       k + 1, of window row a (indices ia, gradients ga) and, when ib is not NULL, then of window row b. Each cell
       gets, from +0 and in window order, the gradient of every window whose index is that cell (pos0: the flat
       index of the row's first cell), as the scatter would: adding +0 for the others changes nothing, since the
       sum is never -0.0. Four windows (eight cells) at a time; q must be 16-byte aligned. Returns how many
       (window, cell) pairs matched, so that the caller can check that every window found its cell. */
    #if defined(__AVX2__)
    #include <immintrin.h>
    /* the indices and gradients of windows k+1 .. k+4 (the last one absent at the row's end: index -1, gradient 0) */
    #define PL_NEXT4(I, G, ii, gg, k, M, LOADG, SETG, ZG) do { \
        if ((k) + 4 < (M)) { I = _mm256_loadu_si256((const __m256i*) ((ii) + (k) + 1)); G = LOADG((gg) + (k) + 1); } \
        else { I = _mm256_setr_epi64x((ii)[(k) + 1], (ii)[(k) + 2], (ii)[(k) + 3], -1); \
               G = SETG((gg)[(k) + 1], (gg)[(k) + 2], (gg)[(k) + 3], ZG); } } while (0)
    /* acc += the gradients g of the lanes whose index i is pos (lane by lane: + g or + 0), counting the matches */
    #define PL_PICK4D(acc, i, pos, g) do { \
        const __m256d m_ = _mm256_castsi256_pd(_mm256_cmpeq_epi64((i), (pos))); \
        hits += __builtin_popcount(_mm256_movemask_pd(m_)); \
        acc = _mm256_add_pd(acc, _mm256_and_pd(m_, (g))); } while (0)
    #define PL_PICK4S(acc, i, pos, g) do { \
        const __m128 m_ = pl_narrow_mask(_mm256_cmpeq_epi64((i), (pos))); \
        hits += __builtin_popcount(_mm_movemask_ps(m_)); \
        acc = _mm_add_ps(acc, _mm_and_ps(m_, (g))); } while (0)
    static Py_ssize_t pl_stream_row_3x3_f64(double* q, const int64_t* ia, const double* ga, const int64_t* ib,
                                            const double* gb, Py_ssize_t M, int64_t pos0) {
        const __m256i one = _mm256_set1_epi64x(1);
        __m256i pe = _mm256_add_epi64(_mm256_set1_epi64x(pos0), _mm256_setr_epi64x(0, 2, 4, 6));
        Py_ssize_t k, hits = 0;
        for (k = 0; k < M; k += 4, pe = _mm256_add_epi64(pe, _mm256_set1_epi64x(8))) {
            const __m256i po = _mm256_add_epi64(pe, one);
            __m256i i0 = _mm256_loadu_si256((const __m256i*) (ia + k)), i1;
            __m256d g0 = _mm256_loadu_pd(ga + k), g1, e = _mm256_setzero_pd(), o = _mm256_setzero_pd(), lo, hi;
            PL_NEXT4(i1, g1, ia, ga, k, M, _mm256_loadu_pd, _mm256_setr_pd, 0.0);
            PL_PICK4D(e, i0, pe, g0); PL_PICK4D(o, i0, po, g0); PL_PICK4D(o, i1, po, g1);
            if (ib != NULL) {
                i0 = _mm256_loadu_si256((const __m256i*) (ib + k)); g0 = _mm256_loadu_pd(gb + k);
                PL_NEXT4(i1, g1, ib, gb, k, M, _mm256_loadu_pd, _mm256_setr_pd, 0.0);
                PL_PICK4D(e, i0, pe, g0); PL_PICK4D(o, i0, po, g0); PL_PICK4D(o, i1, po, g1);
            }
            lo = _mm256_unpacklo_pd(e, o); hi = _mm256_unpackhi_pd(e, o);
            PL_STREAM_PD(q + 2 * k, _mm256_permute2f128_pd(lo, hi, 0x20));
            PL_STREAM_PD(q + 2 * k + 4, _mm256_permute2f128_pd(lo, hi, 0x31));
        }
        return hits;
    }
    static inline __m128 pl_setr_ps4(float a, float b, float c, float d) { return _mm_setr_ps(a, b, c, d); }
    static Py_ssize_t pl_stream_row_3x3_f32(float* q, const int64_t* ia, const float* ga, const int64_t* ib,
                                            const float* gb, Py_ssize_t M, int64_t pos0) {
        const __m256i one = _mm256_set1_epi64x(1);
        __m256i pe = _mm256_add_epi64(_mm256_set1_epi64x(pos0), _mm256_setr_epi64x(0, 2, 4, 6));
        Py_ssize_t k, hits = 0;
        for (k = 0; k < M; k += 4, pe = _mm256_add_epi64(pe, _mm256_set1_epi64x(8))) {
            const __m256i po = _mm256_add_epi64(pe, one);
            __m256i i0 = _mm256_loadu_si256((const __m256i*) (ia + k)), i1;
            __m128 g0 = _mm_loadu_ps(ga + k), g1, e = _mm_setzero_ps(), o = _mm_setzero_ps();
            PL_NEXT4(i1, g1, ia, ga, k, M, _mm_loadu_ps, pl_setr_ps4, 0.0f);
            PL_PICK4S(e, i0, pe, g0); PL_PICK4S(o, i0, po, g0); PL_PICK4S(o, i1, po, g1);
            if (ib != NULL) {
                i0 = _mm256_loadu_si256((const __m256i*) (ib + k)); g0 = _mm_loadu_ps(gb + k);
                PL_NEXT4(i1, g1, ib, gb, k, M, _mm_loadu_ps, pl_setr_ps4, 0.0f);
                PL_PICK4S(e, i0, pe, g0); PL_PICK4S(o, i0, po, g0); PL_PICK4S(o, i1, po, g1);
            }
            _mm_stream_ps(q + 2 * k, _mm_unpacklo_ps(e, o));
            _mm_stream_ps(q + 2 * k + 4, _mm_unpackhi_ps(e, o));
        }
        return hits;
    }
    #else
    static Py_ssize_t pl_stream_row_3x3_f64(double* q, const int64_t* ia, const double* ga, const int64_t* ib,
                                            const double* gb, Py_ssize_t M, int64_t pos0) {
        (void) q; (void) ia; (void) ga; (void) ib; (void) gb; (void) M; (void) pos0;
        return -1;
    }
    static Py_ssize_t pl_stream_row_3x3_f32(float* q, const int64_t* ia, const float* ga, const int64_t* ib,
                                            const float* gb, Py_ssize_t M, int64_t pos0) {
        (void) q; (void) ia; (void) ga; (void) ib; (void) gb; (void) M; (void) pos0;
        return -1;
    }
    #endif
    """
    Py_ssize_t pl_stream_row_3x3_f32(float* q, const int64_t* ia, const float* ga, const int64_t* ib,
                                     const float* gb, Py_ssize_t M, int64_t pos0) noexcept nogil
    Py_ssize_t pl_stream_row_3x3_f64(double* q, const int64_t* ia, const double* ga, const int64_t* ib,
                                     const double* gb, Py_ssize_t M, int64_t pos0) noexcept nogil


cdef inline bint _whole_rows(Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w, size_t itemsize,
                             const void* gx) noexcept nogil:
    """True when a plane's gradient can be streamed row by row from the registers in whole cache lines: the AVX2
    build, stride-2 windows that tile the ``H x W`` plane exactly (``H == 2 * out_h``, ``W == 2 * out_w``), blocks of
    4 windows (``out_w`` a multiple of 4), and rows of 16-byte aligned lines (``gx`` and every row)."""
    return (PL_AVX2 and 2 * out_h == H and 2 * out_w == W and out_w % 4 == 0 and (W * itemsize) % 16 == 0
            and (<size_t> gx) % 16 == 0)


cdef bint _stream_3x3(const int64_t* ip, const floating* gp, floating* gx, Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    """One plane's gradient under 3x3 stride-2 padding-1 windows (H and W even, H/2 x W/2 windows, W/2 a multiple
    of 4) from indices, row by row with streaming stores (``pl_stream_row_3x3_*``): row 2i lies under window row i
    only, row 2i + 1 under window rows i and i + 1. Returns False (``gx`` half written) when some index is not a
    cell of its own window: the caller then scatters the plane."""
    cdef Py_ssize_t r, i, M = W // 2, oh = H // 2, hits = 0
    cdef const int64_t* ib
    cdef const floating* gb
    for r in range(H):
        i = r // 2
        ib = NULL
        gb = NULL
        if r % 2 == 1 and i + 1 < oh:
            ib = ip + (i + 1) * M
            gb = gp + (i + 1) * M
        if floating is float:
            hits += pl_stream_row_3x3_f32(gx + r * W, ip + i * M, gp + i * M, ib, gb, M, r * W)
        else:
            hits += pl_stream_row_3x3_f64(gx + r * W, ip + i * M, gp + i * M, ib, gb, M, r * W)
    return hits == oh * M


cdef bint _unscatter_2x2(const int64_t* ip, const floating* gp, floating* dst, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil:
    """One plane's gradient under 2x2 stride-2 windows from indices, row by row without a scatter (see
    ``PL_INDEX_ROW_2X2``). Returns False, with ``dst`` half written, when some index is not a cell of its own
    window: the caller then scatters the plane."""
    cdef Py_ssize_t i, hits
    if 2 * out_h < H or 2 * out_w < W:
        memset(dst, 0, H * W * sizeof(floating))             # rows or columns that no window covers
    for i in range(out_h):
        if floating is float:
            hits = pl_index_row_2x2_f32(dst + 2 * i * W, dst + (2 * i + 1) * W, gp + i * out_w, ip + i * out_w,
                                        out_w, 2 * i * W, W)
        else:
            hits = pl_index_row_2x2_f64(dst + 2 * i * W, dst + (2 * i + 1) * W, gp + i * out_w, ip + i * out_w,
                                        out_w, 2 * i * W, W)
        if hits != out_w:
            return False
    return True


cdef bint _stream_2x2(const int64_t* ip, const floating* gp, floating* gx, Py_ssize_t H, Py_ssize_t W,
                      Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil:
    """As :func:`_unscatter_2x2` for a plane that the windows tile exactly, ``out_w`` a multiple of 4, writing
    ``gx`` with streaming stores (``pl_stream_row_2x2_*``). ``gx``'s rows must be 16-byte aligned. Returns False
    when some index is not a cell of its own window (``gx`` is then half written)."""
    cdef Py_ssize_t i, j
    for i in range(out_h):
        if floating is float:
            j = pl_stream_row_2x2_f32(gx + 2 * i * W, gx + (2 * i + 1) * W, gp + i * out_w, ip + i * out_w, out_w,
                                      2 * i * W, W)
        else:
            j = pl_stream_row_2x2_f64(gx + 2 * i * W, gx + (2 * i + 1) * W, gp + i * out_w, ip + i * out_w, out_w,
                                      2 * i * W, W)
        if j != out_w:
            return False
    return True


cdef inline Py_ssize_t _scatter(const int64_t* ip, const floating* gp, floating* dst, Py_ssize_t cells,
                                Py_ssize_t n, Py_ssize_t C) noexcept nogil:
    """Zero ``cells * C`` values of ``dst``, then add each of the ``n * C`` gradients ``gp[o * C + c]`` to cell
    ``ip[o * C + c]`` of channel ``c``, in order (PyTorch's ``grad_x[index] += grad_out``; 0 + g turns -0.0
    into +0.0 as it does). An index outside ``[0, cells)`` is skipped and counted: the return value."""
    cdef Py_ssize_t o, c, bad = 0
    cdef int64_t k
    memset(dst, 0, cells * C * sizeof(floating))
    if C == 1:
        for o in range(n):
            k = ip[o]
            if <uint64_t> k < <uint64_t> cells:
                dst[k] += gp[o]
            else:
                bad += 1
        return bad
    for o in range(n):
        for c in range(C):
            k = ip[o * C + c]
            if <uint64_t> k < <uint64_t> cells:
                dst[k * C + c] += gp[o * C + c]
            else:
                bad += 1
    return bad


cdef void _max_backward_indices(const floating* grad_out, const int64_t* indices, floating* grad_x, floating* stage,
                                Py_ssize_t stage_row, bint stream, int64_t* bad, Py_ssize_t units, Py_ssize_t size,
                                Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w, bint nhwc,
                                bint blocks_2x2, bint rows_3x3, int num_threads) noexcept nogil:
    """The loop of :func:`max_backward_indices`, on the arrays' memory: ``units`` planes (images) of ``size``
    channels per cell; thread ``tid``'s row of ``stage`` starts at ``stage + tid * stage_row``."""
    cdef Py_ssize_t unit, tid, cells = H * W, n = out_h * out_w
    cdef bint tiled, direct
    cdef const int64_t* ip
    cdef const floating* gp
    cdef floating* gx
    cdef floating* dst
    cdef floating* buf = NULL
    blocks_2x2 = blocks_2x2 and not nhwc and 2 * out_h <= H and 2 * out_w <= W
    # NCHW planes that _whole_rows accepts are streamed from the registers (2x2 stride 2, or 3x3 stride 2 padding 1)
    tiled = stream and not nhwc and _whole_rows(H, W, out_h, out_w, sizeof(floating), grad_x)
    direct = tiled and (blocks_2x2 or rows_3x3)
    if units == 0 or cells * size == 0:
        return
    with parallel(num_threads=num_threads):
        tid = threadid()
        if stream:
            buf = stage + tid * stage_row
        for unit in prange(units, schedule="static"):
            ip = indices + unit * n * size
            gp = grad_out + unit * n * size
            gx = grad_x + unit * cells * size
            if direct:
                if not (_stream_2x2(ip, gp, gx, H, W, out_h, out_w) if blocks_2x2 else _stream_3x3(ip, gp, gx, H, W)):
                    pl_sfence()                                   # the streamed rows land before the scatter
                    bad[tid] += _scatter(ip, gp, gx, cells, n, size)
            else:
                dst = buf if stream else gx
                if not (blocks_2x2 and _unscatter_2x2(ip, gp, dst, H, W, out_h, out_w)):
                    bad[tid] += _scatter(ip, gp, dst, cells, n, size)
                if stream:
                    pl_stream_copy(gx, buf, cells * size * sizeof(floating))
        if stream:
            pl_sfence()


def max_backward_indices(cnp.ndarray grad_out, cnp.ndarray indices, cnp.ndarray grad_x, cnp.ndarray stage,
                         cnp.ndarray bad, bint nhwc, bint blocks_2x2, bint rows_3x3, int num_threads):
    """Gradient of max (min) pooling from the forward's indices: ``grad_x`` (every cell written) gets, in each
    plane, ``grad_out[o]`` added to cell ``indices[o]``, output after output in row-major order.

    NCHW (``nhwc`` False): arrays ``(N, C, out_h, out_w)`` and ``(N, C, H, W)``, one plane at a time. NHWC: arrays
    ``(N, out_h, out_w, C)`` and ``(N, H, W, C)``, one image at a time. ``stage``: when it has rows (one per
    thread, of a plane or an image), each plane (image) is built there, in the cache, and then streamed to
    ``grad_x`` (:func:`pl_stream_copy`); without rows, it is built in place. An index outside ``[0, H * W)`` is
    skipped: ``bad[tid]`` counts them for thread ``tid`` (the caller raises when any is counted), so no write ever
    leaves ``grad_x``. ``blocks_2x2`` (NCHW, 2x2 windows at stride 2) and ``rows_3x3`` (NCHW, 3x3 windows at stride 2,
    padding 1): each plane is first built row by row (:func:`_stream_2x2`, :func:`_stream_3x3`, or for 2x2 windows
    on the other paths :func:`_unscatter_2x2`), and scattered only when an index is not a cell of its own window;
    so these two flags choose a path, never a result.

    The arrays come as ndarrays, checked in C, as in :func:`extremum_nchw`: ``grad_out`` and ``grad_x`` 4-d, of one
    float dtype, with the same ``N`` and channels; ``indices`` int64 of ``grad_out``'s shape; ``bad`` int64, a
    count per thread; ``stage`` 2-d, of the dtype, with no rows or a row of a plane (an image) per thread.
    """
    cdef int typenum = cnp.PyArray_TYPE(grad_x)
    cdef cnp.npy_intp* gs
    cdef cnp.npy_intp* xs
    cdef Py_ssize_t H, W, out_h, out_w, units, size
    cdef int c_axis = 3 if nhwc else 1                   # the channel axis of both arrays
    cdef bint stream
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        raise ValueError(f"grad_x must be float32 or float64, got {grad_x.dtype}")
    _check_array(grad_x, "grad_x", typenum, 4, True)
    _check_array(grad_out, "grad_out", typenum, 4, False)
    _check_array(indices, "indices", cnp.NPY_INT64, 4, False)
    if not cnp.PyArray_SAMESHAPE(indices, grad_out):
        raise ValueError(f"indices must have the shape of grad_out, {(<object> grad_out).shape}, got "
                         f"{(<object> indices).shape}")
    gs = cnp.PyArray_DIMS(grad_out)
    xs = cnp.PyArray_DIMS(grad_x)
    if gs[0] != xs[0] or gs[c_axis] != xs[c_axis]:
        raise ValueError(f"grad_out must have the N and C of grad_x{' (NHWC)' if nhwc else ''}, {xs[0]} and "
                         f"{xs[c_axis]}, got {gs[0]} and {gs[c_axis]}")
    if nhwc:
        H, W, out_h, out_w, units, size = xs[1], xs[2], gs[1], gs[2], xs[0], xs[3]
    else:
        H, W, out_h, out_w, units, size = xs[2], xs[3], gs[2], gs[3], xs[0] * xs[1], 1
    _check_threads(num_threads)
    _check_array(bad, "bad", cnp.NPY_INT64, 1, True)
    if cnp.PyArray_DIMS(bad)[0] < num_threads:
        raise ValueError(f"bad needs a count for each of the {num_threads} threads, got {cnp.PyArray_DIMS(bad)[0]}")
    _check_array(stage, "stage", typenum, 2, True)
    stream = cnp.PyArray_DIMS(stage)[0] > 0
    if stream:
        _check_rows(stage, "stage (when it has rows)", typenum, num_threads, H * W * size)
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            _max_backward_indices(<const float*> cnp.PyArray_DATA(grad_out), <const int64_t*> cnp.PyArray_DATA(indices),
                                  <float*> cnp.PyArray_DATA(grad_x), <float*> cnp.PyArray_DATA(stage),
                                  cnp.PyArray_DIMS(stage)[1], stream, <int64_t*> cnp.PyArray_DATA(bad), units, size,
                                  H, W, out_h, out_w, nhwc, blocks_2x2, rows_3x3, num_threads)
        else:
            _max_backward_indices(<const double*> cnp.PyArray_DATA(grad_out),
                                  <const int64_t*> cnp.PyArray_DATA(indices), <double*> cnp.PyArray_DATA(grad_x),
                                  <double*> cnp.PyArray_DATA(stage), cnp.PyArray_DIMS(stage)[1], stream,
                                  <int64_t*> cnp.PyArray_DATA(bad), units, size, H, W, out_h, out_w, nhwc, blocks_2x2,
                                  rows_3x3, num_threads)


# ----------------------------------------------------------------------------------------------------------------
# Max / min pooling, NHWC (x is (N, H, W, C) in memory; the innermost loops run over C)

cdef inline void _pixel_vals(floating* best, const floating* px, Py_ssize_t C, rule_t* rule) noexcept nogil:
    """Fold one tap (one input pixel, all channels) into the running best of every channel."""
    cdef Py_ssize_t c
    cdef floating v, b
    for c in range(C):
        v = px[c]
        b = best[c]
        best[c] = v if _wins(v, b, rule) else b


cdef inline void _pixel_2x2(floating* best, const floating* p0, const floating* p1, Py_ssize_t C,
                            rule_t* rule) noexcept nogil:
    """A whole 2x2 window (rows starting at p0 and p1, adjacent pixels) folded channel by channel."""
    cdef Py_ssize_t c
    cdef floating bst, v
    for c in range(C):
        bst = p0[c]
        v = p0[C + c]
        bst = v if _wins(v, bst, rule) else bst
        v = p1[c]
        bst = v if _wins(v, bst, rule) else bst
        v = p1[C + c]
        bst = v if _wins(v, bst, rule) else bst
        best[c] = bst


cdef inline void _pixel_3x3(floating* best, const floating* p0, const floating* p1, const floating* p2,
                            Py_ssize_t C, rule_t* rule) noexcept nogil:
    """A whole 3x3 window (rows starting at p0, p1, p2, adjacent pixels) folded channel by channel."""
    cdef Py_ssize_t c
    cdef floating bst, v
    for c in range(C):
        bst = p0[c]
        v = p0[C + c]
        bst = v if _wins(v, bst, rule) else bst
        v = p0[2 * C + c]
        bst = v if _wins(v, bst, rule) else bst
        v = p1[c]
        bst = v if _wins(v, bst, rule) else bst
        v = p1[C + c]
        bst = v if _wins(v, bst, rule) else bst
        v = p1[2 * C + c]
        bst = v if _wins(v, bst, rule) else bst
        v = p2[c]
        bst = v if _wins(v, bst, rule) else bst
        v = p2[C + c]
        bst = v if _wins(v, bst, rule) else bst
        v = p2[2 * C + c]
        bst = v if _wins(v, bst, rule) else bst
        best[c] = bst


cdef inline void _pixel_index(floating* best, int64_t* win, const floating* px, Py_ssize_t C, int64_t index,
                              bint minimum) noexcept nogil:
    """As :func:`_pixel_vals` with the full rule, and ``win[c]`` becomes ``index`` where the tap wins."""
    cdef Py_ssize_t c
    cdef floating v, b
    cdef int64_t wi
    cdef bint take
    for c in range(C):
        v = px[c]
        b = best[c]
        wi = win[c]
        take = _takes(v, b, minimum)
        best[c] = v if take else b
        win[c] = index if take else wi


cdef inline void _pixel_taps(const floating* best_in, const floating* tap_in, floating* best, floating* tap,
                             const floating* px, Py_ssize_t C, floating t, rule_t* rule) noexcept nogil:
    """Fold one tap into the running bests ``best_in`` of every channel, writing the result to ``best``, and
    ``tap[c]`` becomes the tap number ``t`` where the tap wins (``tap_in[c]`` elsewhere). The caller passes
    other rows for the result than for the running values: a row rewritten in place only where a lane wins
    compiles (GCC 12, AVX2) to masked stores, which are slow and block the next tap's loads."""
    cdef Py_ssize_t c
    cdef floating v, b, tp
    cdef bint take
    for c in range(C):
        v = px[c]
        b = best_in[c]
        tp = tap_in[c]
        take = _wins(v, b, rule)
        best[c] = v if take else b
        tap[c] = t if take else tp


cdef inline void _pixel_route(floating* gpx, const floating* g, const floating* tap, Py_ssize_t C,
                              floating t) noexcept nogil:
    """Add g[c] to the cell of channel c where tap t won, and + 0 elsewhere (which changes nothing: a
    gradient that starts at +0.0 never holds -0.0, the one value that adding +0.0 would alter)."""
    cdef Py_ssize_t c
    cdef floating zero = 0, gc
    for c in range(C):
        gc = g[c]
        gpx[c] = gpx[c] + (gc if tap[c] == t else zero)


cdef inline void _pixel_winners_2x2(floating* tap, const floating* p0, const floating* p1, Py_ssize_t C,
                                    rule_t* rule) noexcept nogil:
    """Winner tap number (0 .. 3, row-major) of a whole 2x2 window of adjacent pixels, for every channel."""
    cdef Py_ssize_t c
    cdef floating b, tp, zero = 0, one = 1, two = 2, three = 3
    for c in range(C):
        b = p0[c]
        tp = zero
        _step(p0[C + c], &b, &tp, one, rule)
        _step(p1[c], &b, &tp, two, rule)
        _step(p1[C + c], &b, &tp, three, rule)
        tap[c] = tp


cdef inline void _pixel_winners_3x3(floating* tap, const floating* p0, const floating* p1, const floating* p2,
                                    Py_ssize_t C, rule_t* rule) noexcept nogil:
    """Winner tap number (0 .. 8, row-major) of a whole 3x3 window of adjacent pixels, for every channel."""
    cdef Py_ssize_t c
    cdef floating b, tp
    cdef floating t0 = 0, t1 = 1, t2 = 2, t3 = 3, t4 = 4, t5 = 5, t6 = 6, t7 = 7, t8 = 8
    if rule_t is MaxRuleNoNaN or rule_t is MinRuleNoNaN:
        # no NaN: the best value is a plain max (min), and the winner is the first tap equal to it
        for c in range(C):
            tap[c] = _winner9(p0[c], p0[C + c], p0[2 * C + c], p1[c], p1[C + c], p1[2 * C + c], p2[c], p2[C + c],
                              p2[2 * C + c], t1, t2, t3, t4, t5, t6, t7, t8, rule)
        return
    for c in range(C):
        b = p0[c]
        tp = t0
        _step(p0[C + c], &b, &tp, t1, rule)
        _step(p0[2 * C + c], &b, &tp, t2, rule)
        _step(p1[c], &b, &tp, t3, rule)
        _step(p1[C + c], &b, &tp, t4, rule)
        _step(p1[2 * C + c], &b, &tp, t5, rule)
        _step(p2[c], &b, &tp, t6, rule)
        _step(p2[C + c], &b, &tp, t7, rule)
        _step(p2[2 * C + c], &b, &tp, t8, rule)
        tap[c] = tp


cdef inline void _pixel_scatter_3x3(floating* g0, const floating* g, const floating* tap, Py_ssize_t C,
                                    Py_ssize_t row_step) noexcept nogil:
    """Add g[c] to channel c of the winning cell of a 3x3 window (``g0``: its first cell), one channel at a
    time: cheaper than nine masked passes."""
    cdef Py_ssize_t c
    cdef Py_ssize_t offs[9]
    offs[0] = 0
    offs[1] = C
    offs[2] = 2 * C
    offs[3] = row_step
    offs[4] = row_step + C
    offs[5] = row_step + 2 * C
    offs[6] = 2 * row_step
    offs[7] = 2 * row_step + C
    offs[8] = 2 * row_step + 2 * C
    for c in range(C):
        g0[offs[<Py_ssize_t> tap[c]] + c] += g[c]


cdef inline bint _scan_pays(Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw) noexcept nogil:
    """True when an NHWC kernel should scan a block for NaN first (and run the rule without the NaN test where there
    is none): when an input cell is a tap of more than four windows on average, ``kh * kw > 4 * sh * sw`` (3x3 and
    larger windows at stride 1). Elsewhere the scan, a second read of each block, costs more than the rule's NaN
    test. On the benchmark input (one thread), without the scan: the forward took 0.71-0.74x its time for 2x2
    windows at stride 2, 0.75-0.85x for 3x3 at stride 2 and 0.67-0.80x for 2x2 at stride 1, against 1.10-1.18x for
    3x3 and 5x5 at stride 1; the backward 0.89-0.95x (3x3 stride 2) and 0.88x (2x2 stride 1), against 1.09-1.15x
    (3x3 stride 1)."""
    return kh * kw > 4 * sh * sw


cdef void _nhwc_row_vals(const floating* xn, floating* orow, Py_ssize_t i, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t C, Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                         Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, rule_t* rule) noexcept nogil:
    """Output row i of one NHWC image, values only: ``orow`` is (out_w, C)."""
    cdef Py_ssize_t j, a, b, c, h0, w0, a_lo, a_hi, b_lo, b_hi
    cdef const floating* p0
    cdef floating* op
    cdef floating worst = INFINITY if _is_min(rule) else -INFINITY
    h0 = i * sh - ph
    a_lo = _tap_lo(h0, dh)
    a_hi = _tap_hi(h0, kh, dh, H)
    for j in range(out_w):
        w0 = j * sw - pw
        b_lo = _tap_lo(w0, dw)
        b_hi = _tap_hi(w0, kw, dw, W)
        op = orow + j * C
        if dh == 1 and dw == 1 and a_hi - a_lo == kh and b_hi - b_lo == kw:     # every tap is real
            p0 = xn + (h0 * W + w0) * C
            if kh == 2 and kw == 2:
                _pixel_2x2(op, p0, p0 + W * C, C, rule)
                continue
            if kh == 3 and kw == 3:
                _pixel_3x3(op, p0, p0 + W * C, p0 + 2 * W * C, C, rule)
                continue
        for c in range(C):
            op[c] = worst
        for a in range(a_lo, a_hi):
            for b in range(b_lo, b_hi):
                _pixel_vals(op, xn + ((h0 + a * dh) * W + w0 + b * dw) * C, C, rule)


def extremum_nhwc(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, int64_t[:, :, :, ::1] indices,
                  int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, bint minimum, bint track,
                  int num_threads):
    """Max (min) pooling of an NHWC batch ``x`` (N, H, W, C) into ``out`` (N, out_h, out_w, C).

    ``indices`` (same shape as ``out``) is filled only when ``track``. Threads share blocks of output rows
    (whole images when there are enough of them). Without indices, where :func:`_scan_pays`, the input rows under a
    block are scanned for NaN once, and a block without one runs with the rule that skips the NaN test; elsewhere
    every block runs the full rule.
    """
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t out_h = out.shape[1], out_w = out.shape[2]
    cdef Py_ssize_t row, n, i, j, a, b, c, h, w, h0, w0, a_lo, a_hi, b_lo, b_hi, unit, nblk, size, i0, i1, r0, r1
    cdef int64_t first
    cdef const floating* xn
    cdef floating* op
    cdef int64_t* ip
    cdef floating worst = INFINITY if minimum else -INFINITY
    cdef bint scan = _scan_pays(kh, kw, sh, sw)
    cdef bint full                                  # run the rule with the NaN test
    _check_threads(num_threads)
    _check_dims(N, C, H, W, out.shape[0], out.shape[3], out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw, "x", "out")
    if track and _shape4(indices.shape) != _shape4(out.shape):
        raise ValueError(f"indices must have the shape of out, {_shape4(out.shape)}, got {_shape4(indices.shape)}")
    if N == 0:
        return
    if track:
        for row in prange(N * out_h, nogil=True, schedule="guided", num_threads=num_threads):
            n = row // out_h
            i = row % out_h
            xn = &x[n, 0, 0, 0]
            h0 = i * sh - ph
            a_lo = _tap_lo(h0, dh)
            a_hi = _tap_hi(h0, kh, dh, H)
            for j in range(out_w):
                w0 = j * sw - pw
                b_lo = _tap_lo(w0, dw)
                b_hi = _tap_hi(w0, kw, dw, W)
                op = &out[n, i, j, 0]
                ip = &indices[n, i, j, 0]
                first = (h0 + a_lo * dh) * W + w0 + b_lo * dw
                for c in range(C):
                    op[c] = worst
                    ip[c] = first
                for a in range(a_lo, a_hi):
                    h = h0 + a * dh
                    for b in range(b_lo, b_hi):
                        w = w0 + b * dw
                        _pixel_index(op, ip, xn + (h * W + w) * C, C, h * W + w, minimum)
        return
    # blocks of output rows: whole images when N gives every thread several of them
    nblk = (8 * num_threads + N - 1) // N
    if nblk > out_h:
        nblk = out_h
    size = (out_h + nblk - 1) // nblk
    for unit in prange(N * nblk, nogil=True, schedule="guided", num_threads=num_threads):
        n = unit // nblk
        i0 = (unit % nblk) * size
        i1 = min(i0 + size, out_h)
        if i0 >= i1:
            continue
        xn = &x[n, 0, 0, 0]
        r0 = max(i0 * sh - ph, 0)                              # every input row a window of the block touches
        r1 = min((i1 - 1) * sh - ph + (kh - 1) * dh + 1, H)
        full = not scan or (r1 > r0 and _has_nan(xn + r0 * W * C, (r1 - r0) * W * C))
        for i in range(i0, i1):
            op = &out[n, i, 0, 0]
            if full:
                if minimum:
                    _nhwc_row_vals(xn, op, i, H, W, C, out_w, kh, kw, sh, sw, ph, pw, dh, dw, <MinRule*> NULL)
                else:
                    _nhwc_row_vals(xn, op, i, H, W, C, out_w, kh, kw, sh, sw, ph, pw, dh, dw, <MaxRule*> NULL)
            elif minimum:
                _nhwc_row_vals(xn, op, i, H, W, C, out_w, kh, kw, sh, sw, ph, pw, dh, dw, <MinRuleNoNaN*> NULL)
            else:
                _nhwc_row_vals(xn, op, i, H, W, C, out_w, kh, kw, sh, sw, ph, pw, dh, dw, <MaxRuleNoNaN*> NULL)


cdef enum:
    _SCATTER_TAPS = 256   # windows of up to this many taps keep a table of their taps' offsets on the stack

ctypedef struct UnitRows:
    Py_ssize_t n, i_lo, i_hi, h_lo, h_hi


cdef inline UnitRows _unit_rows(Py_ssize_t unit, bint by_rows, Py_ssize_t out_h, Py_ssize_t H, Py_ssize_t sh,
                                Py_ssize_t ph) noexcept nogil:
    """The work of one thread unit of an NHWC backward: image ``n``, output rows [i_lo, i_hi) and the input rows
    [h_lo, h_hi) of grad_x it owns. ``by_rows``: a unit is one output row, owning the input rows from its first
    tap row to the next output row's; otherwise a unit is a whole image. (A struct is returned, so that the
    caller assigns its prange variables in the loop body and Cython keeps them private to each thread.)"""
    cdef UnitRows u
    if by_rows:
        u.n = unit // out_h
        u.i_lo = unit % out_h
        u.i_hi = u.i_lo + 1
        u.h_lo = 0 if u.i_lo == 0 else min(max(u.i_lo * sh - ph, 0), H)
        u.h_hi = H if u.i_lo == out_h - 1 else min(max(u.i_hi * sh - ph, 0), H)
    else:
        u.n = unit
        u.i_lo = 0
        u.i_hi = out_h
        u.h_lo = 0
        u.h_hi = H
    return u


cdef void _nhwc_grad_2x2(const floating* x0, const floating* grow, floating* g0, Py_ssize_t W, Py_ssize_t C,
                         Py_ssize_t out_w, bint minimum) noexcept nogil:
    """Input rows 2i and 2i + 1 of one NHWC image's gradient (``g0``: the first) under output row i of 2x2
    stride-2 windows, written once, with no zeroing pass (``pl_grad_2x2_f32``: the bits of the scatter into a
    zeroed gradient)."""
    cdef Py_ssize_t j
    for j in range(out_w):
        if floating is float:
            pl_grad_2x2_f32(x0 + 2 * j * C, x0 + (W + 2 * j) * C, grow + j * C, g0 + 2 * j * C, g0 + (W + 2 * j) * C,
                            C, minimum)
        else:
            pl_grad_2x2_f64(x0 + 2 * j * C, x0 + (W + 2 * j) * C, grow + j * C, g0 + 2 * j * C, g0 + (W + 2 * j) * C,
                            C, minimum)


cdef void _nhwc_row_backward(const floating* xn, const floating* grow, floating* gx, floating* best, floating* tap,
                             Py_ssize_t i, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t out_w,
                             Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                             Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, rule_t* rule) noexcept nogil:
    """Output row i of one NHWC image: for each window find every channel's winner (as a tap number held in
    a float), then route ``grow[j, c]`` to it in ``gx``."""
    cdef Py_ssize_t j, a, b, c, h0, w0, a_lo, a_hi, b_lo, b_hi, base, cur
    cdef const floating* px
    cdef const floating* gj
    cdef const floating* won
    cdef floating t
    cdef Py_ssize_t offs[_SCATTER_TAPS]                   # tap number -> offset of its cell from the window's
    cdef Py_ssize_t tap_offs[_SCATTER_TAPS]               # a window's real taps: offsets from its first one,
    cdef floating tap_nums[_SCATTER_TAPS]                 # and their tap numbers
    cdef Py_ssize_t n, c0
    cdef bint by_table = kh * kw <= _SCATTER_TAPS
    h0 = i * sh - ph
    a_lo = _tap_lo(h0, dh)
    a_hi = _tap_hi(h0, kh, dh, H)
    if a_lo >= a_hi:
        return                                            # no real cell: no winner
    if by_table:
        for a in range(kh):
            for b in range(kw):
                offs[a * kw + b] = (a * dh * W + b * dw) * C
    for j in range(out_w):
        w0 = j * sw - pw
        b_lo = _tap_lo(w0, dw)
        b_hi = _tap_hi(w0, kw, dw, W)
        if b_lo >= b_hi:
            continue
        if dh == 1 and dw == 1 and a_hi - a_lo == kh and b_hi - b_lo == kw and (
                (kh == 2 and kw == 2) or (kh == 3 and kw == 3)):    # every tap real: winners in one pass
            px = xn + (h0 * W + w0) * C
            if kh == 2:
                _pixel_winners_2x2(tap, px, px + W * C, C, rule)
                for a in range(2):
                    for b in range(2):
                        _pixel_route(gx + ((h0 + a) * W + w0 + b) * C, grow + j * C, tap, C, a * 2 + b)
            else:
                _pixel_winners_3x3(tap, px, px + W * C, px + 2 * W * C, C, rule)
                _pixel_scatter_3x3(gx + (h0 * W + w0) * C, grow + j * C, tap, C, W * C)
            continue
        t = a_lo * kw + b_lo
        px = xn + ((h0 + a_lo * dh) * W + w0 + b_lo * dw) * C
        c0 = 0                                            # channels [0, c0) already have their winner in tap
        if by_table and (rule_t is MaxRuleNoNaN or rule_t is MinRuleNoNaN):
            n = 0
            for a in range(a_lo, a_hi):
                for b in range(b_lo, b_hi):
                    tap_offs[n] = offs[a * kw + b] - offs[a_lo * kw + b_lo]
                    tap_nums[n] = a * kw + b
                    n += 1
            if floating is float:
                c0 = pl_nhwc_taps_f32(tap, px, tap_offs, tap_nums, n, C, rule_t is MinRuleNoNaN)
            else:
                c0 = pl_nhwc_taps_f64(tap, px, tap_offs, tap_nums, n, C, rule_t is MinRuleNoNaN)
        for c in range(c0, C):
            best[c] = px[c]                               # the first real tap: the rule applied to -inf (+inf)
            tap[c] = t
        cur = 0                                           # the running values are in the rows' half ``cur``
        if c0 < C:
            for a in range(a_lo, a_hi):
                for b in range(b_lo, b_hi):
                    if a > a_lo or b > b_lo:
                        _pixel_taps(best + cur * C + c0, tap + cur * C + c0, best + (1 - cur) * C + c0,
                                    tap + (1 - cur) * C + c0, xn + ((h0 + a * dh) * W + w0 + b * dw) * C + c0,
                                    C - c0, a * kw + b, rule)
                        cur = 1 - cur
            if cur == 1 and c0 > 0:                       # put the two parts of the winners side by side
                memcpy(tap + c0, tap + C + c0, (C - c0) * sizeof(floating))
                cur = 0
        won = tap + cur * C
        if by_table:                                      # one add per channel, at its winner's cell
            base = (h0 * W + w0) * C
            gj = grow + j * C
            for c in range(C):
                gx[base + offs[<Py_ssize_t> won[c]] + c] += gj[c]
            continue
        for a in range(a_lo, a_hi):
            for b in range(b_lo, b_hi):
                _pixel_route(gx + ((h0 + a * dh) * W + w0 + b * dw) * C, grow + j * C, won, C, a * kw + b)


def extremum_backward_nhwc(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] grad_out,
                           floating[:, :, :, ::1] grad_x, floating[:, ::1] best_buf, floating[:, ::1] tap_buf,
                           int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, bint minimum,
                           int num_threads):
    """Gradient of max (min) pooling for NHWC ``x``; ``grad_x`` (N, H, W, C) may be uninitialised.

    When window rows cannot share an input row (``sh > (kh - 1) * dh``) the output rows are shared among the
    threads, each owning the input rows of its windows; otherwise whole images are, so that the windows
    touching one cell are always summed in row-major order by one thread. Gradient rows are zeroed just
    before the first window reaches them, while they are still in cache. Where :func:`_scan_pays`, the input rows
    of a unit are scanned for NaN first, as in :func:`extremum_nhwc`. ``best_buf`` and ``tap_buf`` hold a
    scratch row of at least ``2 * C`` values per thread (two halves: the running values and the next tap's).
    The caller keeps ``kh * kw`` below 2**24 for float32 (tap numbers are held in the float type).
    """
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t out_h = grad_out.shape[1], out_w = grad_out.shape[2]
    cdef Py_ssize_t row, n, i, i_lo, i_hi, h_lo, h_hi, tid, units, r0, r1, zeroed
    cdef const floating* xn
    cdef const floating* grow
    cdef floating* gx
    cdef floating* best
    cdef floating* tap
    cdef bint by_rows = sh > (kh - 1) * dh
    cdef bint k2s2 = PL_AVX2 and _k2s2(H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw)
    cdef UnitRows u
    cdef bint scan = _scan_pays(kh, kw, sh, sw)
    cdef bint full                                  # run the rule with the NaN test
    _check_threads(num_threads)
    _check_dims(N, C, H, W, grad_out.shape[0], grad_out.shape[3], out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw, "x",
                "grad_out")
    if _shape4(x.shape) != _shape4(grad_x.shape):
        raise ValueError(f"grad_x must have the shape of x, {_shape4(x.shape)}, got {_shape4(grad_x.shape)}")
    if floating is float and <double> kh * kw >= 16777216.0:
        raise ValueError(f"a float32 window must have fewer than 2**24 taps (their numbers are held as float32), got "
                         f"{kh} x {kw}")
    if N == 0:
        return
    if min(best_buf.shape[0], tap_buf.shape[0]) < num_threads or min(best_buf.shape[1],
                                                                              tap_buf.shape[1]) < 2 * C:
        raise ValueError(f"best_buf and tap_buf need a row of at least 2 * C = {2 * C} values for each of the "
                         f"{num_threads} threads, got {best_buf.shape[0]} x {best_buf.shape[1]} and "
                         f"{tap_buf.shape[0]} x {tap_buf.shape[1]}")
    units = N * out_h if by_rows else N
    with nogil, parallel(num_threads=num_threads):
        tid = threadid()
        best = &best_buf[tid, 0]
        tap = &tap_buf[tid, 0]
        for row in prange(units, schedule="guided"):
            u = _unit_rows(row, by_rows, out_h, H, sh, ph)
            n = u.n
            i_lo = u.i_lo
            i_hi = u.i_hi
            h_lo = u.h_lo
            h_hi = u.h_hi
            xn = &x[n, 0, 0, 0]
            gx = &grad_x[n, 0, 0, 0]
            if k2s2:
                # 2x2 stride-2 windows (a unit is one output row): input rows 2i, 2i + 1 written once, with the
                # rule that handles NaN (no scan), then what no window covers. AVX2 build only: 0.70x the time of
                # the zeroing and routing passes (float32), but GCC 12 leaves it scalar for SSE2, 5x slower there
                i = i_lo
                _nhwc_grad_2x2(xn + 2 * i * W * C, &grad_out[n, i, 0, 0], gx + 2 * i * W * C, W, C, out_w, minimum)
                if 2 * out_w < W:                                # the last column
                    memset(gx + ((2 * i + 1) * W - 1) * C, 0, C * sizeof(floating))
                    memset(gx + ((2 * i + 2) * W - 1) * C, 0, C * sizeof(floating))
                if h_hi > 2 * i + 2:                             # the last unit's rows below the windows
                    memset(gx + (2 * i + 2) * W * C, 0, (h_hi - 2 * i - 2) * W * C * sizeof(floating))
                continue
            r0 = max(i_lo * sh - ph, 0)                          # every input row these windows touch
            r1 = min((i_hi - 1) * sh - ph + (kh - 1) * dh + 1, H)
            full = not scan or (r1 > r0 and _has_nan(xn + r0 * W * C, (r1 - r0) * W * C))
            zeroed = h_lo                                        # rows [h_lo, zeroed) of grad_x are zeroed
            for i in range(i_lo, i_hi):
                # zero the rows this output row's windows reach first, just before they are used (cache-hot)
                r1 = min(i * sh - ph + (kh - 1) * dh + 1, h_hi)
                if r1 > zeroed:
                    memset(gx + zeroed * W * C, 0, (r1 - zeroed) * W * C * sizeof(floating))
                    zeroed = r1
                grow = &grad_out[n, i, 0, 0]
                if full:
                    if minimum:
                        _nhwc_row_backward(xn, grow, gx, best, tap, i, H, W, C, out_w, kh, kw, sh, sw, ph, pw, dh,
                                           dw, <MinRule*> NULL)
                    else:
                        _nhwc_row_backward(xn, grow, gx, best, tap, i, H, W, C, out_w, kh, kw, sh, sw, ph, pw, dh,
                                           dw, <MaxRule*> NULL)
                elif minimum:
                    _nhwc_row_backward(xn, grow, gx, best, tap, i, H, W, C, out_w, kh, kw, sh, sw, ph, pw, dh, dw,
                                       <MinRuleNoNaN*> NULL)
                else:
                    _nhwc_row_backward(xn, grow, gx, best, tap, i, H, W, C, out_w, kh, kw, sh, sw, ph, pw, dh, dw,
                                       <MaxRuleNoNaN*> NULL)
            if h_hi > zeroed:                                    # rows no window of this unit reaches
                memset(gx + zeroed * W * C, 0, (h_hi - zeroed) * W * C * sizeof(floating))


# ----------------------------------------------------------------------------------------------------------------
# Average pooling. ``divisors`` is the (out_h, out_w) table of divisors, already converted to the dtype.

cdef inline void _sum_taps(floating* acc, const floating* row, Py_ssize_t j_lo, Py_ssize_t j_hi, Py_ssize_t step,
                           Py_ssize_t off) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(j_lo, j_hi):
        acc[j] = acc[j] + row[j * step + off]


cdef inline void _spread_taps(floating* grow, const floating* share, Py_ssize_t j_lo, Py_ssize_t j_hi,
                              Py_ssize_t step, Py_ssize_t off) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(j_lo, j_hi):
        grow[j * step + off] = grow[j * step + off] + share[j]


cdef inline void _spread_row(floating* grow, const floating* share, Py_ssize_t out_w, Py_ssize_t kw, Py_ssize_t sw,
                             Py_ssize_t pw, Py_ssize_t W) noexcept nogil:
    """Add each window's share to the real cells of its kw columns in one row, tap column by tap column, from the
    last to the first: a cell then gets its shares in window order (``j`` ascending), as in PyTorch's backward."""
    cdef Py_ssize_t b, off, j_lo, j_hi
    for b in range(kw - 1, -1, -1):
        off = b - pw
        j_lo = _tap_lo(off, sw)
        j_hi = _tap_hi(off, out_w, sw, W)
        if j_lo >= j_hi:
            continue
        if sw == 1:
            _spread_taps(grow, share, j_lo, j_hi, 1, off)
        elif sw == 2:
            _spread_taps(grow, share, j_lo, j_hi, 2, off)
        else:
            _spread_taps(grow, share, j_lo, j_hi, sw, off)


AVG_LAYERS_MAX = 8


cdef inline bint _avg_by_rows(Py_ssize_t kh, Py_ssize_t kw) noexcept nogil:
    """Whether the NCHW average backward spreads each window row once and adds that row to the window's rows (more
    than ``kh + kw + 1`` taps, 3x3 windows and up), rather than adding window by window."""
    return kh * kw > kh + kw + 1


cpdef Py_ssize_t avg_backward_layers(int kh, int kw, int sw):
    """How many layer rows :func:`avg_backward_nchw` builds per window row, each of ``W`` values in the thread's
    ``share_buf`` row: 0 for small windows (added window by window, without a spread row) and where a cell can lie
    in more than ``AVG_LAYERS_MAX`` windows of one row (rows that earlier window rows touched then get their shares
    window by window), else ``(kw - 1) // sw + 1``, the most windows of one row that can cover a cell."""
    cdef Py_ssize_t m = (kw - 1) // sw + 1
    if not _avg_by_rows(kh, kw) or m > AVG_LAYERS_MAX:
        return 0
    return m


cdef inline void _layer_rows(floating* layer, const floating* share, Py_ssize_t out_w, Py_ssize_t kw,
                             Py_ssize_t sw, Py_ssize_t pw, Py_ssize_t W) noexcept nogil:
    """Sort a window row's shares into layers: ``layer[t * W + w]`` is the share of the window whose tap ``b`` falls
    on column ``w``, with ``t = (kw - 1 - b) // sw``. The windows that cover a cell have taps ``sw`` apart, so they
    land in different layers, in window order; each cell of a layer gets one share at most, and a cell without one
    keeps the 0 it had."""
    cdef Py_ssize_t b, j, off, j_lo, j_hi
    cdef floating* row
    for b in range(kw):
        off = b - pw
        j_lo = _tap_lo(off, sw)
        j_hi = _tap_hi(off, out_w, sw, W)
        row = layer + ((kw - 1 - b) // sw) * W
        for j in range(j_lo, j_hi):
            row[j * sw + off] = share[j]


cdef inline void _add_layers(floating* g0, const floating* layer, Py_ssize_t layers, Py_ssize_t W) noexcept nogil:
    """``g0 += layer 0``, then ``+= layer 1``, and so on: each cell gets its shares one at a time in window order,
    as PyTorch adds them (adding a layer's 0 changes no cell: a sum that starts at +0 is never -0)."""
    cdef Py_ssize_t t, b
    cdef const floating* row
    cdef const floating* row1
    if layers == 2:                                   # windows that overlap by one column (3x3 stride 2): one pass
        row1 = layer + W
        for b in range(W):
            g0[b] = (g0[b] + layer[b]) + row1[b]
        return
    for t in range(layers):
        row = layer + t * W
        for b in range(W):
            g0[b] = g0[b] + row[b]


cdef inline void _sum_layers(floating* out, const floating* layer, Py_ssize_t layers, Py_ssize_t W) noexcept nogil:
    """``out = ((0 + layer 0) + layer 1) + ...``: the spread row, each cell's shares summed from 0 in window order."""
    cdef Py_ssize_t b
    cdef const floating* row1
    cdef floating zero = 0
    if layers == 2:
        row1 = layer + W
        for b in range(W):
            out[b] = (zero + layer[b]) + row1[b]
        return
    for b in range(W):
        out[b] = zero + layer[b]
    _add_layers(out, layer + W, layers - 1, W)


cdef inline void _avg_3x3(floating* op, const floating* r0, const floating* dv, Py_ssize_t W, Py_ssize_t jl,
                          Py_ssize_t jh, Py_ssize_t S, Py_ssize_t off) noexcept nogil:
    """Averages of 3x3 stride-S windows whose nine taps are all real (rows r0, r0 + W, r0 + 2W): each sum is
    kept in a register, from 0 in scan order (the same additions as the tap-by-tap loop), then divided.
    Callers pass S as a literal, so the compiler sees a constant stride."""
    cdef Py_ssize_t j, q
    cdef const floating* r1 = r0 + W
    cdef const floating* r2 = r1 + W
    cdef floating s
    for j in range(jl, jh):
        q = S * j + off
        s = 0
        s = s + r0[q]
        s = s + r0[q + 1]
        s = s + r0[q + 2]
        s = s + r1[q]
        s = s + r1[q + 1]
        s = s + r1[q + 2]
        s = s + r2[q]
        s = s + r2[q + 1]
        s = s + r2[q + 2]
        op[j] = s / dv[j]


cdef inline floating _avg_cells(const floating* r0, Py_ssize_t W, Py_ssize_t rows, Py_ssize_t c_lo,
                                Py_ssize_t c_hi) noexcept nogil:
    """Sum, from 0 in scan order, of the cells in ``rows`` rows (the first at r0) and columns c_lo .. c_hi-1."""
    cdef Py_ssize_t a, c
    cdef floating s = 0
    for a in range(rows):
        for c in range(c_lo, c_hi):
            s = s + r0[a * W + c]
    return s


cdef void _avg_nchw(const floating* x, floating* out, const floating* divisors, Py_ssize_t N, Py_ssize_t C,
                    Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w, int kh, int kw, int sh, int sw,
                    int ph, int pw, int num_threads) noexcept nogil:
    """The loops of :func:`avg_nchw`, on the arrays' memory (``divisors``: ``out_h`` rows of ``out_w``)."""
    cdef Py_ssize_t plane, i, j, a, b, h, h0, off, a_lo, a_hi, j_lo, j_hi, jl, jh, reach
    cdef const floating* xp
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* dv
    cdef floating* op
    cdef floating s
    if N * C == 0:
        return
    if _k2s2(H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, 1, 1):
        for plane in prange(N * C, schedule="guided", num_threads=num_threads):
            xp = x + plane * H * W
            op = out + plane * out_h * out_w
            reach = (2 if plane + 1 < N * C else 1) * H    # rows the prefetch may touch: this plane and the next
            for i in range(out_h):
                _prefetch_rows(xp, 2 * (i + PF_AHEAD), 2 * (i + PF_AHEAD) + 2, W, reach)
                r0 = xp + 2 * i * W
                r1 = r0 + W
                dv = divisors + i * out_w
                for j in range(out_w):
                    s = 0
                    s = s + r0[2 * j]
                    s = s + r0[2 * j + 1]
                    s = s + r1[2 * j]
                    s = s + r1[2 * j + 1]
                    op[i * out_w + j] = s / dv[j]
        return
    _interior(out_w, kw, sw, pw, 1, W, &jl, &jh)
    for plane in prange(N * C, schedule="guided", num_threads=num_threads):
        xp = x + plane * H * W
        reach = (2 if plane + 1 < N * C else 1) * H
        for i in range(out_h):
            op = out + (plane * out_h + i) * out_w
            dv = divisors + i * out_w
            h0 = i * sh - ph
            # the input rows that output row i + PF_AHEAD reads and row i + PF_AHEAD - 1 does not
            _prefetch_rows(xp, h0 + kh + (PF_AHEAD - 1) * sh, h0 + kh + PF_AHEAD * sh, W, reach)
            a_lo = _tap_lo(h0, 1)
            a_hi = _tap_hi(h0, kh, 1, H)
            if kh == 3 and kw == 3 and (sw == 1 or sw == 2) and a_hi - a_lo == 3:
                # 3x3 windows at stride 1 or 2 on three real rows: nine taps in one pass; windows cut by the
                # padding apart
                if sw == 1:
                    _avg_3x3(op, xp + h0 * W, dv, W, jl, jh, 1, -pw)
                else:
                    _avg_3x3(op, xp + h0 * W, dv, W, jl, jh, 2, -pw)
                for j in range(jl):
                    op[j] = _avg_cells(xp + h0 * W, W, 3, 0, min(j * sw - pw + 3, W)) / dv[j]
                for j in range(jh, out_w):
                    op[j] = _avg_cells(xp + h0 * W, W, 3, j * sw - pw, min(j * sw - pw + 3, W)) / dv[j]
                continue
            for j in range(out_w):
                op[j] = 0
            for a in range(a_lo, a_hi):
                h = h0 + a
                for b in range(kw):
                    off = b - pw
                    j_lo = _tap_lo(off, sw)
                    j_hi = _tap_hi(off, out_w, sw, W)
                    if j_lo >= j_hi:
                        continue
                    if sw == 1:
                        _sum_taps(op, xp + h * W, j_lo, j_hi, 1, off)
                    elif sw == 2:
                        _sum_taps(op, xp + h * W, j_lo, j_hi, 2, off)
                    else:
                        _sum_taps(op, xp + h * W, j_lo, j_hi, sw, off)
            for j in range(out_w):
                op[j] = op[j] / dv[j]


def avg_nchw(cnp.ndarray x, cnp.ndarray out, cnp.ndarray divisors, int kh, int kw, int sh, int sw, int ph, int pw,
             int num_threads):
    """Average pooling of a C-contiguous NCHW batch; ``divisors``: the ``(out_h, out_w)`` divisors, in the dtype of
    ``x``. The arrays come as ndarrays, checked in C, as in :func:`extremum_nchw` (and for the same reason)."""
    cdef int typenum = _check_pool_arrays(x, out, kh, kw, sh, sw, ph, pw, 1, 1)
    cdef cnp.npy_intp* xs = cnp.PyArray_DIMS(x)
    cdef cnp.npy_intp* os = cnp.PyArray_DIMS(out)
    _check_array(divisors, "divisors", typenum, 2, False)
    _check_divisors(cnp.PyArray_DIMS(divisors)[0], cnp.PyArray_DIMS(divisors)[1], os[2], os[3], "out")
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            _avg_nchw(<const float*> cnp.PyArray_DATA(x), <float*> cnp.PyArray_DATA(out),
                      <const float*> cnp.PyArray_DATA(divisors), xs[0], xs[1], xs[2], xs[3], os[2], os[3], kh, kw, sh,
                      sw, ph, pw, num_threads)
        else:
            _avg_nchw(<const double*> cnp.PyArray_DATA(x), <double*> cnp.PyArray_DATA(out),
                      <const double*> cnp.PyArray_DATA(divisors), xs[0], xs[1], xs[2], xs[3], os[2], os[3], kh, kw,
                      sh, sw, ph, pw, num_threads)


cdef extern from *:
    """
    /* One output row of 2x2 stride-2 average windows that tile the plane, written straight to memory with streaming
       stores (in the AVX2 build only; elsewhere the functions do no window and return 0): cells 2j and 2j + 1 of rows
       q0 and q1 all get 0 + g[j] / d[j], the scalar loop's value (one IEEE division, then + 0, which turns -0 into
       +0 as the sum from 0 does). Four windows (eight cells) at a time; q0 and q1 must be 16-byte aligned. Returns
       the first window left to the caller. */
    #if defined(__AVX2__)
    #include <immintrin.h>
    static Py_ssize_t pl_stream_mean_2x2_f64(double* q0, double* q1, const double* g, const double* d, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j + 4 <= n; j += 4) {
            const __m256d s = _mm256_add_pd(_mm256_setzero_pd(), _mm256_div_pd(_mm256_loadu_pd(g + j),
                                                                               _mm256_loadu_pd(d + j)));
            const __m256d lo = _mm256_unpacklo_pd(s, s), hi = _mm256_unpackhi_pd(s, s);
            const __m256d a = _mm256_permute2f128_pd(lo, hi, 0x20), b = _mm256_permute2f128_pd(lo, hi, 0x31);
            PL_STREAM_PD(q0 + 2 * j, a); PL_STREAM_PD(q0 + 2 * j + 4, b);
            PL_STREAM_PD(q1 + 2 * j, a); PL_STREAM_PD(q1 + 2 * j + 4, b);
        }
        return j;
    }
    static Py_ssize_t pl_stream_mean_2x2_f32(float* q0, float* q1, const float* g, const float* d, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j + 4 <= n; j += 4) {
            const __m128 s = _mm_add_ps(_mm_setzero_ps(), _mm_div_ps(_mm_loadu_ps(g + j), _mm_loadu_ps(d + j)));
            const __m128 a = _mm_unpacklo_ps(s, s), b = _mm_unpackhi_ps(s, s);
            _mm_stream_ps(q0 + 2 * j, a); _mm_stream_ps(q0 + 2 * j + 4, b);
            _mm_stream_ps(q1 + 2 * j, a); _mm_stream_ps(q1 + 2 * j + 4, b);
        }
        return j;
    }
    #else
    static Py_ssize_t pl_stream_mean_2x2_f64(double* q0, double* q1, const double* g, const double* d, Py_ssize_t n) {
        (void) q0; (void) q1; (void) g; (void) d; (void) n;
        return 0;
    }
    static Py_ssize_t pl_stream_mean_2x2_f32(float* q0, float* q1, const float* g, const float* d, Py_ssize_t n) {
        (void) q0; (void) q1; (void) g; (void) d; (void) n;
        return 0;
    }
    #endif
    """
    Py_ssize_t pl_stream_mean_2x2_f32(float* q0, float* q1, const float* g, const float* d,
                                      Py_ssize_t n) noexcept nogil
    Py_ssize_t pl_stream_mean_2x2_f64(double* q0, double* q1, const double* g, const double* d,
                                      Py_ssize_t n) noexcept nogil


cdef void _avg_plane_2x2(const floating* gp, floating* gx, const floating* divisors, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t out_h, Py_ssize_t out_w, bint stream) noexcept nogil:
    """One plane's gradient under 2x2 stride-2 average windows: each window's four cells get ``0 + g / divisor``
    (cells that no window covers, in a last odd row or column, get 0). With ``stream`` (the windows tile the plane,
    ``out_w`` a multiple of 4, rows 16-byte aligned, AVX2) the rows go to memory with streaming stores.
    ``divisors``: the ``(out_h, out_w)`` divisors, C-contiguous."""
    cdef Py_ssize_t i, j, j0
    cdef floating* g0
    cdef floating* g1
    cdef const floating* dv
    cdef floating s
    if 2 * out_h < H or 2 * out_w < W:
        memset(gx, 0, H * W * sizeof(floating))
    for i in range(out_h):
        g0 = gx + 2 * i * W
        g1 = g0 + W
        dv = divisors + i * out_w
        j0 = 0
        if stream:
            if floating is float:
                j0 = pl_stream_mean_2x2_f32(g0, g1, gp + i * out_w, dv, out_w)
            else:
                j0 = pl_stream_mean_2x2_f64(g0, g1, gp + i * out_w, dv, out_w)
        for j in range(j0, out_w):
            s = 0
            s = s + gp[i * out_w + j] / dv[j]
            g0[2 * j] = s
            g0[2 * j + 1] = s
            g1[2 * j] = s
            g1[2 * j + 1] = s


cdef inline void _avg_row_3x3s2(floating* gr, Py_ssize_t W, Py_ssize_t out_w, const floating* a,
                                const floating* b) noexcept nogil:
    """One gradient row under 3x3 stride-2 padding-1 average windows, each cell written once: from 0, in window
    order, the share of every window that covers it. ``a``: the shares (``grad_out / divisor``) of the window row
    whose tap row the gradient row is; ``b``: NULL, or those of the next window row, whose tap row 0 the gradient
    row also is. Cell 2m is tap 1 of window m; cell 2m + 1 is tap 2 of window m, then tap 0 of window m + 1. The
    same additions as PyTorch's ``grad_x[cell] += share`` over a zeroed plane, window after window (0 + a share
    turns -0 into +0 as they do), so the same bits (except the sign of a NaN made from NaNs of both signs, which
    the compiler's order of operands decides), without a zeroing pass or a read-modify-write."""
    cdef Py_ssize_t m, M = (W - 1) // 2                   # out_w > M: window M exists (padding 1)
    cdef floating s, zero = 0
    if b == NULL:
        for m in range(M):                                # cells 2m and 2m + 1 < W - 1: windows m and m + 1
            s = zero + a[m]
            gr[2 * m] = s
            gr[2 * m + 1] = s + a[m + 1]
    else:
        for m in range(M):
            s = zero + a[m]
            gr[2 * m] = s + b[m]
            gr[2 * m + 1] = ((s + a[m + 1]) + b[m]) + b[m + 1]
    s = zero + a[M]                                       # the row's end: cell 2M, then 2M + 1 when W is even
    gr[2 * M] = s if b == NULL else s + b[M]
    if 2 * M + 1 < W:
        if M + 1 < out_w:                                 # (ceil_mode: a last window from column W - 1)
            s = s + a[M + 1]
        if b != NULL:
            s = s + b[M]
            if M + 1 < out_w:
                s = s + b[M + 1]
        gr[2 * M + 1] = s


cdef void _avg_plane_3x3s2p1(const floating* gp, floating* gx, const floating* divisors, floating* share,
                             Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil:
    """One plane's gradient under 3x3 stride-2 padding-1 average windows (``share``: room for ``2 * out_w``
    values): each window row's shares, then each gradient row once its last window row is known
    (:func:`_avg_row_3x3s2`): row 2i - 1 lies in window rows i - 1 and i, row 2i in window row i only, as in
    :func:`_plane_backward_3x3s2p1`."""
    cdef Py_ssize_t i, j, r
    cdef floating* cur = share
    cdef floating* prev = share + out_w
    cdef floating* t
    cdef const floating* g
    cdef const floating* dv
    for i in range(out_h):
        g = gp + i * out_w
        dv = divisors + i * out_w
        for j in range(out_w):
            cur[j] = g[j] / dv[j]
        if i > 0:
            _avg_row_3x3s2(gx + (2 * i - 1) * W, W, out_w, prev, cur)
        if 2 * i < H:
            _avg_row_3x3s2(gx + 2 * i * W, W, out_w, cur, NULL)
        t = prev
        prev = cur
        cur = t
    r = 2 * out_h - 1                                     # below the last window row's middle (prev: its shares)
    if r < H:
        _avg_row_3x3s2(gx + r * W, W, out_w, prev, NULL)
    if r + 1 < H:
        memset(gx + (r + 1) * W, 0, (H - r - 1) * W * sizeof(floating))   # rows no window covers


cdef void _avg_backward_nchw(const floating* grad_out, floating* grad_x, const floating* divisors,
                             floating* share_buf, Py_ssize_t share_row, floating* stage, Py_ssize_t stage_row,
                             bint stream, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t out_h,
                             Py_ssize_t out_w, int kh, int kw, int sh, int sw, int ph, int pw, Py_ssize_t layers,
                             int num_threads) noexcept nogil:
    """The loop of :func:`avg_backward_nchw`, on the arrays' memory; thread ``tid``'s rows of ``share_buf`` and
    ``stage`` start at ``share_buf + tid * share_row`` and ``stage + tid * stage_row``."""
    cdef Py_ssize_t plane, i, j, a, h0, b, a_lo, a_hi, tid, touched
    cdef const floating* gp
    cdef const floating* dv
    cdef floating* gx
    cdef floating* out
    cdef floating* g0
    cdef floating* share
    cdef floating* spread
    cdef floating* layer
    cdef floating* buf = NULL
    cdef bint by_rows = _avg_by_rows(kh, kw)
    cdef bint k2s2 = _k2s2(H, W, out_h, out_w, kh, kw, sh, sw, ph, pw, 1, 1)
    cdef bint k3s2p1 = _k3s2p1(kh, kw, sh, sw, ph, pw, 1, 1)
    cdef bint tiled = stream and k2s2 and _whole_rows(H, W, out_h, out_w, sizeof(floating), grad_x)
    if N * C == 0:
        return
    with parallel(num_threads=num_threads):
        tid = threadid()
        share = share_buf + tid * share_row
        spread = share + out_w
        layer = spread + W
        if stream:
            buf = stage + tid * stage_row
        for plane in prange(N * C, schedule="guided"):
            gp = grad_out + plane * out_h * out_w
            gx = grad_x + plane * H * W
            out = buf if (stream and not tiled) else gx
            if k2s2 or k3s2p1:                          # the two geometries with a plane kernel of their own
                if k2s2:
                    _avg_plane_2x2(gp, out, divisors, H, W, out_h, out_w, tiled)
                else:
                    _avg_plane_3x3s2p1(gp, out, divisors, share, H, W, out_h, out_w)
                if out != gx:
                    pl_stream_copy(gx, out, H * W * sizeof(floating))
                continue
            memset(out, 0, H * W * sizeof(floating))
            touched = 0                                 # rows [0, touched) hold shares of earlier window rows
            for i in range(out_h):
                h0 = i * sh - ph
                a_lo = _tap_lo(h0, 1)
                a_hi = _tap_hi(h0, kh, 1, H)
                if a_lo >= a_hi:
                    continue
                dv = divisors + i * out_w
                for j in range(out_w):
                    share[j] = gp[i * out_w + j] / dv[j]
                if not by_rows:
                    for a in range(a_lo, a_hi):
                        _spread_row(out + (h0 + a) * W, share, out_w, kw, sw, pw, W)
                    continue
                # the row's windows spread across the columns once (0 + each share in window order), and that row is
                # added to each of their kh rows that no earlier window row has touched; a row that one has touched
                # gets the shares one at a time, layer by layer, as PyTorch adds them, so that it rounds the same way
                if layers:
                    memset(layer, 0, layers * W * sizeof(floating))
                    _layer_rows(layer, share, out_w, kw, sw, pw, W)
                    _sum_layers(spread, layer, layers, W)
                else:
                    memset(spread, 0, W * sizeof(floating))
                    _spread_row(spread, share, out_w, kw, sw, pw, W)
                for a in range(a_lo, a_hi):
                    g0 = out + (h0 + a) * W
                    if h0 + a < touched:
                        if layers:
                            _add_layers(g0, layer, layers, W)
                        else:
                            _spread_row(g0, share, out_w, kw, sw, pw, W)
                        continue
                    for b in range(W):
                        g0[b] = g0[b] + spread[b]
                touched = h0 + a_hi
            if out != gx:
                pl_stream_copy(gx, out, H * W * sizeof(floating))
        if stream:
            pl_sfence()


def avg_backward_nchw(cnp.ndarray grad_out, cnp.ndarray grad_x, cnp.ndarray divisors, cnp.ndarray share_buf,
                      cnp.ndarray stage, int kh, int kw, int sh, int sw, int ph, int pw, int num_threads):
    """Gradient of average pooling, NCHW: ``grad_out / divisor`` added to every real cell of each window.

    ``grad_x`` may be uninitialised; ``share_buf`` holds a scratch row of at least ``out_w + W * (1 + layers)``
    values per thread, with ``layers = avg_backward_layers(kh, kw, sw)``: a row's shares, their spread over the
    ``W`` columns, and the layer rows. With more than ``kh + kw + 1`` taps (3x3 windows and up) each output row's
    spread is built once and added to each of its window rows that no earlier window row has touched: ``kw``
    strided passes and ``kh`` contiguous ones instead of ``kh * kw`` strided ones. A row that an earlier window
    row has touched gets the shares layer by layer (:func:`_layer_rows`), so that every cell gets its shares one at
    a time in row-major window order, as in the naive tier and PyTorch: the same bits. 3x3 stride-2 padding-1
    windows have a kernel of their own (:func:`_avg_plane_3x3s2p1`), which writes each cell once with the same
    additions: a 56x56 float32 plane, in the cache, took 0.78 us with it against 2.18 us through the layers.

    ``stage``: when it has rows (one per thread, of at least ``H * W`` values), the gradient is written with streaming
    stores, which skip the read that an ordinary store makes of each line (see ``STREAM_MIN_BYTES`` in
    :mod:`pooling_lib.cython_tier`): 2x2 stride-2 planes that the windows tile, row by row from the registers; any
    other plane is built in the thread's row of ``stage`` and then copied out (:func:`pl_stream_copy`).

    The arrays come as ndarrays, checked in C, as in :func:`extremum_nchw`: ``grad_x`` and ``grad_out`` as a
    forward's ``x`` and ``out`` (:func:`_check_pool_arrays`, with ``grad_x`` the one written), ``divisors`` as in
    :func:`avg_nchw`, and the scratch rows as described above.
    """
    cdef int typenum = _check_pool_arrays(grad_x, grad_out, kh, kw, sh, sw, ph, pw, 1, 1, True)
    cdef cnp.npy_intp* xs = cnp.PyArray_DIMS(grad_x)
    cdef cnp.npy_intp* os = cnp.PyArray_DIMS(grad_out)
    cdef bint stream
    cdef Py_ssize_t layers = avg_backward_layers(kh, kw, sw)
    _check_threads(num_threads)
    _check_array(divisors, "divisors", typenum, 2, False)
    _check_divisors(cnp.PyArray_DIMS(divisors)[0], cnp.PyArray_DIMS(divisors)[1], os[2], os[3], "grad_out")
    _check_rows(share_buf, "share_buf", typenum, num_threads, os[3] + xs[3] * (1 + layers))
    _check_array(stage, "stage", typenum, 2, True)
    stream = cnp.PyArray_DIMS(stage)[0] > 0
    if stream:
        _check_rows(stage, "stage (when it has rows)", typenum, num_threads, xs[2] * xs[3])
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            _avg_backward_nchw(<const float*> cnp.PyArray_DATA(grad_out), <float*> cnp.PyArray_DATA(grad_x),
                               <const float*> cnp.PyArray_DATA(divisors), <float*> cnp.PyArray_DATA(share_buf),
                               cnp.PyArray_DIMS(share_buf)[1], <float*> cnp.PyArray_DATA(stage),
                               cnp.PyArray_DIMS(stage)[1], stream, xs[0], xs[1], xs[2], xs[3], os[2], os[3], kh, kw,
                               sh, sw, ph, pw, layers, num_threads)
        else:
            _avg_backward_nchw(<const double*> cnp.PyArray_DATA(grad_out), <double*> cnp.PyArray_DATA(grad_x),
                               <const double*> cnp.PyArray_DATA(divisors), <double*> cnp.PyArray_DATA(share_buf),
                               cnp.PyArray_DIMS(share_buf)[1], <double*> cnp.PyArray_DATA(stage),
                               cnp.PyArray_DIMS(stage)[1], stream, xs[0], xs[1], xs[2], xs[3], os[2], os[3], kh, kw,
                               sh, sw, ph, pw, layers, num_threads)


cdef inline void _mean_cells(floating* op, const floating* xn, Py_ssize_t h0, Py_ssize_t w0, Py_ssize_t a_lo,
                             Py_ssize_t a_hi, Py_ssize_t b_lo, Py_ssize_t b_hi, Py_ssize_t W, Py_ssize_t C,
                             Py_ssize_t c0, floating d) noexcept nogil:
    """Channels [c0, C) of one NHWC window's average: ``op[c]`` sums the real cells (rows h0 + a_lo .. h0 + a_hi - 1,
    columns w0 + b_lo .. w0 + b_hi - 1 of image ``xn``) from 0 in scan order, then is divided by ``d``."""
    cdef Py_ssize_t a, b, c
    cdef const floating* px
    for c in range(c0, C):
        op[c] = 0
    for a in range(a_lo, a_hi):
        for b in range(b_lo, b_hi):
            px = xn + ((h0 + a) * W + w0 + b) * C
            for c in range(c0, C):
                op[c] = op[c] + px[c]
    for c in range(c0, C):
        op[c] = op[c] / d


cdef void _avg_nhwc_row(const floating* xn, floating* orow, const floating* drow, Py_ssize_t i, Py_ssize_t H,
                        Py_ssize_t W, Py_ssize_t C, Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                        Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, bint registers) noexcept nogil:
    """Output row i of one NHWC image: ``orow`` (out_w, C) gets each window's sum divided by ``drow[j]``; with
    ``registers``, through the AVX2 loop where it is built (windows of at most ``_SCATTER_TAPS`` taps), else
    by whole-pixel passes (:func:`_mean_cells`)."""
    cdef Py_ssize_t j, a, b, c0, m, h0, w0, a_lo, a_hi, b_lo, b_hi
    cdef Py_ssize_t offs[_SCATTER_TAPS]                   # a window's real taps: offsets from the image's start
    cdef floating* op
    cdef floating d
    h0 = i * sh - ph
    a_lo = _tap_lo(h0, 1)
    a_hi = _tap_hi(h0, kh, 1, H)
    for j in range(out_w):
        w0 = j * sw - pw
        b_lo = _tap_lo(w0, 1)
        b_hi = _tap_hi(w0, kw, 1, W)
        op = orow + j * C
        d = drow[j]
        c0 = 0                                            # channels [0, c0) are done
        if registers:
            m = 0
            for a in range(a_lo, a_hi):
                for b in range(b_lo, b_hi):
                    offs[m] = ((h0 + a) * W + w0 + b) * C
                    m += 1
            if floating is float:                         # (none in the baseline build)
                c0 = pl_nhwc_mean_f32(op, xn, offs, m, C, d)
            else:
                c0 = pl_nhwc_mean_f64(op, xn, offs, m, C, d)
        if c0 < C:
            _mean_cells(op, xn, h0, w0, a_lo, a_hi, b_lo, b_hi, W, C, c0, d)


def avg_nhwc(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, const floating[:, ::1] divisors,
             int kh, int kw, int sh, int sw, int ph, int pw, int num_threads):
    """Average pooling of an NHWC batch ``x`` (N, H, W, C) into ``out`` (N, out_h, out_w, C)."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t out_h = out.shape[1], out_w = out.shape[2]
    cdef Py_ssize_t row, n, i
    # Overlapping windows read their cells from the cache, and the AVX2 loop's sums in registers save a read and a
    # write of the output per tap. Windows side by side (stride >= size) read every cell once from memory, which
    # the plain loop's whole-pixel passes stream better (float64 4x4 stride-4 windows took 1.3-1.4x as long).
    cdef bint overlap = (sh < kh or sw < kw) and kh * kw <= _SCATTER_TAPS
    _check_threads(num_threads)
    _check_dims(N, C, H, W, out.shape[0], out.shape[3], out_h, out_w, kh, kw, sh, sw, ph, pw, 1, 1, "x", "out")
    _check_divisors(divisors.shape[0], divisors.shape[1], out_h, out_w, "out")
    if N == 0:
        return
    for row in prange(N * out_h, nogil=True, schedule="guided", num_threads=num_threads):
        n = row // out_h
        i = row % out_h
        _avg_nhwc_row(&x[n, 0, 0, 0], &out[n, i, 0, 0], &divisors[i, 0], i, H, W, C, out_w, kh, kw, sh, sw, ph, pw,
                      overlap)


def avg_backward_nhwc(const floating[:, :, :, ::1] grad_out, floating[:, :, :, ::1] grad_x,
                      const floating[:, ::1] divisors, floating[:, ::1] share_buf,
                      int kh, int kw, int sh, int sw, int ph, int pw, int num_threads):
    """Gradient of average pooling for NHWC ``grad_out``; ``grad_x`` (N, H, W, C) may be uninitialised.

    ``share_buf`` holds a scratch row of at least ``C`` values per thread. Threads share output rows when window
    rows cannot overlap (``sh >= kh``; each zeroes the input rows it owns first), else images.
    """
    cdef Py_ssize_t N = grad_x.shape[0], H = grad_x.shape[1], W = grad_x.shape[2], C = grad_x.shape[3]
    cdef Py_ssize_t out_h = grad_out.shape[1], out_w = grad_out.shape[2]
    cdef Py_ssize_t row, n, i, i_lo, i_hi, j, a, b, c, h0, w0, a_lo, a_hi, b_lo, b_hi, h_lo, h_hi, tid, units
    cdef const floating* gp
    cdef floating* gpx
    cdef floating* share
    cdef floating d
    cdef bint by_rows = sh >= kh
    cdef UnitRows u
    _check_threads(num_threads)
    _check_dims(N, C, H, W, grad_out.shape[0], grad_out.shape[3], out_h, out_w, kh, kw, sh, sw, ph, pw, 1, 1,
                "grad_x", "grad_out")
    _check_divisors(divisors.shape[0], divisors.shape[1], out_h, out_w, "grad_out")
    _need_rows(share_buf.shape[0], share_buf.shape[1], "share_buf", num_threads, C)
    if N == 0:
        return
    units = N * out_h if by_rows else N
    with nogil, parallel(num_threads=num_threads):
        tid = threadid()
        share = &share_buf[tid, 0]
        for row in prange(units, schedule="guided"):
            u = _unit_rows(row, by_rows, out_h, H, sh, ph)
            n = u.n
            i_lo = u.i_lo
            i_hi = u.i_hi
            h_lo = u.h_lo
            h_hi = u.h_hi
            if h_hi > h_lo:
                memset(&grad_x[n, h_lo, 0, 0], 0, (h_hi - h_lo) * W * C * sizeof(floating))
            for i in range(i_lo, i_hi):
                h0 = i * sh - ph
                a_lo = _tap_lo(h0, 1)
                a_hi = _tap_hi(h0, kh, 1, H)
                for j in range(out_w):
                    w0 = j * sw - pw
                    b_lo = _tap_lo(w0, 1)
                    b_hi = _tap_hi(w0, kw, 1, W)
                    gp = &grad_out[n, i, j, 0]
                    d = divisors[i, j]
                    for c in range(C):
                        share[c] = gp[c] / d
                    for a in range(a_lo, a_hi):
                        for b in range(b_lo, b_hi):
                            gpx = &grad_x[n, h0 + a, w0 + b, 0]
                            for c in range(C):
                                gpx[c] = gpx[c] + share[c]
