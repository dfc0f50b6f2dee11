//! The packed matmul against candle's dequantization, a dense f32 product, and its own reference.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Kernel, PackedLinear, QuantActs, QuantRows, BLOCK};

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn ggml(values: &[f32], rows: usize, cols: usize, dtype: GgmlDType) -> (QTensor, Vec<f32>) {
    let t = Tensor::from_vec(values.to_vec(), (rows, cols), &Device::Cpu).expect("tensor");
    let q = QTensor::quantize(&t, dtype).expect("quantize");
    let deq = q.dequantize(&Device::Cpu).expect("dequantize").flatten_all().expect("flat").to_vec1::<f32>().expect("vec");
    (q, deq)
}

#[test]
fn gguf_blocks_load_exactly() {
    let mut rng = StdRng::seed_from_u64(1);
    let (rows, cols) = (24, 96);
    let w = random(&mut rng, rows * cols);
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0] {
        let (q, deq) = ggml(&w, rows, cols, dtype);
        let data = q.data().expect("data");
        let parsed = QuantRows::from_ggml(dtype, &data, rows, cols).expect("a packed type").expect("parse");
        assert_eq!(parsed.bits, if matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1) { 4 } else { 8 }, "{dtype:?}");
        assert_eq!(parsed.dequantize(), deq, "{dtype:?}");
    }
    for dtype in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K, GgmlDType::F16] {
        assert!(QuantRows::from_ggml(dtype, &[], rows, cols).is_none(), "{dtype:?} is re-quantized, not read");
    }
}

#[test]
fn bad_shapes_are_named() {
    let err = QuantRows::from_q4_1(&[0u8; 20], 1, 40).expect_err("width");
    assert!(err.to_string().contains("40 inputs per row"), "{err}");
    let err = QuantRows::from_q8_0(&[0u8; 30], 1, 32).expect_err("size");
    assert!(err.to_string().contains("30 bytes"), "{err}");
}

fn dense_product(w: &[f32], x: &[f32], rows: usize, cols: usize, t: usize) -> Vec<f32> {
    let mut y = vec![0f32; t * rows];
    for i in 0..t {
        for r in 0..rows {
            y[i * rows + r] = (0..cols).map(|k| w[r * cols + k] * x[i * cols + k]).sum();
        }
    }
    y
}

/// Weights of both widths, 40 rows (a padded last group) and 48 (whole groups only).
fn cases() -> Vec<(QuantRows, Vec<f32>)> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = Vec::new();
    for (rows, cols) in [(40, 128), (48, 96)] {
        let w = random(&mut rng, rows * cols);
        let (q4, _) = ggml(&w, rows, cols, GgmlDType::Q4_1);
        let four = QuantRows::from_q4_1(&q4.data().expect("data"), rows, cols).expect("q4_1");
        let eight = QuantRows::from_f32(&w, rows, cols).expect("f32");
        out.extend([(four, w.clone()), (eight, w)]);
    }
    out
}

#[test]
fn close_to_the_dense_product() {
    let mut rng = StdRng::seed_from_u64(3);
    for (rows, _) in cases() {
        let deq = rows.dequantize();
        let t = 13;
        let x = random(&mut rng, t * rows.cols);
        let got = PackedLinear::new(&rows).forward(&x, t);
        let want = dense_product(&deq, &x, rows.rows, rows.cols, t);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(err < 0.02 * scale, "{}-bit: max error {err} against outputs up to {scale}", rows.bits);
    }
}

#[test]
fn a_row_is_bitwise_the_same_alone_or_batched() {
    let mut rng = StdRng::seed_from_u64(5);
    for (rows, _) in cases() {
        let packed = PackedLinear::new(&rows);
        // 13 tokens: partial tiles; 1366: the parallel quantization and output gather.
        for (t, picks) in [(13, vec![0, 7, 8, 12]), (1366, vec![0, 700, 1365])] {
            let x = random(&mut rng, t * rows.cols);
            let all = packed.forward(&x, t);
            for i in picks {
                let alone = packed.forward(&x[i * rows.cols..(i + 1) * rows.cols], 1);
                assert_eq!(alone, all[i * rows.rows..(i + 1) * rows.rows], "{}-bit, token {i} of {t}", rows.bits);
            }
        }
    }
}

/// The kernels this CPU runs besides the reference.
fn fast_kernels() -> Vec<Kernel> {
    let fast: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| *k != Kernel::Reference && k.available()).collect();
    eprintln!("kernels this CPU runs besides the reference: {fast:?}");
    fast
}

/// Every quantization the packed format holds (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 exactly, f32
/// re-quantized to 8 bits), on one row, on 17 (a padded group, not a multiple of the 256-bit
/// kernels' eight rows either), 40 and 48 rows, one to four blocks wide.
fn every_quantization() -> Vec<QuantRows> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut out = Vec::new();
    for (rows, cols) in [(1, 32), (17, 96), (40, 128), (48, 64)] {
        let w = random(&mut rng, rows * cols);
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0] {
            let (q, _) = ggml(&w, rows, cols, dtype);
            out.push(QuantRows::from_ggml(dtype, &q.data().expect("data"), rows, cols).expect("a packed type").expect("parse"));
        }
        out.push(QuantRows::from_f32(&w, rows, cols).expect("f32"));
    }
    out
}

#[test]
fn every_kernel_matches_the_reference_bitwise() {
    let mut rng = StdRng::seed_from_u64(9);
    let fast = fast_kernels();
    for rows in every_quantization() {
        let packed = PackedLinear::new(&rows);
        // One token, partial 256-bit and VNNI tiles, AMX's smallest tile, full and partial tiles
        // of each.
        for t in [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 40] {
            let x = random(&mut rng, t * rows.cols);
            let acts = QuantActs::new(&x, t, rows.cols);
            let slow = packed.forward_quantized(&acts, Kernel::Reference);
            for &kernel in &fast {
                assert_eq!(packed.forward_quantized(&acts, kernel), slow, "{kernel:?}, {}x{} {}-bit, {t} tokens", rows.rows, rows.cols, rows.bits);
            }
        }
    }
}

#[test]
fn symmetric_types_compute_their_minimums_to_the_same_bits() {
    // Q4_0, Q5_0 and Q8_0 blocks keep a minimum that is a fixed multiple of the scale: the packed
    // form leaves it out, and every kernel computes it, with the outputs of the stored form.
    let mut rng = StdRng::seed_from_u64(13);
    let mut kernels = fast_kernels();
    kernels.push(Kernel::Reference);
    for rows in every_quantization() {
        let packed = PackedLinear::new(&rows);
        let stored = PackedLinear::with_stored_mins(&rows);
        let symmetric = rows.bits == 8 && rows.min.iter().zip(&rows.scale).all(|(m, s)| *m == -128.0 * s || *m == -16.0 * s)
            || rows.bits == 4 && rows.min.iter().zip(&rows.scale).all(|(m, s)| *m == -8.0 * s || *m == -16.0 * s);
        assert_eq!(packed.computes_mins(), symmetric, "{}x{} {}-bit", rows.rows, rows.cols, rows.bits);
        assert!(!stored.computes_mins());
        for t in [1, 3, 8, 13] {
            let acts = QuantActs::new(&random(&mut rng, t * rows.cols), t, rows.cols);
            for &kernel in &kernels {
                let (got, want) = (packed.forward_quantized(&acts, kernel), stored.forward_quantized(&acts, kernel));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{kernel:?}, {}x{} {}-bit, {t} tokens", rows.rows, rows.cols, rows.bits);
            }
        }
    }
    // Each symmetric type is among the cases, and so is each that keeps its minimums.
    let computed: Vec<bool> = every_quantization().iter().map(|r| PackedLinear::new(r).computes_mins()).collect();
    assert!(computed.iter().any(|c| *c) && computed.iter().any(|c| !*c));
}

/// Activations of `t` tokens whose levels are `level(token, input)`, with exact level sums.
fn acts_of_levels(t: usize, cols: usize, level: impl Fn(usize, usize) -> i8) -> QuantActs {
    let blocks = cols / BLOCK;
    let levels: Vec<i8> = (0..t * cols).map(|i| level(i / cols, i % cols)).collect();
    let sum_of = |keep: fn(usize) -> bool| -> Vec<f32> {
        let block_sum = |b: &[i8]| b.iter().enumerate().filter(|(k, _)| keep(*k)).map(|(_, &l)| l as i32).sum::<i32>() as f32;
        levels.chunks_exact(BLOCK).map(block_sum).collect()
    };
    let (sum, pair_sum) = (sum_of(|_| true), sum_of(|k| k % 4 < 2));
    let scale = (0..t * blocks).map(|i| 0.5 + i as f32 / 64.0).collect();
    QuantActs { rows: t, cols, levels, scale, sum, pair_sum }
}

#[test]
fn kernels_stay_exact_at_the_extreme_levels() {
    // The largest products the format allows: 8-bit levels 0, 128 and 255 (centred: -128, 0,
    // 127) and 4-bit 15 against activations of +-127, where a 16-bit pair sum would saturate if a
    // kernel let it; with minimums stored, and computed as each multiple of the scale a kernel
    // adds to its integer sums (-8, -16, -128, which 4-bit levels store instead).
    let fast = fast_kernels();
    let (rows, cols) = (24, 64);
    for (bits, min) in [4u8, 8].into_iter().flat_map(|bits| [-1.0, -2.0, -4.0, -32.0].map(|min| (bits, min))) {
        let top = if bits == 4 { 15 } else { 255 };
        let patterns: [&dyn Fn(usize, usize) -> u8; 3] = [&|_, _| top, &|_, _| 0, &|r, k| [0, 128, top][(r + k) % 3]];
        for pattern in patterns {
            let n = rows * cols / BLOCK;
            let levels = (0..rows * cols).map(|i| pattern(i / cols, i % cols)).collect();
            let q = QuantRows { rows, cols, bits, scale: vec![0.25; n], min: vec![min; n], levels };
            let packed = PackedLinear::new(&q);
            let scaled = min != -1.0 && (bits == 8 || min != -32.0);
            assert_eq!(packed.computes_mins(), scaled, "{bits}-bit levels, minimum {min}");
            for acts in [acts_of_levels(5, cols, |_, _| 127), acts_of_levels(5, cols, |_, _| -127), acts_of_levels(5, cols, |t, k| if (t + k) % 2 == 0 { 127 } else { -127 })] {
                let slow = packed.forward_quantized(&acts, Kernel::Reference);
                for &kernel in &fast {
                    assert_eq!(packed.forward_quantized(&acts, kernel), slow, "{kernel:?}, {bits}-bit extremes, minimum {min}");
                }
            }
        }
    }
}

#[test]
fn kernels_are_named_for_settings() {
    for kernel in Kernel::ALL {
        assert_eq!(Kernel::from_name(kernel.name()), Some(kernel));
    }
    assert_eq!(Kernel::from_name("sse4"), None);
    assert_eq!(Kernel::parse_setting("avx2").ok(), Some(Some(Kernel::Avx2)));
    assert!(Kernel::best().available());
    // What `auto` picks on a CPU with AVX2 but no AVX-512 (scripts/test-avx2-cpu.sh runs these
    // tests on such an emulated CPU).
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && !std::arch::is_x86_feature_detected!("avx512f") {
        let want = if std::arch::is_x86_feature_detected!("avxvnni") { Kernel::AvxVnni } else { Kernel::Avx2 };
        assert_eq!(Kernel::best(), want);
        assert!(super::fast_kernel_available());
    }
    assert_eq!(Kernel::parse_setting("auto").ok(), Some(None));
    assert_eq!(Kernel::parse_setting("reference").ok(), Some(Some(Kernel::Reference)));
    let err = Kernel::parse_setting("fast").expect_err("unknown");
    assert!(err.to_string().contains("worker.cpu_kernel") && err.to_string().contains("\"fast\""), "{err}");
    if let Some(missing) = Kernel::ALL.into_iter().find(|k| !k.available()) {
        let err = Kernel::select(Some(missing)).expect_err("unavailable");
        assert!(err.to_string().contains(missing.name()), "{err}");
    }
}

#[test]
fn stacking_widens_four_bit_levels_exactly() {
    let cases = cases();
    let (four, eight) = (cases[0].0.clone(), cases[1].0.clone());
    let stacked = QuantRows::stack(vec![four.clone(), eight.clone()]).expect("stack");
    assert_eq!(stacked.bits, 8);
    assert_eq!(stacked.rows, four.rows + eight.rows);
    let mut want = four.dequantize();
    want.extend(eight.dequantize());
    assert_eq!(stacked.dequantize(), want);
}

#[test]
fn activations_round_to_nearest_even_within_the_block_scale() {
    let mut x = vec![0f32; 32];
    x[..8].copy_from_slice(&[127.0, 0.5, 1.5, -2.5, 126.6, -127.0, 3.49, -0.2]);
    let acts = QuantActs::new(&x, 1, 32);
    assert_eq!(acts.scale, vec![1.0]);
    assert_eq!(acts.levels[..8], [127, 0, 2, -2, 127, -127, 3, 0]);
    assert_eq!(acts.sum, vec![(127 + 2 - 2 + 127 - 127 + 3) as f32]);
    // Inputs 0, 1, 4 and 5: the first pair of each four.
    assert_eq!(acts.pair_sum, vec![(127 + 127 - 127) as f32]);
    let zeros = QuantActs::new(&[0f32; 32], 1, 32);
    let packed = PackedLinear::new(&cases()[0].0);
    assert!(packed.forward(&[], 0).is_empty(), "no tokens, no outputs");
    assert_eq!((zeros.scale[0], zeros.sum[0]), (0.0, 0.0));
}
