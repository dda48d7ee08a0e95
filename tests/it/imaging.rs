//! Image loading, DC-AE preprocessing, tensor conversion, metrics and PNG metadata.
//!
//! Reference pictures and numbers under tests/fixtures/imaging/ were made by
//! tests/python/ref_metrics.py with Pillow and torchmetrics (the DC-AE authors' tools); Python is
//! not needed to run these tests.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use dcae::imaging::{self, GenerationParams, ImageLimits, ImagingError, SsimBorder};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage, Rgba};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imaging")
}

fn fixture(name: &str) -> RgbImage {
    imaging::load_rgb(fixtures().join(name), &ImageLimits::default()).expect("fixture loads")
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json is JSON")
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, format).expect("encode test image");
    bytes.into_inner()
}

fn load(bytes: &[u8]) -> Result<RgbImage, ImagingError> {
    imaging::load_rgb_from_bytes(bytes, &ImageLimits::default())
}

fn noise(w: u32, h: u32) -> RgbImage {
    let mut state = 0x2545_f491u32;
    RgbImage::from_fn(w, h, |_, _| {
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        };
        Rgb([next(), next(), next()])
    })
}

// ---------------------------------------------------------------- decoding

#[test]
fn grayscale_png_is_replicated_to_rgb() {
    let gray = ImageBuffer::from_fn(3, 2, |x, y| Luma([(x * 80 + y * 7) as u8]));
    let rgb = load(&encode(
        DynamicImage::ImageLuma8(gray.clone()),
        ImageFormat::Png,
    ))
    .unwrap();
    for (x, y, p) in rgb.enumerate_pixels() {
        let v = gray.get_pixel(x, y).0[0];
        assert_eq!(p.0, [v, v, v]);
    }
}

#[test]
fn gray_alpha_png_drops_alpha() {
    let la = ImageBuffer::from_fn(2, 2, |x, _| LumaA([if x == 0 { 10 } else { 240 }, 0]));
    let rgb = load(&encode(DynamicImage::ImageLumaA8(la), ImageFormat::Png)).unwrap();
    assert_eq!(rgb.get_pixel(0, 0).0, [10, 10, 10]);
    assert_eq!(rgb.get_pixel(1, 1).0, [240, 240, 240]);
}

#[test]
fn rgba_png_drops_alpha_like_pil_convert_rgb() {
    let rgba = ImageBuffer::from_fn(2, 1, |x, _| {
        if x == 0 {
            Rgba([200, 10, 30, 0])
        } else {
            Rgba([1, 2, 3, 128])
        }
    });
    let rgb = load(&encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png)).unwrap();
    assert_eq!(rgb.get_pixel(0, 0).0, [200, 10, 30]);
    assert_eq!(rgb.get_pixel(1, 0).0, [1, 2, 3]);
}

#[test]
fn sixteen_bit_png_scales_to_eight_bits() {
    // v * 257 is the 16-bit value that stands exactly for the 8-bit value v.
    let rgb16 = ImageBuffer::from_fn(4, 1, |x, _| {
        let v = [0u16, 1, 128, 255][x as usize] * 257;
        Rgb([v, 65535 - v, v])
    });
    let rgb = load(&encode(DynamicImage::ImageRgb16(rgb16), ImageFormat::Png)).unwrap();
    let row: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    assert_eq!(
        row,
        [[0, 255, 0], [1, 254, 1], [128, 127, 128], [255, 0, 255]]
    );

    let gray16 = ImageBuffer::from_fn(2, 1, |x, _| Luma([if x == 0 { 100 * 257 } else { 65535 }]));
    let rgb = load(&encode(DynamicImage::ImageLuma16(gray16), ImageFormat::Png)).unwrap();
    assert_eq!(rgb.get_pixel(0, 0).0, [100, 100, 100]);
    assert_eq!(rgb.get_pixel(1, 0).0, [255, 255, 255]);
}

#[test]
fn jpeg_decodes_close_to_the_source() {
    let src = RgbImage::from_pixel(16, 16, Rgb([200, 100, 50]));
    let bytes = encode(DynamicImage::ImageRgb8(src), ImageFormat::Jpeg);
    let rgb = load(&bytes).unwrap();
    assert_eq!(rgb.dimensions(), (16, 16));
    for p in rgb.pixels() {
        for (got, want) in p.0.iter().zip([200u8, 100, 50]) {
            assert!(
                got.abs_diff(want) <= 4,
                "JPEG pixel {:?} too far from [200, 100, 50]",
                p.0
            );
        }
    }
}

#[test]
fn webp_decodes_exactly() {
    // The image crate writes lossless WebP, so the pixels must come back unchanged.
    let src = noise(7, 5);
    let rgba = DynamicImage::ImageRgb8(src.clone()).into_rgba8();
    let rgb = load(&encode(DynamicImage::ImageRgba8(rgba), ImageFormat::WebP)).unwrap();
    assert_eq!(rgb, src);
}

#[test]
fn load_from_path_ignores_the_extension() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("actually_a_png.jpg");
    let src = noise(9, 4);
    std::fs::write(
        &path,
        encode(DynamicImage::ImageRgb8(src.clone()), ImageFormat::Png),
    )
    .unwrap();
    assert_eq!(
        imaging::load_rgb(&path, &ImageLimits::default()).unwrap(),
        src
    );
}

// ---------------------------------------------------------------- decoding errors

#[test]
fn text_file_is_not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.png");
    std::fs::write(&path, "just some text, not pixels\n").unwrap();
    let err = imaging::load_rgb(&path, &ImageLimits::default()).unwrap_err();
    assert!(matches!(err, ImagingError::NotAnImage { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("notes.png"), "{message}");
    assert!(
        message.contains("not a PNG, JPEG or WebP image"),
        "{message}"
    );
}

#[test]
fn empty_file_is_reported_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    std::fs::write(&path, b"").unwrap();
    let err = imaging::load_rgb(&path, &ImageLimits::default()).unwrap_err();
    assert!(matches!(err, ImagingError::EmptyFile { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.png"));
}

#[test]
fn other_formats_are_named_in_the_error() {
    let mut bmp = Cursor::new(Vec::new());
    // BMP is not enabled in this build, so write its magic by hand.
    std::io::Write::write_all(
        &mut bmp,
        b"BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00",
    )
    .unwrap();
    let err = load(bmp.get_ref()).unwrap_err();
    assert!(
        matches!(err, ImagingError::UnsupportedFormat { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("only PNG, JPEG and WebP"), "{err}");
}

#[test]
fn truncated_png_is_a_decode_error() {
    let bytes = encode(DynamicImage::ImageRgb8(noise(64, 64)), ImageFormat::Png);
    let err = load(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(err, ImagingError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated or corrupt"), "{err}");
}

#[test]
fn missing_file_names_the_path() {
    let err = imaging::load_rgb("/nonexistent/dir/photo.jpg", &ImageLimits::default()).unwrap_err();
    assert!(matches!(err, ImagingError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/dir/photo.jpg"),
        "{err}"
    );
}

#[test]
fn directory_is_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = imaging::load_rgb(dir.path(), &ImageLimits::default()).unwrap_err();
    assert!(matches!(err, ImagingError::NotAFile { .. }), "{err:?}");
}

#[test]
fn file_over_the_byte_limit_is_not_read() {
    let bytes = encode(DynamicImage::ImageRgb8(noise(8, 8)), ImageFormat::Png);
    let limits = ImageLimits {
        max_file_bytes: 100,
        ..ImageLimits::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.png");
    std::fs::write(&path, &bytes).unwrap();
    let err = imaging::load_rgb(&path, &limits).unwrap_err();
    assert!(
        matches!(err, ImagingError::FileTooLarge { limit: 100, .. }),
        "{err:?}"
    );
    let err = imaging::load_rgb_from_bytes(&bytes, &limits).unwrap_err();
    assert!(matches!(err, ImagingError::FileTooLarge { .. }), "{err:?}");
}

/// CRC-32 (ISO-HDLC), enough to forge a valid PNG chunk.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `w`×`h` pixels but whose data is a 1×1 image.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = encode(
        DynamicImage::ImageRgb8(RgbImage::new(1, 1)),
        ImageFormat::Png,
    );
    // Signature (8) + length (4) + "IHDR" (4), then width and height, then the CRC after 13 bytes.
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn huge_dimensions_are_refused_before_decoding() {
    // 100000 x 100000 RGB would need 30 GB if it were decoded.
    let err = load(&png_claiming(100_000, 100_000)).unwrap_err();
    match &err {
        ImagingError::TooManyPixels {
            width,
            height,
            limit,
            ..
        } => {
            assert_eq!((*width, *height, *limit), (100_000, 100_000, 100_000_000));
        }
        other => panic!("expected TooManyPixels, got {other:?}"),
    }
    assert!(err.to_string().contains("100000x100000"), "{err}");
    assert!(err.to_string().contains("not decoded"), "{err}");

    let small_limit = ImageLimits {
        max_pixels: 99,
        ..ImageLimits::default()
    };
    let bytes = encode(DynamicImage::ImageRgb8(noise(10, 10)), ImageFormat::Png);
    assert!(matches!(
        imaging::load_rgb_from_bytes(&bytes, &small_limit),
        Err(ImagingError::TooManyPixels { pixels: 100, .. })
    ));
}

#[test]
fn header_that_lies_about_its_size_fails_cleanly() {
    let err = load(&png_claiming(300, 200)).unwrap_err();
    assert!(matches!(err, ImagingError::Decode { .. }), "{err:?}");
}

// ---------------------------------------------------------------- preprocessing

#[test]
fn dm_crop_matches_pillow_bit_for_bit() {
    let reference = reference();
    let cases = reference["dm_crop"].as_array().expect("dm_crop cases");
    assert!(!cases.is_empty());
    for case in cases {
        let src = fixture(case["source"].as_str().unwrap());
        let size = case["size"].as_u64().unwrap() as u32;
        let expected = fixture(case["expected"].as_str().unwrap());
        let got = imaging::dm_crop(&src, size);
        assert_eq!(got.dimensions(), (size, size));
        let differing = got
            .pixels()
            .zip(expected.pixels())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{case}: {differing} pixels differ from Pillow"
        );
    }
}

#[test]
fn prepare_follows_the_documented_rules() {
    let src = fixture("dmcrop_src_202x139.png");
    // Not multiples of 32 and no size: the largest multiple of 32 within the short side (128).
    let out = imaging::prepare(src.clone(), 32, None).unwrap();
    assert_eq!(out, imaging::dm_crop(&src, 128));
    // An explicit size is the authors' DMCrop.
    let expected = fixture("dmcrop_202x139_to_64.png");
    assert_eq!(
        imaging::prepare(src.clone(), 32, Some(64)).unwrap(),
        expected
    );
    // Sides already multiples: untouched, even when not square.
    let ok = noise(64, 96);
    assert_eq!(imaging::prepare(ok.clone(), 32, None).unwrap(), ok);
    // Errors.
    let err = imaging::prepare(src.clone(), 32, Some(100)).unwrap_err();
    assert!(err.to_string().contains("multiple"), "{err}");
    assert!(matches!(
        imaging::prepare(noise(20, 40), 32, None),
        Err(ImagingError::ImageTooSmall { .. })
    ));
}

#[test]
fn dm_crop_known_values() {
    // A flat image stays flat through BOX halving and BICUBIC scaling.
    let flat = RgbImage::from_pixel(300, 200, Rgb([12, 34, 56]));
    let out = imaging::dm_crop(&flat, 64);
    assert!(out.pixels().all(|p| p.0 == [12, 34, 56]));
    // 4x4 -> 2: one BOX halving to exactly 2x2, each pixel the rounded mean of a 2x2 block,
    // rounded after each pass as Pillow does: (1+2+1)/2 = 2 per row, then (2+2+1)/2 = 2.
    let img = RgbImage::from_fn(4, 4, |x, y| {
        let v = if x < 2 && y < 2 {
            [1, 2, 1, 2][(y * 2 + x) as usize]
        } else {
            100
        };
        Rgb([v, v, v])
    });
    let out = imaging::dm_crop(&img, 2);
    assert_eq!(out.get_pixel(0, 0).0, [2, 2, 2]);
    assert_eq!(out.get_pixel(1, 1).0, [100, 100, 100]);
}

// ---------------------------------------------------------------- tensors

#[test]
fn every_pixel_value_round_trips_through_nchw() {
    let img = RgbImage::from_fn(16, 16, |x, y| {
        let v = (y * 16 + x) as u8;
        Rgb([v, 255 - v, v.wrapping_mul(7)])
    });
    let (data, shape) = imaging::to_nchw(std::slice::from_ref(&img)).unwrap();
    assert_eq!(shape, [1, 3, 16, 16]);
    assert_eq!(data[0], -1.0);
    assert_eq!(data[255], 1.0);
    assert!(data.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_eq!(imaging::to_rgb8(&data, 16, 16).unwrap(), img);
    assert_eq!(imaging::from_nchw(&data, shape).unwrap(), vec![img]);
}

#[test]
fn nchw_layout_is_planar() {
    let img = RgbImage::from_fn(2, 1, |x, _| {
        if x == 0 {
            Rgb([0, 255, 0])
        } else {
            Rgb([255, 0, 255])
        }
    });
    let (data, shape) = imaging::to_nchw(&[img.clone(), img]).unwrap();
    assert_eq!(shape, [2, 3, 1, 2]);
    assert_eq!(&data[..6], &[-1.0, 1.0, 1.0, -1.0, -1.0, 1.0]);
}

#[test]
fn tensor_conversion_errors() {
    assert!(matches!(
        imaging::to_nchw(&[]),
        Err(ImagingError::EmptyInput { .. })
    ));
    let err = imaging::to_nchw(&[RgbImage::new(2, 2), RgbImage::new(2, 3)]).unwrap_err();
    assert!(matches!(err, ImagingError::SizeMismatch { .. }), "{err:?}");
    assert!(matches!(
        imaging::to_rgb8(&[0.0; 5], 1, 2),
        Err(ImagingError::BufferLength { .. })
    ));
}

#[test]
fn to_rgb8_saturates_and_maps_nan_to_zero() {
    let chw = [f32::NAN, -3.0, 0.0, 2.0, 0.5, -0.5];
    let img = imaging::to_rgb8(&chw, 1, 2).unwrap();
    // 127.5 * x + 128, truncated: 0.5 -> 191.75 -> 191, -0.5 -> 64.25 -> 64.
    assert_eq!(img.get_pixel(0, 0).0, [0, 128, 191]);
    assert_eq!(img.get_pixel(1, 0).0, [0, 255, 64]);
}

// ---------------------------------------------------------------- metrics

fn close(got: f64, want: f64, tolerance: f64, what: &str) {
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: got {got}, reference {want}, tolerance {tolerance}"
    );
}

/// PSNR is compared with numpy's float64 to 1e-9 relative (only summation order differs) and with
/// the authors' float32 torch code to 1e-6 relative (float32 rounding of a mean of ~10^4 terms).
/// SSIM is compared with torchmetrics run in float64 to 1e-9 (same algorithm, same precision;
/// only convolution order differs), with the authors' float32 module to 1e-5 (their float32
/// rounding, measured at up to 3e-6 on these pairs), and the valid-window variant with
/// scikit-image to 1e-9.
#[test]
fn psnr_and_ssim_match_the_python_references() {
    let reference = reference();
    let pairs = reference["metrics"].as_array().expect("metric pairs");
    assert!(pairs.len() >= 5);
    for pair in pairs {
        let name = pair["name"].as_str().unwrap();
        let a = fixture(pair["a"].as_str().unwrap());
        let b = fixture(pair["b"].as_str().unwrap());

        let psnr = imaging::psnr(&a, &b).unwrap();
        match pair["psnr"].as_f64() {
            Some(want) => {
                close(psnr, want, 1e-9 * want, &format!("{name} psnr"));
                let authors = pair["psnr_authors_float32"].as_f64().unwrap();
                close(
                    psnr,
                    authors,
                    1e-6 * authors,
                    &format!("{name} psnr vs float32"),
                );
            }
            None => assert_eq!(psnr, f64::INFINITY, "{name}: identical images"),
        }

        let ssim = imaging::ssim(&a, &b).unwrap();
        close(
            ssim,
            pair["ssim_torchmetrics_float64"].as_f64().unwrap(),
            1e-9,
            &format!("{name} ssim"),
        );
        close(
            ssim,
            pair["ssim_authors_float32"].as_f64().unwrap(),
            1e-5,
            &format!("{name} ssim vs float32"),
        );

        match pair["ssim_valid_skimage"].as_f64() {
            Some(want) => {
                let valid = imaging::ssim_with(&a, &b, SsimBorder::Valid).unwrap();
                close(valid, want, 1e-9, &format!("{name} ssim valid"));
            }
            None => assert!(imaging::ssim_with(&a, &b, SsimBorder::Valid).is_err()),
        }
    }
}

#[test]
fn metrics_refuse_different_sizes() {
    let (a, b) = (RgbImage::new(4, 4), RgbImage::new(4, 5));
    assert!(matches!(
        imaging::psnr(&a, &b),
        Err(ImagingError::SizeMismatch { .. })
    ));
    assert!(matches!(
        imaging::ssim(&a, &b),
        Err(ImagingError::SizeMismatch { .. })
    ));
}

// ---------------------------------------------------------------- composition

#[test]
fn heatmap_strip_and_grid() {
    let a = fixture("pair_noise_a.png");
    let b = fixture("pair_noise_b.png");
    let heat = imaging::diff_heatmap_with_gain(&a, &b, 8.0).unwrap();
    assert_eq!(heat.dimensions(), a.dimensions());
    let same = imaging::diff_heatmap(&a, &a).unwrap();
    assert!(
        same.pixels().all(|p| p == same.get_pixel(0, 0)),
        "identical images give one colour"
    );
    assert!(imaging::diff_heatmap(&a, &RgbImage::new(1, 1)).is_err());

    let strip = imaging::side_by_side(&[&a, &b, &heat], 4);
    assert_eq!(strip.dimensions(), (3 * a.width() + 8, a.height()));
    assert_eq!(strip.get_pixel(a.width() + 4, 0), b.get_pixel(0, 0));
    assert_eq!(strip.get_pixel(a.width(), 0).0, [255, 255, 255]);

    let cells = vec![a.clone(), b.clone(), heat.clone(), a.clone(), b.clone()];
    let g = imaging::grid(&cells, 3);
    assert_eq!(g.dimensions(), (3 * a.width() + 4, 2 * a.height() + 2));
    assert_eq!(g.get_pixel(0, a.height() + 2), a.get_pixel(0, 0));
}

// ---------------------------------------------------------------- PNG text

#[test]
fn png_text_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.png");
    let img = noise(12, 7);
    let entries = [
        ("parameters", "class: 1 (goldfish)\nSteps: 30"),
        ("Comment", "Latin-1 café"),
        ("Title", "UTF-8 needs iTXt: 狐狸 🦊"),
    ];
    imaging::save_png_with_text(&img, &path, &entries).unwrap();
    assert!(!dir.path().join("sample.png.partial").exists());

    let mut read = imaging::read_png_text(&path).unwrap();
    read.sort();
    let mut want: Vec<(String, String)> = entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    assert_eq!(read, want);
    assert_eq!(
        imaging::load_rgb(&path, &ImageLimits::default()).unwrap(),
        img
    );

    let bytes = imaging::encode_png_with_text(&img, &[("k", "v")]).unwrap();
    assert_eq!(
        imaging::read_png_text_from_bytes(&bytes).unwrap(),
        [("k".to_string(), "v".to_string())]
    );
}

#[test]
fn png_text_errors() {
    let img = RgbImage::new(1, 1);
    let too_long = "k".repeat(80);
    for bad in ["", " lead", "a\u{3b1}", too_long.as_str()] {
        let err = imaging::encode_png_with_text(&img, &[(bad, "v")]).unwrap_err();
        assert!(
            matches!(err, ImagingError::InvalidTextKey { .. }),
            "{bad:?}: {err:?}"
        );
    }
    let err = imaging::read_png_text_from_bytes(b"hello").unwrap_err();
    assert!(err.to_string().contains("not a PNG"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/out.png");
    assert!(matches!(
        imaging::save_png_with_text(&img, &missing, &[]),
        Err(ImagingError::Write { .. })
    ));
}

// ---------------------------------------------------------------- generation parameters

fn sample_params() -> GenerationParams {
    GenerationParams {
        classes: vec![279, 333],
        guidance: 6.0,
        steps: 30,
        seed: 0,
        model: "dc-ae-f64c128-in-1.0 + uvit-2b".to_owned(),
        sampler: "DPM-Solver (order 3, fast)".to_owned(),
        batch: 2,
        img2img: None,
    }
}

#[test]
fn parameters_text_is_readable() {
    let text = sample_params().to_parameters_text();
    assert_eq!(
        text,
        "class: 279 (Arctic fox), 333 (hamster)\n\
         Steps: 30, Sampler: DPM-Solver (order 3, fast), CFG scale: 6.0, Seed: 0, \
         Model: dc-ae-f64c128-in-1.0 + uvit-2b, Batch: 2"
    );
}

#[test]
fn parameters_text_round_trips() {
    let mut awkward = sample_params();
    awkward.classes = vec![0, 999, 1000, 134];
    awkward.guidance = 1.3;
    awkward.seed = u64::MAX;
    awkward.model = "weird, \"quoted\": name (x".to_owned();
    awkward.sampler = "Euler: 2nd".to_owned();
    awkward.batch = 4;
    for params in [
        sample_params(),
        awkward,
        GenerationParams {
            classes: vec![],
            ..sample_params()
        },
    ] {
        let text = params.to_parameters_text();
        let parsed = GenerationParams::parse_parameters_text(&text)
            .unwrap_or_else(|e| panic!("{text}\n{e}"));
        assert_eq!(parsed, params, "{text}");
    }
}

#[test]
fn parameters_survive_a_png() {
    let params = sample_params();
    let text = params.to_parameters_text();
    let bytes =
        imaging::encode_png_with_text(&RgbImage::new(2, 2), &[(imaging::PARAMETERS_KEY, &text)])
            .unwrap();
    let entries = imaging::read_png_text_from_bytes(&bytes).unwrap();
    let (_, value) = entries
        .iter()
        .find(|(k, _)| k == imaging::PARAMETERS_KEY)
        .unwrap();
    assert_eq!(
        GenerationParams::parse_parameters_text(value).unwrap(),
        params
    );
}

#[test]
fn parameters_parse_errors_say_what_is_wrong() {
    let err = GenerationParams::parse_parameters_text("Steps: 30, Seed: 1").unwrap_err();
    assert!(err.to_string().contains("class"), "{err}");
    let err = GenerationParams::parse_parameters_text(
        "class: 1\nSteps: lots, Sampler: x, CFG scale: 1.0, Seed: 1, Model: m",
    )
    .unwrap_err();
    assert!(err.to_string().contains("Steps"), "{err}");
    let err = GenerationParams::parse_parameters_text("class: 1\nSteps: 3, Seed: 1").unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

// ---------------------------------------------------------------- odd shapes

#[test]
fn resize_window_equals_the_crop_of_the_whole_resize() {
    // Every combination the crops use: up and down, one axis unchanged, windows at the edges.
    let src = noise(37, 11);
    for filter in [imaging::ResampleFilter::Bicubic, imaging::ResampleFilter::Box] {
        for (w, h) in [(100, 30), (12, 5), (37, 29), (80, 11), (37, 11)] {
            let whole = imaging::resize(&src, w, h, filter);
            for (x, y, cw, ch) in [(0, 0, w, h), (w / 3, h / 4, w / 2, h / 2), (w - 1, h - 1, 1, 1), (0, h / 2, w, 1)] {
                let want = image::imageops::crop_imm(&whole, x, y, cw, ch).to_image();
                let got = imaging::resize_window(&src, w, h, x, y, cw, ch, filter);
                assert_eq!(got, want, "{filter:?} to {w}x{h}, window {cw}x{ch} at ({x},{y})");
            }
        }
    }
}

/// 100000×11 (1.1 MP, a 3 MB PNG) scaled by its short side to 512 was a 4.6-million-pixel-wide
/// intermediate: 7.3 GB of weights and pixels for a 512×512 crop (`dcae reconstruct --size 512`
/// peaked there and took 37 s). Only the crop may be computed now.
#[test]
fn regression_a_long_thin_strip_is_not_scaled_whole_before_the_crop() {
    let strip = RgbImage::from_fn(100_000, 11, |x, y| Rgb([(x % 251) as u8, (y * 20) as u8, (x / 400) as u8]));
    let input = strip.as_raw().len();
    let (square, peak) = super::alloc_peak::peak_bytes(|| imaging::prepare(strip.clone(), 32, Some(512)));
    let square = square.expect("a strip is a valid input");
    assert_eq!(square.dimensions(), (512, 512));
    // The copy of the input, the output and the weights of one 512-pixel window are a few MB.
    assert!(peak < input + (64 << 20), "preparing a 100000x11 strip held {} MB at once", peak >> 20);
    let (source, peak) = super::alloc_peak::peak_bytes(|| imaging::cover_crop(&strip, 768, 512));
    assert_eq!(source.dimensions(), (768, 512));
    assert!(peak < 64 << 20, "an image-to-image source from the strip held {} MB at once", peak >> 20);
    // The crop is the centre of the scaled strip: its middle column is the strip's middle.
    let mid = square.get_pixel(256, 256).0;
    assert!((i32::from(mid[2]) - 125).abs() <= 1, "{mid:?}");
}
