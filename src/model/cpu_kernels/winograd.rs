//! Winograd's F(2×2, 3×3) for the CPU backend's 3×3 stride-1 convolutions.
//!
//! Why: DC-AE's ResBlocks (3×3, 256–512 channels at 64²–128² for a 256² image) take about 80 %
//! of its CPU time, and their GEMMs already run near the cores' peak. What is left is to do
//! fewer multiplications. F(2×2, 3×3) computes each 2×2 output tile from a 4×4 input tile with
//! 16 products per channel pair instead of 36, 2.25× fewer; its transforms only add, subtract
//! and halve, so the rounding error stays within about 2× that of the direct convolution
//! (F(4×4, 3×3) would save 4×, at about 30× the error: 1.5e-5 relative per layer against 5e-7).
//!
//! How (Lavin & Gray, 2015): with `U = G g Gᵀ` (weights, once) and `V = Bᵀ d B` (each input
//! tile), each of the 16 positions of the 4×4 transformed tile is an ordinary matrix product
//! `M[p] = U[p] · V[p]` over channels, `[c_out × c_in] · [c_in × tiles]`; the output tile is
//! `Aᵀ M A`. Tiles are taken a block of tile rows at a time so the transformed buffers stay
//! bounded; each block transforms its input (threads over channels), runs the 16 GEMMs
//! (threads over positions) and transforms back (threads over output channels).

use std::cell::RefCell;

use rayon::prelude::*;

use super::{matmul, OutPtr};
use crate::model::act::Act;

/// Positions in a transformed tile (4×4).
const POS: usize = 16;
/// Upper bound on the transformed input and product of one block, in bytes.
const BLOCK_BYTES: usize = 32 << 20;

/// `[c_out, c_in, 3, 3]` weights as `U = G g Gᵀ`, `[16, c_out, c_in]` (position-major, so each
/// position's matrix is one row-major GEMM operand). Computed in f64, rounded once.
pub fn weights(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    assert_eq!(weight.len(), c_out * c_in * 9, "weight length");
    // G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]], applied to three values.
    let g = |a: f64, b: f64, c: f64| [a, (a + b + c) / 2.0, (a - b + c) / 2.0, c];
    let mut u = vec![0.0f32; POS * c_out * c_in];
    for o in 0..c_out {
        for i in 0..c_in {
            let k = &weight[(o * c_in + i) * 9..][..9];
            let k: [f64; 9] = std::array::from_fn(|j| k[j] as f64);
            // Columns first (G g), then rows ((G g) Gᵀ).
            let cols: [[f64; 4]; 3] = std::array::from_fn(|c| g(k[c], k[3 + c], k[6 + c]));
            for r in 0..4 {
                let row = g(cols[0][r], cols[1][r], cols[2][r]);
                for (c, v) in row.into_iter().enumerate() {
                    u[((r * 4 + c) * c_out + o) * c_in + i] = v as f32;
                }
            }
        }
    }
    u
}

/// `act(conv3x3(x) + bias)`, stride 1, padding 1, NCHW f32; `u` from [`weights`]. Tiles go
/// `block_rows` tile rows at a time, or with `None` as many as keep a block's buffers within
/// `BLOCK_BYTES` (at least one row).
#[allow(clippy::too_many_arguments)]
pub fn conv3x3(
    x: &[f32],
    [batch, c_in, h, w]: [usize; 4],
    u: &[f32],
    c_out: usize,
    bias: Option<&[f32]>,
    act: Option<Act>,
    block_rows: Option<usize>,
) -> Vec<f32> {
    assert_eq!(x.len(), batch * c_in * h * w, "input length");
    assert_eq!(u.len(), POS * c_out * c_in, "transformed weight length");
    let (tiles_y, tiles_x) = (h.div_ceil(2), w.div_ceil(2));
    let rows_per_block = block_rows.unwrap_or(BLOCK_BYTES / (POS * (c_in + c_out) * 4) / tiles_x.max(1)).clamp(1, tiles_y.max(1));
    let block = POS * rows_per_block * tiles_x;
    let mut out = vec![0.0f32; batch * c_out * h * w];
    with_scratch(block * c_in, block * c_out, |v, m| {
        for b in 0..batch {
            let x = &x[b * c_in * h * w..][..c_in * h * w];
            let out = &mut out[b * c_out * h * w..][..c_out * h * w];
            for ty0 in (0..tiles_y).step_by(rows_per_block) {
                let ty1 = (ty0 + rows_per_block).min(tiles_y);
                let tiles = (ty1 - ty0) * tiles_x;
                transform_input(x, [c_in, h, w], ty0..ty1, &mut v[..POS * c_in * tiles]);
                let (vp, mp) = (OutPtr(v.as_mut_ptr()), OutPtr(m.as_mut_ptr()));
                (0..POS).into_par_iter().for_each(|p| {
                    let (vp, mp) = (vp, mp);
                    // SAFETY: position p reads its c_in × tiles slice of `v` and writes its own
                    // c_out × tiles slice of `m`; both buffers hold POS such slices.
                    unsafe {
                        matmul(
                            [c_out, tiles, c_in],
                            mp.0.add(p * c_out * tiles),
                            [tiles, 1],
                            false,
                            u.as_ptr().add(p * c_out * c_in),
                            [c_in, 1],
                            vp.0.add(p * c_in * tiles),
                            [tiles, 1],
                            gemm::Parallelism::None,
                        );
                    }
                });
                transform_output(&m[..POS * c_out * tiles], [c_out, h, w], ty0..ty1, bias, act, out);
            }
        }
    });
    out
}

thread_local! {
    /// The transformed input and the products, kept between calls: allocated afresh (up to
    /// `BLOCK_BYTES` each time) they cost a page fault per 4 KiB on every call; kept, the
    /// f32c32 decode at 256² went from 2.24 to 1.92 s.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = RefCell::default();
}

/// `f(v, m)` on zeroed-or-reused buffers of at least `v_len` and `m_len` floats (contents
/// unspecified: every element read is written first).
fn with_scratch<R>(v_len: usize, m_len: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    let run = |(v, m): &mut (Vec<f32>, Vec<f32>)| {
        if v.len() < v_len {
            *v = vec![0.0; v_len];
        }
        if m.len() < m_len {
            *m = vec![0.0; m_len];
        }
        f(&mut v[..v_len], &mut m[..m_len])
    };
    // A thread that is inside a call already (rayon may run other work while it waits) gets
    // buffers of its own.
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut pair) => run(&mut pair),
        Err(_) => run(&mut Default::default()),
    })
}

/// `V = Bᵀ d B` for every 4×4 input tile of tile rows `rows`, into `v` as `[16, c_in, tiles]`.
/// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
///
/// Tile `tx` spans padded columns `2tx .. 2tx + 4`: with the padded rows split into even and
/// odd columns (`e`, `o`), its four columns are `e[tx], o[tx], e[tx + 1], o[tx + 1]`, so every
/// step below is an element-wise operation on whole rows of tiles (vectorized).
fn transform_input(x: &[f32], [c_in, h, w]: [usize; 3], rows: std::ops::Range<usize>, v: &mut [f32]) {
    let tiles_x = w.div_ceil(2);
    let tiles = rows.len() * tiles_x;
    let n = tiles_x + 1;
    let vp = OutPtr(v.as_mut_ptr());
    (0..c_in).into_par_iter().for_each(|c| {
        let vp = vp;
        let plane = &x[c * h * w..][..h * w];
        let row = || vec![0.0f32; n];
        // Four padded input rows, then Bᵀ d, each as even and odd columns.
        let (mut de, mut d_o) = ([row(), row(), row(), row()], [row(), row(), row(), row()]);
        let (mut be, mut bo) = ([row(), row(), row(), row()], [row(), row(), row(), row()]);
        for (row_in_block, ty) in rows.clone().enumerate() {
            for r in 0..4 {
                // Input row 2·ty + r - 1 (the padding row above the image for ty = r = 0).
                // Padded column q is input column q - 1: odd q hold the even inputs, even q
                // the odd ones after the left padding; past the right edge stays zero.
                de[r].fill(0.0);
                d_o[r].fill(0.0);
                if let Some(y) = (2 * ty + r).checked_sub(1).filter(|&y| y < h) {
                    let src = &plane[y * w..][..w];
                    let pairs = src.chunks_exact(2);
                    if let [last] = pairs.remainder() {
                        d_o[r][w / 2] = *last;
                    }
                    for ((pair, o), e) in pairs.zip(d_o[r].iter_mut()).zip(de[r][1..].iter_mut()) {
                        (*o, *e) = (pair[0], pair[1]);
                    }
                }
            }
            bt_columns(&de, &mut be);
            bt_columns(&d_o, &mut bo);
            // Then · B along the rows: columns (a, b, c, d) = (e[tx], o[tx], e[tx+1], o[tx+1]).
            for i in 0..4 {
                let (e0, e1) = (&be[i][..tiles_x], &be[i][1..]);
                let (o0, o1) = (&bo[i][..tiles_x], &bo[i][1..]);
                // SAFETY: (position, channel c, tile row) is written by this channel only, and
                // the tiles_x values lie inside the 16 × c_in × tiles buffer.
                let out = |j: usize| unsafe {
                    std::slice::from_raw_parts_mut(vp.0.add(((i * 4 + j) * c_in + c) * tiles + row_in_block * tiles_x), tiles_x)
                };
                combine(out(0), e0, e1, |a, c| a - c);
                combine(out(1), o0, e1, |b, c| b + c);
                combine(out(2), e1, o0, |c, b| c - b);
                combine(out(3), o0, o1, |b, d| b - d);
            }
        }
    });
}

/// `Bᵀ d` down the columns of four rows.
fn bt_columns(d: &[Vec<f32>; 4], b: &mut [Vec<f32>; 4]) {
    let [b0, b1, b2, b3] = b;
    for (((((d0, d1), d2), d3), (b0, b1)), (b2, b3)) in d[0]
        .iter()
        .zip(&d[1])
        .zip(&d[2])
        .zip(&d[3])
        .zip(b0.iter_mut().zip(b1.iter_mut()))
        .zip(b2.iter_mut().zip(b3.iter_mut()))
    {
        (*b0, *b1, *b2, *b3) = (d0 - d2, d1 + d2, d2 - d1, d1 - d3);
    }
}

/// `out[i] = f(a[i], b[i])`.
#[inline(always)]
fn combine(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = f(a, b);
    }
}

/// `Y = Aᵀ M A` for every tile of tile rows `rows`, plus bias and activation, into the
/// `[c_out, h, w]` output. `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`. Element-wise over each row
/// of tiles, like the input transform.
fn transform_output(
    m: &[f32],
    [c_out, h, w]: [usize; 3],
    rows: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    act: Option<Act>,
    out: &mut [f32],
) {
    let tiles_x = w.div_ceil(2);
    let tiles = rows.len() * tiles_x;
    let (y0, y1) = (2 * rows.start, (2 * rows.end).min(h));
    out.par_chunks_mut(h * w).enumerate().for_each(|(co, plane)| {
        let bias = bias.map_or(0.0, |b| b[co]);
        let row = || vec![0.0f32; tiles_x];
        // Aᵀ M for one tile row (two rows of four columns), then one output row's two columns.
        let mut s = [[row(), row(), row(), row()], [row(), row(), row(), row()]];
        let (mut ya, mut yb) = (row(), row());
        for (row_in_block, ty) in rows.clone().enumerate() {
            let at = |p: usize| &m[(p * c_out + co) * tiles + row_in_block * tiles_x..][..tiles_x];
            let [s0, s1] = &mut s;
            for (j, (s0, s1)) in s0.iter_mut().zip(s1.iter_mut()).enumerate() {
                let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                for (((((s0, s1), m0), m1), m2), m3) in s0.iter_mut().zip(s1.iter_mut()).zip(m0).zip(m1).zip(m2).zip(m3) {
                    (*s0, *s1) = (m0 + m1 + m2, m1 - m2 - m3);
                }
            }
            for (i, [s0, s1, s2, s3]) in s.iter().enumerate() {
                let y = 2 * ty + i;
                if y >= h {
                    continue;
                }
                for ((ya, yb), (((s0, s1), s2), s3)) in ya.iter_mut().zip(yb.iter_mut()).zip(s0.iter().zip(s1).zip(s2).zip(s3)) {
                    (*ya, *yb) = (s0 + s1 + s2 + bias, s1 - s2 - s3 + bias);
                }
                // Interleave the two output columns of each tile (the last tile of an odd
                // width has one).
                let dst = &mut plane[y * w..][..w];
                if w % 2 == 1 {
                    dst[w - 1] = ya[w / 2];
                }
                for ((pair, a), b) in dst.chunks_exact_mut(2).zip(&ya).zip(&yb) {
                    (pair[0], pair[1]) = (*a, *b);
                }
            }
        }
        if let Some(act) = act {
            act.apply_slice(&mut plane[y0 * w..y1 * w]);
        }
    });
}
