// Split kernel of decode attention over KVarN records, one warp per (row, KV head, split).
//
// kernels/cuda_decode.py prepends the constants (D, KB, VB, GQA, GP, G, REC and the
// record's OFF_* field offsets) and compiles this with NVRTC; no header is included.
//
// Why a hand-written kernel: the Triton split kernels spend 5-8k warp-instructions per
// 128-token block (benchmarks/GPU_NOTES.md), mostly layout conversions through shared
// memory, and reach 17-20% of HBM bandwidth. Here every operand is built in the register
// layout the tensor cores read (mma.sync m16n8k16, bf16):
//  * scores^T [16 tokens, 8] = K codes [16 tokens, 16 ch] x Q' [16 ch, 8] per MMA, where the
//    8 columns are (q_rot * k_scale) of head h, split into a bf16 high part (column 2h) and
//    the remainder (2h + 1): float32-level accuracy for the price of the padding (GQA <= 4);
//  * out^T [16 ch, 8] = V codes^T [16 ch, 16 tokens] x P' [16 tokens, 8], P' = p * v_scale
//    split the same way; the records hold V channel-major, so both code operands are A
//    operands read straight from 32-bit words;
//  * a code pair becomes a bf16 pair in one LOP3 after a shift: (w & mask) | 0x43004300 is
//    128 + c in each half. With 2-bit codes one shift serves two pairs: the second pair sits
//    two bits up and reads as 128 + 4c, so the B rows it meets (reduction indices 8-15 of
//    each slice) carry a quarter of their value. The reduction index of each MMA visits the
//    channels (tokens) in the order the words unpack them; the query columns, the token rows
//    of K and the P' rows follow that order (kmap);
//  * the 128s come back out through the accumulator's start value: one MMA per slice of a
//    constant -128 A operand against the same B gives -128 * (column sums of B) in every row;
//  * the block's scalar multipliers are applied once per score or output, not per element;
//  * P' moves from the scores' accumulator layout to the B operand layout with two
//    movmatrix transposes per 16 tokens instead of a round trip through shared memory;
//  * each record (codes, scales, zeros) is copied to shared memory with cp.async while the
//    previous block is computed (two buffers per warp); within the code regions the 16-byte
//    pieces of a row are swapped on alternate row groups, so the two rows that lanes r and
//    r + 1 read in one shared-memory phase fall in different banks.
// Output: the unnormalized partial (acc [GP, D] in the rotated domain, running max and sum
// in base 2) that triton_decode._reduce_kernel merges, as the Triton split kernels write it
// but for rows GQA .. GP - 1, which the reduce kernel does not read. With SLOTS (head_dim 64)
// the splits also attend to the 16-bit sink and tail slots (side_attend), so the reduce
// kernel reads none: slot i in split i % nsplit, which takes slot_w blocks fewer (or, with
// TICKETS, asks for blocks only once done with its slots).
// With FUSED (head_dim 64) the kernel is the whole decode: each program rotates the model's
// query itself (rotate_query, a Walsh-Hadamard transform in registers), and the last split
// of each (row, KV head) to finish, counted in `count`, merges the partials and writes the
// output rotated back (merge_out), so neither the query-rotation launch nor the reduce
// launch runs. With TICKETS (FUSED unless the caller asks for a deterministic result) the
// blocks are not cut into fixed ranges: past each split's first two, they go to whichever
// split asks next (a second counter per row and KV head), so splits finish together; which
// split attends to which block, and so the float rounding, then varies from launch to launch.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
// element type of the 16-bit staging slots (SIDE_KIND 0: bf16, 1: fp16, 2: float32, as tests pass them)
template <int KIND> struct SideType { typedef u16 T; };
template <> struct SideType<2> { typedef float T; };
using SideT = SideType<SIDE_KIND>::T;
// element type of the query and the output (QKIND, coded as SIDE_KIND): with FUSED the
// model's own; otherwise the query comes rotated in float32 (QKIND 2) and no output is written
using QT = SideType<QKIND>::T;

struct __align__(16) Words4 { u32 w[4]; };

#define NEG_BIG (-1.0e30f)
#define FULL 0xffffffffu

constexpr int NS = D / 16;            // 16-channel slices of K, 16-channel tiles of V^T
constexpr int KW = D * KB / 32;       // 32-bit words per K token row
constexpr int VW = G * VB / 32;       // 32-bit words per V channel row
constexpr int TM = G / 16;            // 16-token tiles per block
constexpr int KROW = D * KB / 8;      // bytes per K token row
constexpr int VROW = G * VB / 8;      // bytes per V channel row
constexpr int CHUNKS = REC / 16;      // 16-byte pieces per record
// distance between the token rows that lanes r and r + 1 read (kmap<VB>(1) - kmap<VB>(0))
constexpr int KSTEP = VB == 2 ? 8 : 4;
static_assert((G == 64 || G == 128) && (D == 64 || D == 128), "blocks of 64 or 128 tokens, head_dim 64 or 128");
static_assert((KB == 2 || KB == 4) && (VB == 2 || VB == 4), "2- or 4-bit codes");
static_assert(GQA >= 1 && GQA <= 4, "up to 4 query heads per KV head (8 MMA columns)");
static_assert(!TICKETS || FUSED, "tickets come from the one-launch form's counters");
static_assert(REC % 16 == 0, "records are copied in 16-byte pieces");
static_assert(OFF_K_CODES % 32 == 0 && OFF_V_CODES % 32 == 0, "code regions start on a 16-byte pair");
// a code row of one piece (K at D = 64 with 2-bit codes, V at G = 64 with 2-bit codes) trades
// places with its neighbour row instead of with its own other piece (see k_swap, v_swap)
static_assert(KROW % 16 == 0 && VROW % 16 == 0, "code rows of whole 16-byte pieces");
static_assert(OFF_K_ZERO % 4 == 0 && OFF_V_ZERO % 4 == 0 && OFF_K_SCALE % 2 == 0 && OFF_V_SCALE % 2 == 0 &&
              OFF_K_TOKEN_SCALE % 2 == 0 && OFF_V_CHANNEL_SCALE % 2 == 0 && OFF_K_SCALE_MULT % 4 == 0,
              "scale fields aligned for paired loads");

__device__ __forceinline__ float f16_to_f32(u16 v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
  return f;
}

// two floats -> a bf16 pair (round to nearest), `lower` in the low half
__device__ __forceinline__ u32 pack2(float lower, float upper) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(upper), "f"(lower));
  return r;
}

// two e4m3 bytes (low byte first) -> two floats
__device__ __forceinline__ void e4m3x2(u16 v, float& lo, float& hi) {
  u32 h2;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(v));
  lo = f16_to_f32((u16)(h2 & 0xffffu));
  hi = f16_to_f32((u16)(h2 >> 16));
}

__device__ __forceinline__ float e4m3(u8 v) {
  float lo, hi;
  e4m3x2((u16)v, lo, hi);
  return lo;
}

// two f16 values (low half first) -> two floats
__device__ __forceinline__ void f16x2(u32 v, float& lo, float& hi) {
  lo = f16_to_f32((u16)(v & 0xffffu));
  hi = f16_to_f32((u16)(v >> 16));
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// the part of x an MMA column carries: its bf16 high part (x truncated to 16 bits, exact in
// bf16) or the remainder x - high (exact in float32; the pack rounds it to bf16)
__device__ __forceinline__ float part(float x, bool low) {
  const float hi = __uint_as_float(__float_as_uint(x) & 0xffff0000u);
  return low ? x - hi : hi;
}

// element of a 16-wide MMA reduction slice that index k (0..15) reads, in the order
// the fragments unpack a slice's words (see afrag)
template <int BITS>
__device__ __forceinline__ int kmap(int k) {
  const int jj = (k & 7) >> 1, e = k & 1, hw = k >> 3;
  return BITS == 2 ? 2 * jj + hw + 8 * e : 8 * hw + jj + 4 * e;
}

// (w & mask) | magic in one instruction; magic is a register (two immediates do not fit one LOP3)
template <u32 MASK>
__device__ __forceinline__ u32 pick(u32 w, u32 magic) {
  u32 d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(w), "n"(MASK), "r"(magic));
  return d;
}

// A operand of one MMA (rows = the lane's rows A and B, 16 reduction indices of slice sl)
// from the rows' 32-bit words; lane j takes the pairs of indices (2j, 2j+1), (2j+8, 2j+9).
// 2-bit: the pairs at bits 4j and 4j + 2 of one word, the second as 128 + 4c; 4-bit: the
// pair at bits 4j of words 2 sl and 2 sl + 1.
template <int BITS, int NW>
__device__ __forceinline__ void afrag(const u32 (&wa)[NW], const u32 (&wb)[NW], int sl, int sh, u32 magic, u32 (&a)[4]) {
  if constexpr (BITS == 2) {
    const u32 xa = wa[sl] >> sh, xb = wb[sl] >> sh;
    a[0] = pick<0x00030003u>(xa, magic);
    a[1] = pick<0x00030003u>(xb, magic);
    a[2] = pick<0x000c000cu>(xa, magic);
    a[3] = pick<0x000c000cu>(xb, magic);
  } else {
    a[0] = pick<0x000f000fu>(wa[2 * sl] >> sh, magic);
    a[1] = pick<0x000f000fu>(wb[2 * sl] >> sh, magic);
    a[2] = pick<0x000f000fu>(wa[2 * sl + 1] >> sh, magic);
    a[3] = pick<0x000f000fu>(wb[2 * sl + 1] >> sh, magic);
  }
}

// d = a b + c
__device__ __forceinline__ void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1, const float (&c)[4]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// -128 * (column sums of the N slices of B) in every row: the start value that takes the
// 128s out
template <int N>
__device__ __forceinline__ void minus_128_sums(const u32 (&b)[N][2], float (&d)[4]) {
  const u32 m128[4] = {0xc300c300u, 0xc300c300u, 0xc300c300u, 0xc300c300u};  // bf16 -128
  d[0] = d[1] = d[2] = d[3] = 0.f;
#pragma unroll
  for (int sl = 0; sl < N; ++sl) mma(d, m128, b[sl][0], b[sl][1], d);
}

// d = init + sum over the N slices of A (the codes of rows wa, wb) x B
template <int BITS, int NW, int N>
__device__ __forceinline__ void mma_chain(const u32 (&wa)[NW], const u32 (&wb)[NW], const u32 (&b)[N][2],
                                          const float (&init)[4], int sh, u32 magic, float (&d)[4]) {
  u32 a[4];
  afrag<BITS, NW>(wa, wb, 0, sh, magic, a);
  mma(d, a, b[0][0], b[0][1], init);
#pragma unroll
  for (int sl = 1; sl < N; ++sl) {
    afrag<BITS, NW>(wa, wb, sl, sh, magic, a);
    mma(d, a, b[sl][0], b[sl][1], d);
  }
}

__device__ __forceinline__ u32 trans8(u32 x) {
  u32 y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

// sum / max over the 8 lanes of a head (lanes j, j + 4, ..., j + 28: the score rows)
__device__ __forceinline__ float head_sum(float x) {
  x += __shfl_xor_sync(FULL, x, 4);
  x += __shfl_xor_sync(FULL, x, 8);
  return x + __shfl_xor_sync(FULL, x, 16);
}

__device__ __forceinline__ float head_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(FULL, x, 4));
  x = fmaxf(x, __shfl_xor_sync(FULL, x, 8));
  return fmaxf(x, __shfl_xor_sync(FULL, x, 16));
}

// One block's step of the online softmax: m_run becomes the max of itself and the head's
// scores sc (this lane's two tokens per 16-token tile); returns alpha, the factor by which
// the state kept so far (sum, acc) is scaled
__device__ __forceinline__ float raise_max(const float (&sc)[TM][2], float& m_run) {
  float bmax = NEG_BIG;
#pragma unroll
  for (int m = 0; m < TM; ++m) bmax = fmaxf(bmax, fmaxf(sc[m][0], sc[m][1]));
  const float m_new = fmaxf(m_run, head_max(bmax));
  const float alpha = ex2(m_run - m_new);
  m_run = m_new;
  return alpha;
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

__device__ __forceinline__ void cp16(u32 dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// Where the 16-byte pieces of a record go in shared memory: inside the code regions the
// pieces of a row trade places (x ^ 1) on alternate groups of rows, the groups chosen so that
// the rows lanes r and r + 1 read together (K: token rows KSTEP apart; V: channel rows D / 8
// apart) fall in different banks; rows of one piece (K at D = 64 with 2-bit codes, V at G = 64
// with 2-bit codes) trade with their neighbour. Piece x of a region belongs to row
// x / (pieces per row); with 32 lanes the swap bit of lane + 32 k is a lane constant or a
// compile-time one.
constexpr int KN = G * KROW / 16, VN = D * VROW / 16;  // pieces of the K and V code regions
static_assert(OFF_K_CODES == 0 && OFF_V_CODES == G * KROW && KN % 32 == 0 && VN % 32 == 0,
              "K codes, then V codes, then the scale fields");

__device__ __forceinline__ int k_swap(int x) { return ((x / (KROW / 16)) / KSTEP) & 1; }
__device__ __forceinline__ int v_swap(int x) { return ((x / (VROW / 16)) / (D / 8)) & 1; }

__device__ __forceinline__ void copy_record(u32 dst, const u8* src, int lane) {
#pragma unroll
  for (int k = 0; k < KN / 32; ++k) {
    const int x = lane + 32 * k;
    cp16(dst + 16 * (x ^ k_swap(x)), src + 16 * x);
  }
#pragma unroll
  for (int k = 0; k < VN / 32; ++k) {
    const int x = lane + 32 * k;
    cp16(dst + 16 * (KN + (x ^ v_swap(x))), src + 16 * (KN + x));
  }
#pragma unroll
  for (int k = 0; k < (CHUNKS - KN - VN + 31) / 32; ++k) {
    const int c = KN + VN + lane + 32 * k;
    if (c < CHUNKS) cp16(dst + 16 * c, src + 16 * c);
  }
}

// the NW words of a code row whose first piece is `first` (pieces from `region`), s the
// row's swap bit
template <int NW>
__device__ __forceinline__ void load_row(const u8* region, int first, int s, u32 (&w)[NW]) {
#pragma unroll
  for (int u = 0; u < NW / 4; ++u) {
    const Words4 x = reinterpret_cast<const Words4*>(region)[(first + u) ^ s];
#pragma unroll
    for (int k = 0; k < 4; ++k) w[4 * u + k] = x.w[k];
  }
}

// The partial of this program: acc (lane (r, j) holds head j at channels ca, ca + 1 of
// each tile, ca = (D / 8) r + 2 mv), the running max and the head's sum. Only the GQA real
// rows: the reduce kernel masks rows GQA .. GP - 1 of every partial.
__device__ __forceinline__ void write_partial(const float (&acc)[NS][2], float m, float l, long long part_ix,
                                              float* __restrict__ ws_acc, float* __restrict__ ws_ml) {
  const int lane = threadIdx.x, r = lane >> 2, j = lane & 3;
  float* wacc = ws_acc + part_ix * GP * D;
  float* wml = ws_ml + part_ix * 2 * GP;
  if (j < GQA) {
#pragma unroll
    for (int mv = 0; mv < NS; ++mv) {
      const int ca = (D / 8) * r + 2 * mv;
      *reinterpret_cast<float2*>(wacc + j * D + ca) = make_float2(acc[mv][0], acc[mv][1]);
    }
    if (r == 0) {
      wml[j] = m;
      wml[GP + j] = l;
    }
  }
}

// Two elements packed in a 32-bit word (bf16 or fp16, KIND 0 or 1) as floats
template <int KIND>
__device__ __forceinline__ float2 word2(u32 w) {
  if constexpr (KIND == 0) return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  float lo, hi;
  f16x2(w, lo, hi);
  return make_float2(lo, hi);
}

// Two consecutive elements of KIND (2: float32, as tests pass them) as floats
template <int KIND>
__device__ __forceinline__ float2 load2(const typename SideType<KIND>::T* p) {
  if constexpr (KIND == 2) return *reinterpret_cast<const float2*>(p);
  else return word2<KIND>(*reinterpret_cast<const u32*>(p));
}

// Two floats stored as consecutive elements of KIND, rounded to nearest
template <int KIND>
__device__ __forceinline__ void store2(typename SideType<KIND>::T* p, float lower, float upper) {
  if constexpr (KIND == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(lower, upper);
  } else if constexpr (KIND == 0) {
    *reinterpret_cast<u32*>(p) = pack2(lower, upper);
  } else {
    u32 h;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(h) : "f"(upper), "f"(lower));
    *reinterpret_cast<u32*>(p) = h;
  }
}

// Four consecutive slot elements as floats

__device__ __forceinline__ float4 side4(const SideT* p) {
  if constexpr (SIDE_KIND == 2) return *reinterpret_cast<const float4*>(p);
  const uint2 w = *reinterpret_cast<const uint2*>(p);
  const float2 a = word2<SIDE_KIND>(w.x), b = word2<SIDE_KIND>(w.y);
  return make_float4(a.x, a.y, b.x, b.y);
}

// x H for the Sylvester +-1 matrix H over a head's D channels, where lane (r, j) holds
// channels (D / 8) r + 2 mv + e in x[2 mv + e] (the layout of acc): the low channel bits are
// the lane's own, butterflies in registers; the top three are lane bits 2-4, butterflies
// through shuffles (lanes of one j stay together, so each j transforms its own head).
__device__ __forceinline__ void fwht(float (&x)[2 * NS]) {
#pragma unroll
  for (int h = 1; h < 2 * NS; h *= 2)
#pragma unroll
    for (int i = 0; i < 2 * NS; ++i)
      if (!(i & h)) {
        const float a = x[i], c = x[i + h];
        x[i] = a + c;
        x[i + h] = a - c;
      }
  const int lane = threadIdx.x;
#pragma unroll
  for (int m = 4; m < 32; m *= 2)
#pragma unroll
    for (int i = 0; i < 2 * NS; ++i) {
      const float y = __shfl_xor_sync(FULL, x[i], m);
      x[i] = (lane & m) ? y - x[i] : x[i] + y;
    }
}

// The group's GQA query heads (q: the first, in the model's dtype) rotated and scaled,
// (q H) * qk_scale in float32, into qs [GQA, D]. Every split program does this for itself:
// a few hundred instructions, against a launch of its own (~2 us per layer and step).
__device__ __forceinline__ void rotate_query(const QT* __restrict__ q, int stride_qh, float qk_scale, float* qs) {
  const int lane = threadIdx.x, r = lane >> 2, j = lane & 3;
  const QT* qrow = q + (long long)(j < GQA ? j : 0) * stride_qh + (D / 8) * r;
  float x[2 * NS];
#pragma unroll
  for (int mv = 0; mv < NS; ++mv) {
    const float2 v = load2<QKIND>(qrow + 2 * mv);
    x[2 * mv] = v.x;
    x[2 * mv + 1] = v.y;
  }
  fwht(x);
  if (j < GQA)
#pragma unroll
    for (int mv = 0; mv < NS; ++mv)
      *reinterpret_cast<float2*>(qs + j * D + (D / 8) * r + 2 * mv) = make_float2(x[2 * mv] * qk_scale, x[2 * mv + 1] * qk_scale);
  __syncwarp();
}

// fence.acq_rel at GPU scope: what the count below needs on both sides (a release before the
// count, an acquire after it). __threadfence() would be fence.sc, stronger than needed; the two
// timed the same within run-to-run noise (docs/BENCHMARKS.md run 101).
__device__ __forceinline__ void fence_acq_rel() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

// Whether this program is the last of the nsplit splits of its (row, KV head) to finish:
// each counts itself in *cnt after making its partial visible and taking its last ticket from
// *next; the last one sets both back to 0 for the next launch (the counters start at 0:
// cuda_decode.split_counters).
__device__ __forceinline__ bool last_split(int* cnt, int* next, int nsplit) {
  fence_acq_rel();
  __syncwarp();
  int seen = 0;
  if (threadIdx.x == 0) {
    seen = atomicAdd(cnt, 1);
    if (seen == nsplit - 1) *cnt = *next = 0;
  }
  seen = __shfl_sync(FULL, seen, 0);
  if (seen != nsplit - 1) return false;
  fence_acq_rel();
  return true;
}

// The reduce kernel's work for one (row, KV head), done by its last split: merge the nsplit
// partials from part0 on (MERGE_AT_ONCE loads in flight per lane and step; read past L1, which
// other SMs' writes do not reach), normalize, rotate back and write the GQA heads of out.
constexpr int MERGE_AT_ONCE = 8;
__device__ __forceinline__ void merge_out(long long part0, int nsplit, const float* __restrict__ ws_acc,
                                          const float* __restrict__ ws_ml, QT* __restrict__ out, int stride_oh,
                                          float inv_sqrt_d) {
  const int lane = threadIdx.x, r = lane >> 2, j = lane & 3;
  const int hj = j < GQA ? j : 0;  // lanes j >= GQA merge head 0 again: fwht needs every lane
  const int c0 = (D / 8) * r;
  float m = NEG_BIG, l = 0.f, x[2 * NS];
#pragma unroll
  for (int i = 0; i < 2 * NS; ++i) x[i] = 0.f;
  for (int s0 = 0; s0 < nsplit; s0 += MERGE_AT_ONCE) {
    float ms[MERGE_AT_ONCE], ls[MERGE_AT_ONCE];
    float2 a[MERGE_AT_ONCE][NS];
#pragma unroll
    for (int u = 0; u < MERGE_AT_ONCE; ++u) {
      const bool ok = s0 + u < nsplit;
      const long long p = part0 + (ok ? s0 + u : 0);
      ms[u] = ok ? __ldcg(ws_ml + p * 2 * GP + hj) : NEG_BIG;
      ls[u] = ok ? __ldcg(ws_ml + p * 2 * GP + GP + hj) : 0.f;
#pragma unroll
      for (int mv = 0; mv < NS; ++mv)
        a[u][mv] = ok ? __ldcg(reinterpret_cast<const float2*>(ws_acc + p * GP * D + hj * D + c0 + 2 * mv))
                      : make_float2(0.f, 0.f);
    }
    float mx = m;
#pragma unroll
    for (int u = 0; u < MERGE_AT_ONCE; ++u) mx = fmaxf(mx, ms[u]);
    const float alpha = ex2(m - mx);
    l *= alpha;
#pragma unroll
    for (int i = 0; i < 2 * NS; ++i) x[i] *= alpha;
#pragma unroll
    for (int u = 0; u < MERGE_AT_ONCE; ++u) {
      const float w = ex2(ms[u] - mx);
      l = fmaf(w, ls[u], l);
#pragma unroll
      for (int mv = 0; mv < NS; ++mv) {
        x[2 * mv] = fmaf(w, a[u][mv].x, x[2 * mv]);
        x[2 * mv + 1] = fmaf(w, a[u][mv].y, x[2 * mv + 1]);
      }
    }
    m = mx;
  }
  const float inv = 1.f / fmaxf(l, 1e-30f);
#pragma unroll
  for (int i = 0; i < 2 * NS; ++i) x[i] *= inv;
  fwht(x);
  if (j < GQA)
#pragma unroll
    for (int mv = 0; mv < NS; ++mv)
      store2<QKIND>(out + (long long)j * stride_oh + c0 + 2 * mv, x[2 * mv] * inv_sqrt_d, x[2 * mv + 1] * inv_sqrt_d);
}

// Attention of the GQA heads over one 16-bit staging slot (the sink or the tail: K and V
// [G, D] token-major in the rotated domain, the first n tokens valid), folded into the
// program's running state (m_run, l_run, acc) like one more block, so that no other launch
// reads the slots. One G-token block through the tensor cores, K and V rounded to bf16 as
// the Triton reduce kernel rounds them, the query and P' split into high and low parts as in
// the code path. Order of the reduction indices: lane j's pairs in slice sl are channels
// (D / 4) j + 4 sl + (0, 1) and (+ 2, + 3), so each lane reads four consecutive elements of
// its rows; tokens keep their order (rows r, r + 8 of each tile, pairs 2j, 2j + 1 for V).
__device__ __forceinline__ void side_attend(const float* qgroup, int stride_qh, const SideT* __restrict__ kp,
                                            const SideT* __restrict__ vp, int stride_st, int n, float& m_run,
                                            float& l_run, float (&acc)[NS][2]) {
  const int lane = threadIdx.x, r = lane >> 2, j = lane & 3;
  const int qh = r >> 1;
  const bool low = r & 1;
  const int c0 = (D / 4) * j;
  u32 bq[NS][2];
  {
    const float* qrow = qgroup + (long long)(qh < GQA ? qh : 0) * stride_qh;
#pragma unroll
    for (int sl = 0; sl < NS; ++sl) {
      float4 q = *reinterpret_cast<const float4*>(qrow + c0 + 4 * sl);
      if (qh >= GQA) q = make_float4(0.f, 0.f, 0.f, 0.f);
      bq[sl][0] = pack2(part(q.x, low), part(q.y, low));
      bq[sl][1] = pack2(part(q.z, low), part(q.w, low));
    }
  }
  float sc[TM][2];
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    sc[m][0] = sc[m][1] = NEG_BIG;
    if (16 * m >= n) continue;
    const int ta = 16 * m + r, tb = ta + 8;
    float acc_s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int sl = 0; sl < NS; ++sl) {
      const float4 xa = ta < n ? side4(kp + (long long)ta * stride_st + c0 + 4 * sl) : make_float4(0.f, 0.f, 0.f, 0.f);
      const float4 xb = tb < n ? side4(kp + (long long)tb * stride_st + c0 + 4 * sl) : make_float4(0.f, 0.f, 0.f, 0.f);
      const u32 a[4] = {pack2(xa.x, xa.y), pack2(xb.x, xb.y), pack2(xa.z, xa.w), pack2(xb.z, xb.w)};
      mma(acc_s, a, bq[sl][0], bq[sl][1], acc_s);
    }
    if (ta < n) sc[m][0] = acc_s[0] + acc_s[1];
    if (tb < n) sc[m][1] = acc_s[2] + acc_s[3];
  }
  const float alpha = raise_max(sc, m_run);
  l_run *= alpha;
#pragma unroll
  for (int mv = 0; mv < NS; ++mv) {
    acc[mv][0] *= alpha;
    acc[mv][1] *= alpha;
  }
  const float zero4[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    if (16 * m >= n) continue;
    u32 pk[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float p = 16 * m + r + 8 * e < n ? ex2(sc[m][e] - m_run) : 0.f;
      l_run += p;
      const float hi = part(p, false);
      pk[e] = pack2(hi, p - hi);
    }
    const u32 b0 = trans8(pk[0]), b1 = trans8(pk[1]);
    const int t0 = 16 * m + 2 * j;
#pragma unroll
    for (int mv = 0; mv < NS; ++mv) {
      const int ca = (D / 8) * r + 2 * mv;
      float2 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int t = t0 + (u & 1) + 8 * (u >> 1);
        v[u] = t < n ? load2<SIDE_KIND>(vp + (long long)t * stride_st + ca) : make_float2(0.f, 0.f);
      }
      const u32 a[4] = {pack2(v[0].x, v[1].x), pack2(v[0].y, v[1].y), pack2(v[2].x, v[3].x), pack2(v[2].y, v[3].y)};
      float o[4];
      mma(o, a, b0, b1, zero4);
      acc[mv][0] += o[0] + o[1];
      acc[mv][1] += o[2] + o[3];
    }
  }
}

// The running state (max, this lane's sum, acc) after the slots of split s. Compiled in with
// SLOTS only (head_dim 64): at 128 the slot code in the kernel made ptxas allocate the block
// loop differently, and the split kernel took 9% (k2v2) and 36% (k4v4) longer at 32k, 32 rows,
// the slots' own 9-12 us included (docs/BENCHMARKS.md runs 94-97).
struct SlotState {
  float m = NEG_BIG, l = 0.f;
  float acc[NS][2] = {};
};

__device__ __forceinline__ SlotState slot_state(const float* qgroup, int stride_qh, const SideT* __restrict__ side_k,
                                             const SideT* __restrict__ side_v, int stride_ss, int stride_sh, int stride_st,
                                             const int* __restrict__ slot_row, const int* __restrict__ len_row, int num_side,
                                             int s, int nsplit, int kvh) {
  SlotState st;
  for (int si = s; si < num_side; si += nsplit) {
    const int slot = slot_row[si];
    const int n = slot >= 0 ? min(len_row[si], G) : 0;
    if (n <= 0) continue;
    const long long off = (long long)slot * stride_ss + (long long)kvh * stride_sh;
    side_attend(qgroup, stride_qh, side_k + off, side_v + off, stride_st, n, st.m, st.l, st.acc);
  }
  return st;
}

// One G-token block (the record at R in shared memory) folded into this lane's running
// state (m_run, l_run, acc): scores through the K codes, online softmax, P' through the V
// codes. qv is this lane's query part for the B operand (see the kernel), trow_* its token
// rows in each 16-token tile, ks_* and vs_r their swap bits.
__device__ __forceinline__ void attend_block(const u8* R, int r, int j, const float (&qv)[NS][4], u32 magic, int trow_a,
                                             int trow_b, int ks_a, int ks_b, int vs_r, float& m_run, float& l_run,
                                             float (&acc)[NS][2]) {
  const bool low = r & 1;
  const int sh = 4 * j;  // this lane's code pairs start at bit 4j of each word
  const float* mult = reinterpret_cast<const float*>(R + OFF_K_SCALE_MULT);
  const float mks = mult[0], mkz = mult[1], mkts = mult[2], mvs = mult[3], mvz = mult[4], mvcs = mult[5];

  // Q' = q_rot * k_scale (block multiplier left out) as this lane's B operand part
  u32 bq[NS][2];
#pragma unroll
  for (int sl = 0; sl < NS; ++sl) {
    float ks[4];
    if constexpr (KB == 2) {  // q = 0, 2 are channels 2j, 2j + 1; q = 1, 3 are 2j + 8, 2j + 9
      const int c0 = 16 * sl + 2 * j;
      e4m3x2(*reinterpret_cast<const u16*>(R + OFF_K_SCALE + c0), ks[0], ks[2]);
      e4m3x2(*reinterpret_cast<const u16*>(R + OFF_K_SCALE + c0 + 8), ks[1], ks[3]);
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q) ks[q] = e4m3(R[OFF_K_SCALE + 16 * sl + kmap<KB>((q & 1) + 2 * j + 8 * (q >> 1))]);
    }
    float v[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) v[q] = part(qv[sl][q] * ks[q], low);
    bq[sl][0] = pack2(v[0], v[1]);
    bq[sl][1] = pack2(v[2], v[3]);
  }
  // q_rot . k_zero: the high and low lanes of a column hold the same query values, so the
  // high lane takes slice sl and the low lane slice sl + NS / 2 (the four-fold weight of
  // 2-bit q = 2, 3 restored at the end)
  float qz1 = 0.f, qz4 = 0.f;
#pragma unroll
  for (int sl = 0; sl < NS / 2; ++sl) {
    const int sx = low ? sl + NS / 2 : sl;
    float qs[4], kz[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) qs[q] = low ? qv[sl + NS / 2][q] : qv[sl][q];
    if constexpr (KB == 2) {
      const int c0 = 16 * sx + 2 * j;
      f16x2(*reinterpret_cast<const u32*>(R + OFF_K_ZERO + 2 * c0), kz[0], kz[2]);
      f16x2(*reinterpret_cast<const u32*>(R + OFF_K_ZERO + 2 * (c0 + 8)), kz[1], kz[3]);
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q)
        kz[q] = f16_to_f32(reinterpret_cast<const u16*>(R + OFF_K_ZERO)[16 * sx + kmap<KB>((q & 1) + 2 * j + 8 * (q >> 1))]);
    }
    qz1 = fmaf(qs[0], kz[0], fmaf(qs[1], kz[1], qz1));
    qz4 = fmaf(qs[2], kz[2], fmaf(qs[3], kz[3], qz4));
  }
  float qkz = KB == 2 ? qz1 + 4.f * qz4 : qz1 + qz4;
  qkz += __shfl_xor_sync(FULL, qkz, 1);
  qkz += __shfl_xor_sync(FULL, qkz, 2);
  qkz += __shfl_xor_sync(FULL, qkz, 4);  // the high and low lanes of the column
  // the score lanes hold head j, whose Q' columns live in lanes 8j ..
  const float kzt = __shfl_sync(FULL, qkz, 8 * j) * mkz * mkts;
  const float kst = mks * mkts;

  float kinit[4];
  minus_128_sums<NS>(bq, kinit);

  // scores^T, 16 tokens per MMA row tile: this lane holds head j at two tokens per tile
  float sc[TM][2];
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    const u8* kt = R + OFF_K_CODES + 16 * m * KROW;
    u32 wa[KW], wb[KW];
    load_row<KW>(kt, trow_a * (KROW / 16), ks_a, wa);
    load_row<KW>(kt, trow_b * (KROW / 16), ks_b, wb);
    float acc_s[4];
    mma_chain<KB, KW, NS>(wa, wb, bq, kinit, sh, magic, acc_s);
    float tsa, tsb;
    if constexpr (VB == 2) {
      e4m3x2(*reinterpret_cast<const u16*>(R + OFF_K_TOKEN_SCALE + 16 * m + trow_a), tsa, tsb);
    } else {
      tsa = e4m3(R[OFF_K_TOKEN_SCALE + 16 * m + trow_a]);
      tsb = e4m3(R[OFF_K_TOKEN_SCALE + 16 * m + trow_b]);
    }
    sc[m][0] = fmaf(acc_s[0] + acc_s[1], kst, kzt) * tsa;
    sc[m][1] = fmaf(acc_s[2] + acc_s[3], kst, kzt) * tsb;
  }
  const float alpha = raise_max(sc, m_run);

  // P' = p * v_scale (block multiplier left out; a quarter of it on 2-bit rows r + 8) per
  // token as (high, low), moved to the B operand layout of the V MMA
  u32 pb[TM][2];
  float lsum = 0.f, pz = 0.f;
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    float vs[2], vz[2];
    if constexpr (VB == 2) {
      e4m3x2(*reinterpret_cast<const u16*>(R + OFF_V_SCALE + 16 * m + trow_a), vs[0], vs[1]);
      f16x2(*reinterpret_cast<const u32*>(R + OFF_V_ZERO + 2 * (16 * m + trow_a)), vz[0], vz[1]);
    } else {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = 16 * m + (e ? trow_b : trow_a);
        vs[e] = e4m3(R[OFF_V_SCALE + t]);
        vz[e] = f16_to_f32(reinterpret_cast<const u16*>(R + OFF_V_ZERO)[t]);
      }
    }
    u32 pk[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float p = ex2(sc[m][e] - m_run);
      lsum += p;
      pz = fmaf(p, vz[e], pz);
      const float pv = p * (VB == 2 && e ? 0.25f * vs[e] : vs[e]);
      const float hi = part(pv, false);
      pk[e] = pack2(hi, pv - hi);
    }
    pb[m][0] = trans8(pk[0]);
    pb[m][1] = trans8(pk[1]);
  }
  l_run = l_run * alpha + lsum;
  const float vzt = head_sum(pz) * mvz * mvcs;
  const float vst = mvs * mvcs;

  float vinit[4];
  minus_128_sums<TM>(pb, vinit);

  // out^T for channels ca, ca + 1 of each tile: this lane's rows r and r + 8
#pragma unroll
  for (int mv = 0; mv < NS; ++mv) {
    const int ca = (D / 8) * r + 2 * mv;
    const u8* vt = R + OFF_V_CODES;
    u32 wa[VW], wb[VW];
    load_row<VW>(vt, ca * (VROW / 16), vs_r, wa);
    load_row<VW>(vt, (ca + 1) * (VROW / 16), vs_r, wb);
    float o[4];
    mma_chain<VB, VW, TM>(wa, wb, pb, vinit, sh, magic, o);
    float vca, vcb;
    e4m3x2(*reinterpret_cast<const u16*>(R + OFF_V_CHANNEL_SCALE + ca), vca, vcb);
    acc[mv][0] = fmaf(acc[mv][0], alpha, fmaf(o[0] + o[1], vst, vzt) * vca);
    acc[mv][1] = fmaf(acc[mv][1], alpha, fmaf(o[2] + o[3], vst, vzt) * vcb);
  }
}

// MIN_PROGRAMS (defined at head_dim 64 only, as 16): NVRTC gave the one-launch kernel 134
// registers, and so 12 programs per SM instead of 16, which took 12-22% longer at 32k
// (docs/BENCHMARKS.md run 100). At 128, a second argument of 1 would already change ptxas'
// allocation of the block loop, so there the bound stays as it was.
#ifdef MIN_PROGRAMS
#define KVARN_BOUNDS __launch_bounds__(32, MIN_PROGRAMS)
#else
#define KVARN_BOUNDS __launch_bounds__(32)
#endif
extern "C" __global__ void KVARN_BOUNDS kvarn_split(
    const QT* __restrict__ qin, int stride_qb, int stride_qh,  // FUSED: the query [B, Hq, D]; else rotated, scaled
    int qk_scale_bits,                                         // FUSED: the rotated query's scale, float32 bits
    const u8* __restrict__ rec, int stride_rb, int stride_rh,    // records [blocks, Hkv, REC]
    const int* __restrict__ bt, int stride_btb, const int* __restrict__ nblk,
    const SideT* __restrict__ side_k, const SideT* __restrict__ side_v,  // slots [S, Hkv, G, D] (rotated)
    int stride_ss, int stride_sh, int stride_st,                          // in elements
    const int* __restrict__ side_slot, const int* __restrict__ side_len, int stride_side, int num_side,
    int slot_w,  // what a slot costs, in blocks
    float* __restrict__ ws_acc, float* __restrict__ ws_ml,
    QT* __restrict__ out, int stride_ob, int stride_oh, int inv_sqrt_d_bits, int* __restrict__ count) {  // FUSED only
  extern __shared__ __align__(16) u8 smem[];  // two record buffers
  const int lane = threadIdx.x, r = lane >> 2, j = lane & 3;
  const int b = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z, nsplit = gridDim.z;
  const int nb = nblk[b];
  // Slot si goes to split si % nsplit, which takes slot_w blocks fewer for it: split s starts
  // at s * per less slot_w for each slot of the splits before it (per covers the slots of any
  // one split, so no range runs backwards; ranges past nb are empty).
  if constexpr (!SLOTS) num_side = 0;  // the reduce kernel takes the slots
  int slots_before = 0, slots_mine = 0;
  for (int si = 0; si < num_side; ++si) {
    slots_before += si % nsplit < s;
    slots_mine += si % nsplit == s;
  }
  const int per = max((nb + num_side * slot_w + nsplit - 1) / nsplit, (num_side + nsplit - 1) / nsplit * slot_w);
  const int first = s * per - slot_w * slots_before;
  const int start = min(first, nb);
  const int end = min(first + per - slot_w * slots_mine, nb);
  const int* bt_row = bt + (long long)b * stride_btb;
  const u8* rec_h = rec + (long long)kvh * stride_rh;
  // 0x43004300 through a shuffle, so that the compiler keeps it in a register for pick()
  const u32 magic = __shfl_sync(FULL, 0x43004300u, 0);

  const u32 sbase = smem_addr(smem);
  // TICKETS: the splits without a slot (the last nsplit - lead) take blocks p and P + p (p their
  // rank among them) first; the rest, from 2 P on, go one or two at a time to whichever split
  // of the (row, KV head) asks next (a ticket from its counter `next`), the splits with slots
  // asking once they are done with them. So a split slowed by its slots or by its SM's share
  // of the memory system takes fewer blocks (at 32k the fixed ranges ended up to 14 us apart,
  // run 107).
  const int lead = min(num_side, nsplit), P = nsplit - lead, pool = 2 * P;
  int cur = TICKETS ? (s >= lead ? s - lead : nb) : start, nx = TICKETS && s >= lead ? s - lead + P : nb;
  int rec_nx = 0, ticket = 0;
  int* next = count + (long long)gridDim.x * gridDim.y + (long long)b * gridDim.y + kvh;
  // block cur on its way into buffer 0; with TICKETS, nx's record id read and a ticket taken
  // for the block after it
  auto first_blocks = [&]() {
    if (cur < (TICKETS ? nb : end)) copy_record(sbase, rec_h + (long long)bt_row[cur] * stride_rb, lane);
    cp_commit();
    if (TICKETS && nx < nb) {
      rec_nx = bt_row[nx];
      if (lane == 0) ticket = atomicAdd(next, 1);
    }
  };
  first_blocks();
  // the group's rotated query heads: with FUSED rotated here into buffer 1, which the block
  // loop first fills at its first step (after the __syncwarp below)
  const QT* qhead = qin + (long long)b * stride_qb + (long long)kvh * GQA * stride_qh;
  const float* qgroup;
  int qstride;
  if constexpr (FUSED) {
    float* qs = reinterpret_cast<float*>(smem + REC);
    rotate_query(qhead, stride_qh, __int_as_float(qk_scale_bits), qs);
    qgroup = qs;
    qstride = D;
  } else {
    qgroup = reinterpret_cast<const float*>(qhead);
    qstride = stride_qh;
  }
  // this split's slots, while the first record is on its way: they start the running state
  const SlotState st = SLOTS && s < num_side ? slot_state(qgroup, qstride, side_k, side_v, stride_ss, stride_sh, stride_st,
                                                 side_slot + (long long)b * stride_side, side_len + (long long)b * stride_side,
                                                 num_side, s, nsplit, kvh)
                                    : SlotState{};
  if (TICKETS && s < lead) {  // the first two blocks of a split with slots, asked for now
    int t = 0;
    if (lane == 0) t = atomicAdd(next, 2);
    cur = pool + __shfl_sync(FULL, t, 0);
    nx = cur + 1;
    first_blocks();
  }
  float m_run = st.m, l_run = st.l;
  float acc[NS][2];
#pragma unroll
  for (int mv = 0; mv < NS; ++mv) acc[mv][0] = st.acc[mv][0], acc[mv][1] = st.acc[mv][1];

  // B operand lanes: column r = head r / 2, its high (r even) or low (r odd) part, at the
  // channels of reduction indices 2j, 2j+1, 2j+8, 2j+9 of each slice (q = 0..3); with 2-bit
  // K codes the last two meet 128 + 4c and carry a quarter of the query
  const int qh = r >> 1;
  float qv[NS][4];
  {
    const float* qrow = qgroup + (long long)(qh < GQA ? qh : 0) * qstride;
#pragma unroll
    for (int sl = 0; sl < NS; ++sl)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int kk = (q & 1) + 2 * j + 8 * (q >> 1);
        const float w = (KB == 2 && q >= 2) ? 0.25f : 1.f;
        qv[sl][q] = qh < GQA ? qrow[16 * sl + kmap<KB>(kk)] * w : 0.f;
      }
  }
  // this lane's token rows in each 16-token tile (S^T rows r, r + 8) and their swap bits
  const int trow_a = kmap<VB>(r), trow_b = kmap<VB>(r + 8);
  const int ks_a = (trow_a / KSTEP) & 1, ks_b = (trow_b / KSTEP) & 1;
  const int vs_r = r & 1;  // swap bit of this lane's V channel rows ((D / 8) r + ...)
  if constexpr (FUSED) __syncwarp();  // every lane has read the query before buffer 1 is overwritten

  if constexpr (TICKETS) {
    // blocks dealt out as the splits ask: cur is being copied, nx (record rec_nx) is next, and
    // while nx < nb lane 0 holds a ticket for the one after it, taken a block ahead so that
    // neither the atomic's nor the table's latency is waited for
    for (int it = 0; cur < nb; ++it) {
      const int buf = it & 1;
      if (nx < nb) copy_record(sbase + (buf ^ 1) * REC, rec_h + (long long)rec_nx * stride_rb, lane);
      cp_commit();
      int nx2 = nb, rec_nx2 = 0;
      if (nx < nb) {
        nx2 = pool + __shfl_sync(FULL, ticket, 0);
        if (nx2 < nb) {
          rec_nx2 = bt_row[nx2];
          if (lane == 0) ticket = atomicAdd(next, 1);
        }
      }
      cp_wait<1>();
      __syncwarp();
      attend_block(smem + buf * REC, r, j, qv, magic, trow_a, trow_b, ks_a, ks_b, vs_r, m_run, l_run, acc);
      __syncwarp();  // every lane is done with this buffer before the next copy overwrites it
      cur = nx;
      nx = nx2;
      rec_nx = rec_nx2;
    }
  } else {
    for (int i = start; i < end; ++i) {
      const int cur = (i - start) & 1;
      if (i + 1 < end) copy_record(sbase + (cur ^ 1) * REC, rec_h + (long long)bt_row[i + 1] * stride_rb, lane);
      cp_commit();
      cp_wait<1>();
      __syncwarp();
      attend_block(smem + cur * REC, r, j, qv, magic, trow_a, trow_b, ks_a, ks_b, vs_r, m_run, l_run, acc);
      __syncwarp();  // every lane is done with this buffer before the next copy overwrites it
    }
  }
  cp_wait<0>();

  const long long part0 = ((long long)b * gridDim.y + kvh) * nsplit;
  write_partial(acc, m_run, head_sum(l_run), part0 + s, ws_acc, ws_ml);
  if constexpr (FUSED) {
    if (last_split(count + (long long)b * gridDim.y + kvh, next, nsplit))
      merge_out(part0, nsplit, ws_acc, ws_ml, out + (long long)b * stride_ob + (long long)kvh * GQA * stride_oh, stride_oh,
                __int_as_float(inv_sqrt_d_bits));
  }
}
