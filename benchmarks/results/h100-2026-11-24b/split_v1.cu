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
//    8 columns are (q_rot * k_scale) of head h, split into its bf16 high (column 2h) and low
//    (2h + 1) parts: float32-level accuracy for the price of the padding (GQA <= 4);
//  * out^T [16 ch, 8] = V codes^T [16 ch, 16 tokens] x P' [16 tokens, 8], P' = p * v_scale
//    split the same way; the records hold V channel-major, so both code operands are A
//    operands read straight from 32-bit words;
//  * a code pair becomes a bf16 pair in two instructions: ((w >> s) & mask) | 0x43004300
//    is 128 + c in each half (the 128s are subtracted through per-column sums), so the
//    reduction index of each MMA visits the channels (tokens) in the order the words unpack
//    them; the query columns, the token rows of K and the P' rows follow that order (kmap);
//  * P' moves from the scores' accumulator layout to the B operand layout with two
//    movmatrix transposes per 16 tokens instead of a round trip through shared memory;
//  * each record (codes, scales, zeros) is copied to shared memory with cp.async while the
//    previous block is computed (two buffers per warp).
// Output: the unnormalized partial (acc [GP, D] in the rotated domain, running max and sum
// in base 2) that triton_decode._reduce_kernel merges, exactly as the Triton split kernels
// write it.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

struct __align__(16) Words4 { u32 w[4]; };

#define NEG_BIG (-1.0e30f)
#define FULL 0xffffffffu

constexpr int NS = D / 16;            // 16-channel slices of K, 16-channel tiles of V^T
constexpr int KW = D * KB / 32;       // 32-bit words per K token row
constexpr int VW = G * VB / 32;       // 32-bit words per V channel row
constexpr int TM = G / 16;            // 16-token tiles per block
static_assert(G == 128 && (D == 64 || D == 128), "block of 128 tokens, head_dim 64 or 128");
static_assert((KB == 2 || KB == 4) && (VB == 2 || VB == 4), "2- or 4-bit codes");
static_assert(GQA >= 1 && GQA <= 4, "up to 4 query heads per KV head (8 MMA columns)");
static_assert(REC % 16 == 0, "records are copied in 16-byte pieces");

__device__ __forceinline__ float bf16_round(float x) {
  u16 h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
  return __uint_as_float(((u32)h) << 16);
}

// two floats that bf16 represents exactly -> a bf16 pair, `lower` in the low half
__device__ __forceinline__ u32 pack2(float lower, float upper) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(upper), "f"(lower));
  return r;
}

__device__ __forceinline__ float f16_to_f32(u16 v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
  return f;
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

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// element of a 16-wide MMA reduction slice that index k (0..15) reads, in the order
// pair_of unpacks a slice's words (see afrag)
template <int BITS>
__device__ __forceinline__ int kmap(int k) {
  const int jj = (k & 7) >> 1, e = k & 1, hw = k >> 3;
  return BITS == 2 ? 2 * jj + hw + 8 * e : 8 * hw + jj + 4 * e;
}

// codes at bit s and s + 16 of w as the bf16 pair (128 + c_lo, 128 + c_hi)
template <int BITS>
__device__ __forceinline__ u32 pair_of(u32 w, int s) {
  return ((w >> s) & (((1u << BITS) - 1u) * 0x10001u)) | 0x43004300u;
}

// A operand of one MMA (rows = the lane's rows A and B, 16 reduction indices of slice sl)
// from the rows' 32-bit words; lane j takes the pairs of indices (2j, 2j+1), (2j+8, 2j+9)
template <int BITS, int NW>
__device__ __forceinline__ void afrag(const u32 (&wa)[NW], const u32 (&wb)[NW], int sl, int j, u32 (&a)[4]) {
  if (BITS == 2) {
    a[0] = pair_of<2>(wa[sl], 4 * j);
    a[1] = pair_of<2>(wb[sl], 4 * j);
    a[2] = pair_of<2>(wa[sl], 4 * j + 2);
    a[3] = pair_of<2>(wb[sl], 4 * j + 2);
  } else {
    a[0] = pair_of<4>(wa[2 * sl], 4 * j);
    a[1] = pair_of<4>(wb[2 * sl], 4 * j);
    a[2] = pair_of<4>(wa[2 * sl + 1], 4 * j);
    a[3] = pair_of<4>(wb[2 * sl + 1], 4 * j);
  }
}

__device__ __forceinline__ void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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

// sum over the 4 lanes of an MMA column (lanes 4n .. 4n + 3: the Q' operand's channel parts)
__device__ __forceinline__ float column_sum(float x) {
  x += __shfl_xor_sync(FULL, x, 1);
  return x + __shfl_xor_sync(FULL, x, 2);
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

template <int NW>
__device__ __forceinline__ void load_row(const u8* p, u32 (&w)[NW]) {
#pragma unroll
  for (int u = 0; u < NW / 4; ++u) {
    const Words4 x = reinterpret_cast<const Words4*>(p)[u];
#pragma unroll
    for (int k = 0; k < 4; ++k) w[4 * u + k] = x.w[k];
  }
}

extern "C" __global__ void __launch_bounds__(32) kvarn_split(
    const float* __restrict__ qr, int stride_qb, int stride_qh,  // rotated, scaled query [B, Hq, D] float32
    const u8* __restrict__ rec, int stride_rb, int stride_rh,    // records [blocks, Hkv, REC]
    const int* __restrict__ bt, int stride_btb, const int* __restrict__ nblk,
    float* __restrict__ ws_acc, float* __restrict__ ws_ml) {
  extern __shared__ __align__(16) u8 smem[];  // two record buffers
  const int lane = threadIdx.x, r = lane >> 2, j = lane & 3;
  const int b = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z, nsplit = gridDim.z;
  const int nb = nblk[b];
  const int per = (nb + nsplit - 1) / nsplit;
  const int start = s * per;
  const int end = min(start + per, nb);
  const int* bt_row = bt + (long long)b * stride_btb;
  const u8* rec_h = rec + (long long)kvh * stride_rh;

  // B operand lanes: column r = head r / 2, its high (r even) or low (r odd) part, at the
  // channels of reduction indices 2j, 2j+1, 2j+8, 2j+9 of each slice
  const int qh = r >> 1;
  float qv[NS][4];
  {
    const float* qrow = qr + (long long)b * stride_qb + (long long)(kvh * GQA + (qh < GQA ? qh : 0)) * stride_qh;
#pragma unroll
    for (int sl = 0; sl < NS; ++sl)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int kk = (q & 1) + 2 * j + 8 * (q >> 1);
        qv[sl][q] = qh < GQA ? qrow[16 * sl + kmap<KB>(kk)] : 0.f;
      }
  }
  // this lane's token rows in each 16-token tile (S^T rows r, r + 8) and V^T channel rows
  const int trow_a = kmap<VB>(r), trow_b = kmap<VB>(r + 8);

  float m_run = NEG_BIG, l_run = 0.f;
  float acc[NS][2];
#pragma unroll
  for (int mv = 0; mv < NS; ++mv) acc[mv][0] = acc[mv][1] = 0.f;

  const u32 sbase = smem_addr(smem);
  if (start < end) {
    const u8* src = rec_h + (long long)bt_row[start] * stride_rb;
    for (int c = lane; c < REC / 16; c += 32) cp16(sbase + 16 * c, src + 16 * c);
  }
  cp_commit();

  for (int i = start; i < end; ++i) {
    const int cur = (i - start) & 1;
    if (i + 1 < end) {
      const u8* src = rec_h + (long long)bt_row[i + 1] * stride_rb;
      const u32 dst = sbase + (cur ^ 1) * REC;
      for (int c = lane; c < REC / 16; c += 32) cp16(dst + 16 * c, src + 16 * c);
    }
    cp_commit();
    cp_wait<1>();
    __syncwarp();
    const u8* R = smem + cur * REC;
    const float* mult = reinterpret_cast<const float*>(R + OFF_K_SCALE_MULT);
    const float mks = mult[0], mkz = mult[1], mkts = mult[2], mvs = mult[3], mvz = mult[4], mvcs = mult[5];
    const u16* kz16 = reinterpret_cast<const u16*>(R + OFF_K_ZERO);
    const u16* vz16 = reinterpret_cast<const u16*>(R + OFF_V_ZERO);

    // Q' = q_rot * k_scale for this block, as this lane's B operand part (hi or lo)
    u32 bq[NS][2];
    float colpart = 0.f, qkzpart = 0.f;
#pragma unroll
    for (int sl = 0; sl < NS; ++sl) {
      float v[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int ch = 16 * sl + kmap<KB>((q & 1) + 2 * j + 8 * (q >> 1));
        const float a = qv[sl][q] * (e4m3(R[OFF_K_SCALE + ch]) * mks);
        const float hi = bf16_round(a);
        const float lo = bf16_round(a - hi);
        v[q] = (r & 1) ? lo : hi;
        colpart += v[q];
        qkzpart += qv[sl][q] * (f16_to_f32(kz16[ch]) * mkz);
      }
      bq[sl][0] = pack2(v[0], v[1]);
      bq[sl][1] = pack2(v[2], v[3]);
    }
    colpart = column_sum(colpart);
    qkzpart = column_sum(qkzpart);
    // the score lanes hold head j: column 2j lives in lanes 8j.., column 2j + 1 in 8j + 4..
    const float kcorr = __shfl_sync(FULL, qkzpart, 8 * j) -
                        128.f * (__shfl_sync(FULL, colpart, 8 * j) + __shfl_sync(FULL, colpart, 8 * j + 4));

    // scores^T, 16 tokens per MMA row tile: this lane holds head j at two tokens per tile
    float sc[TM][2];
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      u32 wa[KW], wb[KW];
      load_row<KW>(R + OFF_K_CODES + (16 * m + trow_a) * (D * KB / 8), wa);
      load_row<KW>(R + OFF_K_CODES + (16 * m + trow_b) * (D * KB / 8), wb);
      float acc_s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int sl = 0; sl < NS; ++sl) {
        u32 a[4];
        afrag<KB, KW>(wa, wb, sl, j, a);
        mma(acc_s, a, bq[sl][0], bq[sl][1]);
      }
      sc[m][0] = (acc_s[0] + acc_s[1] + kcorr) * (e4m3(R[OFF_K_TOKEN_SCALE + 16 * m + trow_a]) * mkts);
      sc[m][1] = (acc_s[2] + acc_s[3] + kcorr) * (e4m3(R[OFF_K_TOKEN_SCALE + 16 * m + trow_b]) * mkts);
    }
    float bmax = NEG_BIG;
#pragma unroll
    for (int m = 0; m < TM; ++m) bmax = fmaxf(bmax, fmaxf(sc[m][0], sc[m][1]));
    const float m_new = fmaxf(m_run, head_max(bmax));
    const float alpha = ex2(m_run - m_new);
    m_run = m_new;

    // P' = p * v_scale (hi, lo) per token, moved to the B operand layout of the V MMA
    u32 pb[TM][2];
    float lsum = 0.f, psum = 0.f, pz = 0.f;
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      u32 pk[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = 16 * m + (e ? trow_b : trow_a);
        const float p = ex2(sc[m][e] - m_new);
        lsum += p;
        const float pv = p * (e4m3(R[OFF_V_SCALE + t]) * mvs);
        const float hi = bf16_round(pv);
        const float lo = bf16_round(pv - hi);
        psum += hi + lo;
        pz += p * (f16_to_f32(vz16[t]) * mvz);
        pk[e] = pack2(hi, lo);
      }
      pb[m][0] = trans8(pk[0]);
      pb[m][1] = trans8(pk[1]);
    }
    l_run = l_run * alpha + lsum;
    const float vcorr = head_sum(pz - 128.f * psum);

    // out^T for channels ca, ca + 1 of each tile: this lane's rows r and r + 8
#pragma unroll
    for (int mv = 0; mv < NS; ++mv) {
      const int ca = (D / 8) * r + 2 * mv;
      u32 wa[VW], wb[VW];
      load_row<VW>(R + OFF_V_CODES + ca * (G * VB / 8), wa);
      load_row<VW>(R + OFF_V_CODES + (ca + 1) * (G * VB / 8), wb);
      float o[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int sl = 0; sl < TM; ++sl) {
        u32 a[4];
        afrag<VB, VW>(wa, wb, sl, j, a);
        mma(o, a, pb[sl][0], pb[sl][1]);
      }
      float vca, vcb;
      e4m3x2(*reinterpret_cast<const u16*>(R + OFF_V_CHANNEL_SCALE + ca), vca, vcb);
      acc[mv][0] = acc[mv][0] * alpha + (o[0] + o[1] + vcorr) * (vca * mvcs);
      acc[mv][1] = acc[mv][1] * alpha + (o[2] + o[3] + vcorr) * (vcb * mvcs);
    }
    __syncwarp();  // every lane is done with this buffer before the next copy overwrites it
  }
  cp_wait<0>();

  l_run = head_sum(l_run);
  const long long part = ((long long)b * gridDim.y + kvh) * nsplit + s;
  float* wacc = ws_acc + part * GP * D;
  float* wml = ws_ml + part * 2 * GP;
  const bool real = j < GQA;
#pragma unroll
  for (int mv = 0; mv < NS; ++mv) {
    const int ca = (D / 8) * r + 2 * mv;
    wacc[j * D + ca] = real ? acc[mv][0] : 0.f;
    wacc[j * D + ca + 1] = real ? acc[mv][1] : 0.f;
  }
  if (r == 0) {
    wml[j] = real ? m_run : NEG_BIG;
    wml[GP + j] = real ? l_run : 0.f;
  }
  // rows 4 .. GP - 1: empty partials (the reduce kernel reads GP rows)
  for (int idx = lane; idx < (GP - 4) * D; idx += 32) wacc[4 * D + idx] = 0.f;
  for (int g = 4 + lane; g < GP; g += 32) {
    wml[g] = NEG_BIG;
    wml[GP + g] = 0.f;
  }
}
