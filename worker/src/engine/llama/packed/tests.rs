//! The packed matmul against candle's dequantization, a dense f32 product, and its own reference.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Kernel, PackedLinear, QuantActs, QuantRows};

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

#[test]
fn every_kernel_matches_the_reference_bitwise() {
    let mut rng = StdRng::seed_from_u64(9);
    let fast: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| *k != Kernel::Reference && k.available()).collect();
    eprintln!("kernels this CPU runs besides the reference: {fast:?}");
    for (rows, _) in cases() {
        let packed = PackedLinear::new(&rows);
        // One token, a partial VNNI tile, AMX's smallest tile, full and partial tiles of both.
        for t in [1, 3, 4, 5, 8, 13, 16, 17, 40] {
            let x = random(&mut rng, t * rows.cols);
            let acts = QuantActs::new(&x, t, rows.cols);
            let slow = packed.forward_quantized(&acts, Kernel::Reference);
            for &kernel in &fast {
                assert_eq!(packed.forward_quantized(&acts, kernel), slow, "{kernel:?}, {}-bit, {t} tokens", rows.bits);
            }
        }
    }
}

#[test]
fn kernels_are_named_for_settings() {
    for kernel in Kernel::ALL {
        assert_eq!(Kernel::from_name(kernel.name()), Some(kernel));
    }
    assert_eq!(Kernel::from_name("avx2"), None);
    assert!(Kernel::best().available());
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
    let zeros = QuantActs::new(&[0f32; 32], 1, 32);
    let packed = PackedLinear::new(&cases()[0].0);
    assert!(packed.forward(&[], 0).is_empty(), "no tokens, no outputs");
    assert_eq!((zeros.scale[0], zeros.sum[0]), (0.0, 0.0));
}
