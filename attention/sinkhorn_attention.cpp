// Sparse Sinkhorn attention: block summaries, SortNet, Gumbel-Sinkhorn, block sorting and the
// block-sparse attention over [sorted ; local] blocks, plus the method. Derivation and variants:
// docs/sparse-sinkhorn.md.
#include "attention/sinkhorn_attention.h"

#include <algorithm>
#include <cmath>

#include "attention/block_sparse.h"
#include "autograd/cases.h"
#include "autograd/grad_mode.h"

namespace attnlab {
using namespace cases;

namespace {
using block_sparse::BlockMask;
using block_sparse::Entry;
using block_sparse::Layout;
using block_sparse::Source;
using Options = SparseSinkhornOptions;

constexpr const char* kOp = "sinkhorn_attention";

// The shapes of one call: N_B blocks of b positions over T (the last one short when b does not divide
// T), tp = N_B·b the padded length the sort works on, `rows` sorted blocks kept (N_B, or the SortCut
// budget).
struct Geometry {
  int64_t B, H, T, dh, b, nb, tp, rows;
  Geometry(const Tensor& q, const Options& o)
      : B(q.size(0)),
        H(q.size(1)),
        T(q.size(2)),
        dh(q.size(3)),
        b(o.block),
        nb((T + b - 1) / b),
        tp(nb * b),
        rows(o.sortcut > 0 ? std::min(o.sortcut, nb) : nb) {}
};

Tensor pad_time(const Tensor& x, int64_t tp) {
  if (x.size(2) == tp) return x;
  Shape s = x.shape();
  s[2] = tp - x.size(2);
  return concat({x, zeros(s, x.dtype())}, 2);
}

// x [B, h, T, d] as blocks [B, h, N_B, b, d] (zero-padded to tp).
Tensor as_blocks(const Tensor& x, const Geometry& g) {
  return pad_time(x, g.tp).reshape({x.size(0), x.size(1), g.nb, g.b, x.size(3)});
}

// 1 for real keys, 0 for padded ones: [B, 1, T, 1] in dtype dt.
Tensor key_valid(const AttentionMask& mask, const Geometry& g, DType dt) {
  if (!mask.key_padding.defined()) return ones({g.B, 1, g.T, 1}, dt);
  return logical_not(mask.key_padding).to(dt).reshape({g.B, 1, g.T, 1});
}

// Block summaries ψ_P [B, h, N_B, d] of x (padded keys already zero): the sum, or mean over real keys,
// of each block. Causal: of every position up to and including the block's first token (the prefix
// every query of the block may see: the exclusive prefix of block sums plus the first token).
Tensor summaries(const Tensor& x, const Tensor& valid, const Geometry& g, Options::Pooling pool, bool causal) {
  Tensor s = as_blocks(x, g).sum(3), n = as_blocks(valid, g).sum(3);
  if (causal) {
    Tensor before = empty({g.nb, g.nb}, x.dtype());
    dispatch_floating(x.dtype(), kOp, [&]<class T>() {
      T* p = before.data<T>();
      for (int64_t i = 0; i < g.nb; ++i)
        for (int64_t j = 0; j < g.nb; ++j) p[i * g.nb + j] = T(j < i);
    });
    s = matmul(before, s) + x.slice(2, 0, g.T, g.b);
    n = matmul(before, n) + valid.slice(2, 0, g.T, g.b);
  }
  return pool == Options::Pooling::mean ? s / maximum(n, ones_like(n)) : s;
}

// Blocks without a single real key take no part in the sort (neither row nor column), [B, 1, N_B, N_B].
Tensor empty_blocks(const Tensor& valid, const Geometry& g) {
  const std::vector<double> n = as_blocks(valid, g).sum(3).sum(3).to(DType::f64).contiguous().to_vector<double>();
  std::vector<double> out(size_t(g.B * g.nb * g.nb), 0.0);
  bool any = false;
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t i = 0; i < g.nb; ++i)
      for (int64_t j = 0; j < g.nb; ++j) {
        const bool e = n[size_t(b * g.nb + i)] == 0 || n[size_t(b * g.nb + j)] == 0;
        out[size_t((b * g.nb + i) * g.nb + j)] = e;
        any = any || e;
      }
  return any ? from_vector(out, {g.B, 1, g.nb, g.nb}, DType::b8) : Tensor();
}

// The layout over the key axis [sorted slots (rows·b) ; original keys (T)]: query block i reads sorted
// block i (SortCut: sorted blocks 0..rows-1) and, with `local`, its own block (causally masked in a
// decoder: the engine aligns query i with key i + rows·b, its own position in the second half).
Layout sinkhorn_layout(const Geometry& g, const Options& o, bool causal) {
  std::vector<int64_t> kb = block_sparse::even_bounds(g.rows * g.b, g.b);
  for (int64_t x : block_sparse::even_bounds(g.T, g.b))
    if (x > 0) kb.push_back(g.rows * g.b + x);
  std::vector<std::vector<Entry>> lists(size_t(g.nb));
  for (int64_t i = 0; i < g.nb; ++i) {
    if (o.sortcut > 0)
      for (int64_t r = 0; r < g.rows; ++r) lists[size_t(i)].push_back({r, Source::keys, BlockMask::full});
    else lists[size_t(i)].push_back({i, Source::keys, BlockMask::full});
    if (o.local) lists[size_t(i)].push_back({g.rows + i, Source::keys, causal ? BlockMask::causal : BlockMask::full});
  }
  return Layout::make(block_sparse::even_bounds(g.T, g.b), std::move(kb), lists, kOp);
}

// Key padding of the folded call, b8 [B·H, rows·b + T]: a sorted slot is padded when no real key has
// weight in it (Σ_j S_ij valid_j[p] == 0), an original key as the call's mask says.
Tensor folded_padding(const Tensor& s_rows, const Tensor& valid, const AttentionMask& mask, const Geometry& g) {
  NoGradGuard ng;
  const Tensor w = matmul(s_rows.detach(), as_blocks(valid, g).reshape({g.B, 1, g.nb, g.b}));  // [B, H, rows, b]
  const std::vector<double> wv = w.to(DType::f64).contiguous().to_vector<double>();
  std::vector<uint8_t> pad = mask.key_padding.defined() ? mask.key_padding.contiguous().to_vector<uint8_t>()
                                                        : std::vector<uint8_t>(size_t(g.B * g.T), 0);
  const int64_t ns = g.rows * g.b, tk = ns + g.T;
  std::vector<double> out(size_t(g.B * g.H * tk));
  bool any = mask.key_padding.defined();
  for (int64_t bh = 0; bh < g.B * g.H; ++bh) {
    for (int64_t x = 0; x < ns; ++x) {
      out[size_t(bh * tk + x)] = wv[size_t(bh * ns + x)] == 0;
      any = any || wv[size_t(bh * ns + x)] == 0;
    }
    for (int64_t t = 0; t < g.T; ++t) out[size_t(bh * tk + ns + t)] = pad[size_t((bh / g.H) * g.T + t)];
  }
  return any ? from_vector(out, {g.B * g.H, tk}, DType::b8) : Tensor();
}

void check_call(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, const SortNet& net,
                const Options& o) {
  check_qkv(kOp, q, k, v, mask);
  if (q.size(2) != k.size(2))
    fail<ShapeError>(kOp, "self-attention only: query and key blocks are paired, but q ", describe(q), " and k ",
                     describe(k), " differ in length");
  if (o.block <= 0) fail<ValueError>(kOp, "block must be positive, got ", o.block);
  const int64_t nb = (q.size(2) + o.block - 1) / o.block;
  if (!net.weight.defined() || net.weight.dim() != 4 || net.weight.size(1) != q.size(1) ||
      net.weight.size(2) != q.size(3) * (o.sort_on_queries ? 2 : 1))
    fail<ShapeError>(kOp, "SortNet weight must be [1, H, d_in, max_blocks] for q ", describe(q), ", got ",
                     describe(net.weight));
  if (nb > net.weight.size(3))
    fail<ValueError>(kOp, "sequence of ", q.size(2), " positions has ", nb, " blocks of ", o.block,
                     " but the SortNet sorts at most max_blocks = ", net.weight.size(3));
  if (mask.causal && o.sortcut > 0)
    fail<ValueError>(kOp, "SortCut (sortcut = ", o.sortcut, ") is for encoders: every query would see future blocks");
}

// The SortNet logits R [B, H, N_B, N_B]: ReLU(ψ W + b) (or linear), the first N_B of max_blocks columns.
Tensor sort_logits(const Tensor& q, const Tensor& k, const Tensor& valid, const SortNet& net, const Options& o,
                   const Geometry& g, bool causal) {
  Tensor in = summaries(k, valid, g, o.pooling, causal);
  if (o.sort_on_queries) in = concat({summaries(q, valid, g, o.pooling, causal), in}, -1);
  Tensor r = matmul(in, net.weight) + net.bias;
  if (o.relu) r = relu(r);
  return r.slice(-1, 0, g.nb);
}

const OpDef kSinkhornAttention(
    kOp,
    "block_sparse_attention's on the [sorted ; local] layout (dQ, dK^S, dV^S, dK, dV), then K^S = S·B(K): dS = "
    "dK^S B(K)ᵀ + dV^S B(V)ᵀ, dB(K) += Sᵀ dK^S",
    {{"T 7 block 3 (short last block), sum pooling, Gumbel noise",
      [](Generator& g) {
        return Inputs{rn(g, {1, 2, 7, 2}), rn(g, {1, 2, 7, 2}), rn(g, {1, 2, 7, 2}), rn(g, {1, 2, 2, 4}),
                      rn(g, {1, 2, 1, 4})};
      },
      [](const Inputs& in) {
        Options o;
        o.block = 3;
        o.iterations = 3;
        o.scale = 0.7;
        Generator noise(11);
        return sparse_sinkhorn_attention(in[0], in[1], in[2], {}, {in[3], in[4]}, o, &noise, true);
      }},
     {"causal, T 8 block 3, mean pooling on queries and keys, key padding",
      [](Generator& g) {
        return Inputs{
            rn(g, {2, 1, 8, 2}), rn(g, {2, 1, 8, 2}),
            rn(g, {2, 1, 8, 2}), rn(g, {1, 1, 4, 3}),
            rn(g, {1, 1, 1, 3}), from_vector({0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 1}, {2, 8}, DType::b8)};
      },
      [](const Inputs& in) {
        Options o;
        o.block = 3;
        o.iterations = 2;
        o.pooling = Options::Pooling::mean;
        o.sort_on_queries = true;
        Generator noise(12);
        return sparse_sinkhorn_attention(in[0], in[1], in[2], {true, in[5]}, {in[3], in[4]}, o, &noise, true);
      }},
     {"SortCut 2 of 4 blocks, no local block, linear SortNet, T 8 block 2",
      [](Generator& g) {
        return Inputs{rn(g, {1, 1, 8, 2}), rn(g, {1, 1, 8, 2}), rn(g, {1, 1, 8, 2}), rn(g, {1, 1, 2, 5}),
                      rn(g, {1, 1, 1, 5})};
      },
      [](const Inputs& in) {
        Options o;
        o.block = 2;
        o.iterations = 4;
        o.sortcut = 2;
        o.local = false;
        o.relu = false;
        return sparse_sinkhorn_attention(in[0], in[1], in[2], {}, {in[3], in[4]}, o, nullptr, false);
      }}});

}  // namespace

Tensor sparse_sinkhorn_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                 const SortNet& net, const SparseSinkhornOptions& o, Generator* gen, bool training,
                                 SparseSinkhornTrace* trace, bool trace_attn) {
  check_call(q, k, v, mask, net, o);
  const Geometry g(q, o);
  const bool causal = mask.causal;
  const Tensor valid = key_valid(mask, g, q.dtype());
  // Padded keys and values carry nothing into summaries or sorted blocks.
  const Tensor kz = mask.key_padding.defined() ? k * valid : k, vz = mask.key_padding.defined() ? v * valid : v;

  // (1) SortNet, (2) Gumbel-Sinkhorn: Z⁰ = (R + G) / τ, S = Sinkhorn_T(Z⁰).
  Tensor z = sort_logits(q, kz, valid, net, o, g, causal);
  if (training && o.noise && gen) z = z + gumbel(z.shape(), z.dtype(), gen);
  z = z / o.temperature;
  const Tensor blocked = empty_blocks(valid, g);
  const SinkhornBalance sb{o.iterations, causal};
  Tensor s =
      o.impl == AttentionImpl::fused ? sinkhorn_balance(z, blocked, sb) : sinkhorn_balance_composite(z, blocked, sb);
  if (!training && o.hard) s = hard_permutation(s);

  // (3) Sort the key and value blocks: K^S = S · B(K), B(K) viewed as [N_B, b·dh] per head.
  const Tensor s_rows = g.rows == g.nb ? s : s.slice(2, 0, g.rows);
  auto sorted = [&](const Tensor& x) {
    return matmul(s_rows, as_blocks(x, g).reshape({g.B, g.H, g.nb, g.b * g.dh}))
        .reshape({g.B, g.H, g.rows * g.b, g.dh});
  };
  const int64_t tk = g.rows * g.b + g.T, BH = g.B * g.H;
  const Tensor kc = concat({sorted(kz), k}, 2).reshape({BH, 1, tk, g.dh});
  const Tensor vc = concat({sorted(vz), v}, 2).reshape({BH, 1, tk, g.dh});
  const Tensor qf = q.reshape({BH, 1, g.T, g.dh});

  // (4) Attention of each query block over its sorted and local blocks.
  const Layout layout = sinkhorn_layout(g, o, causal);
  const Tensor pad = folded_padding(s_rows, valid, mask, g);
  auto composite = [&](const Tensor& cq, const Tensor& ck, const Tensor& cv, Tensor* w) {
    const Tensor dense = block_sparse::dense_mask(layout);
    return masked_softmax_attention_composite(
        cq, ck, cv, pad.defined() ? blocked_by_either(dense, pad.reshape({BH, 1, 1, tk})) : dense, o.scale, w);
  };
  Tensor out = o.impl == AttentionImpl::fused
                   ? block_sparse_attention(kSinkhornAttention, qf, kc, vc, layout, {false, pad}, o.scale)
                   : composite(qf, kc, vc, nullptr);
  if (trace) {
    trace->sort = s.detach();
    if (trace_attn) {  // value weights over original positions: local part + sorted part mapped back through S
      NoGradGuard ng;
      Tensor w;
      composite(qf.detach(), kc.detach(), vc.detach(), &w);
      w = w.reshape({BH, g.T, tk});
      const Tensor ws = w.slice(-1, 0, g.rows * g.b).reshape({BH, g.T, g.rows, g.b}).permute({0, 1, 3, 2});
      const Tensor back = matmul(ws, s_rows.detach().reshape({BH, 1, g.rows, g.nb})).permute({0, 1, 3, 2});
      trace->attn = (back.reshape({BH, g.T, g.tp}).slice(-1, 0, g.T) + w.slice(-1, g.rows * g.b, tk))
                        .reshape({g.B, g.H, g.T, g.T});
    }
  }
  return out.reshape({g.B, g.H, g.T, g.dh});
}

// ---- the method --------------------------------------------------------------------------------

SparseSinkhornAttention::SparseSinkhornAttention(const SparseSinkhornOptions& opts, const AttentionContext& ctx)
    : opts_(opts), gen_(ctx.gen) {
  const int64_t d_in = ctx.head_dim * (opts.sort_on_queries ? 2 : 1);
  Generator fallback(0);
  Generator& init_gen = ctx.gen ? *ctx.gen : fallback;
  weight_ = &register_parameter(
      "sort_weight", init::uniform({1, ctx.n_heads, d_in, opts.max_blocks},
                                   1.0 / std::sqrt(double(std::max<int64_t>(d_in, 1))), ctx.dtype, init_gen));
  bias_ = &register_parameter("sort_bias", zeros({1, ctx.n_heads, 1, opts.max_blocks}, ctx.dtype));
}

Tensor SparseSinkhornAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  ModuleScope scope(path());
  SparseSinkhornTrace trace;
  Tensor out =
      sparse_sinkhorn_attention(q, k, v, mask, sort_net(), opts_, gen_.get(), training(), &trace, record_internals);
  // sort_max per head: the mean over batches and non-empty rows of the row's largest weight.
  const int64_t B = trace.sort.size(0), H = trace.sort.size(1), n = trace.sort.size(2);
  const std::vector<double> sv = trace.sort.to(DType::f64).contiguous().to_vector<double>();
  sort_max_.assign(size_t(H), 0.0);
  for (int64_t h = 0; h < H; ++h) {
    double acc = 0, rows = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < n; ++i) {
        const double* r = sv.data() + ((b * H + h) * n + i) * n;
        const double mx = *std::max_element(r, r + n);
        if (mx > 0) acc += mx, rows += 1;
      }
    sort_max_[size_t(h)] = rows > 0 ? acc / rows : 0.0;
  }
  if (record_internals) {
    internals["sort"] = trace.sort;
    internals["order"] = argmax(trace.sort, -1).to(q.dtype());
    internals["attn"] = trace.attn;
  }
  return out;
}

AttentionBuilder parse_sinkhorn_attention(ConfigSection& cfg) {
  SparseSinkhornOptions o;
  o.block = cfg.integer("block", o.block, 1, int64_t(1) << 20);
  o.max_blocks = cfg.integer("max_blocks", o.max_blocks, 1, 1 << 16);
  o.iterations = cfg.integer("iterations", o.iterations, 1, 1000);
  o.temperature = cfg.number("temperature", o.temperature, NumberRange::above(0));
  o.noise = cfg.boolean("noise", o.noise);
  o.pooling = cfg.choice("pooling", "sum", {"sum", "mean"}) == "mean" ? SparseSinkhornOptions::Pooling::mean
                                                                      : SparseSinkhornOptions::Pooling::sum;
  o.sort_on_queries = cfg.choice("sort_input", "keys", {"keys", "queries_keys"}) == "queries_keys";
  o.relu = cfg.choice("sortnet", "relu", {"relu", "linear"}) == "relu";
  o.local = cfg.boolean("local", o.local);
  o.sortcut = cfg.integer("sortcut", 0, 0, 1 << 16);
  o.hard = cfg.boolean("hard", o.hard);
  const std::optional<double> scale = parse_attention_scale(cfg);
  o.impl = parse_attention_impl(cfg);
  return [=](const AttentionContext& ctx) {
    SparseSinkhornOptions oc = o;
    oc.scale = attention_scale(scale, ctx);
    return std::make_shared<SparseSinkhornAttention>(oc, ctx);
  };
}

}  // namespace attnlab
