use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::ops::*;
use super::*;

fn img(w: u32, h: u32, c: u8, data: Vec<u8>) -> Image8 {
    Image8::new(w, h, c, data).unwrap()
}

/// A random image (values 0..=255) from `seed`.
fn noise(w: u32, h: u32, c: u8, seed: u64) -> Image8 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = (w * h * c as u32) as usize;
    img(w, h, c, (0..n).map(|_| rng.gen()).collect())
}

/// A gray image whose value at (x, y) is `y * w + x + 1` (all distinct, none 0).
fn ramp(w: u32, h: u32) -> Image8 {
    img(w, h, 1, (0..w * h).map(|i| (i + 1) as u8).collect())
}

fn px(im: &Image8, x: u32, y: u32) -> u8 {
    im.get(x, y, 0).unwrap()
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

// ---------------------------------------------------------------- determinism

#[test]
fn same_seed_same_bytes_different_seed_differs() {
    let augs: [(&str, Box<dyn Augment>); 2] = [
        ("rand", Box::new(RandAugment::default())),
        (
            "weak",
            Box::new(WeakAugment {
                max_shift: 3,
                flip_horizontal: true,
            }),
        ),
    ];
    for c in [1, 3] {
        let src = noise(20, 16, c, 7);
        for (name, aug) in &augs {
            let a = aug.apply(&src, &mut rng(42));
            let b = aug.apply(&src, &mut rng(42));
            assert_eq!(a, b, "{name}");
            let differs = (43..53).any(|s| aug.apply(&src, &mut rng(s)) != a);
            assert!(differs, "{name}: ten other seeds all gave the same output");
        }
    }
}

#[test]
fn batch_is_reproducible_and_per_image() {
    let imgs: Vec<Image8> = (0..5).map(|i| noise(12, 12, 3, i)).collect();
    let refs: Vec<&Image8> = imgs.iter().collect();
    let aug = RandAugment::default();
    let a = augment_batch(&aug, &refs, 9);
    assert_eq!(a, augment_batch(&aug, &refs, 9));
    assert_ne!(a, augment_batch(&aug, &refs, 10));
    for (i, (out, src)) in a.iter().zip(&imgs).enumerate() {
        assert_eq!(out, &aug.apply(src, &mut image_rng(9, i as u64)));
    }
    // Image i's result does not depend on the rest of the batch.
    assert_eq!(augment_batch(&aug, &refs[..2], 9), a[..2]);
    // Streams differ per index even for identical inputs.
    let same = vec![&imgs[0]; 4];
    let outs = augment_batch(&aug, &same, 1);
    assert!(outs.windows(2).any(|w| w[0] != w[1]));
}

// ---------------------------------------------------------------- identities

#[test]
fn weak_without_shift_or_flip_and_identity_are_clones() {
    let src = noise(9, 7, 3, 1);
    let mut r = rng(0);
    assert_eq!(WeakAugment::default().apply(&src, &mut r), src);
    assert_eq!(
        WeakAugment {
            max_shift: 0,
            flip_horizontal: false
        }
        .apply(&src, &mut r),
        src
    );
    assert_eq!(Identity.apply(&src, &mut r), src);
    // No randomness was consumed.
    assert_eq!(r.gen::<u64>(), rng(0).gen::<u64>());
    let none = RandAugment {
        n: 0,
        max_magnitude: 1.0,
        cutout: 0.0,
    };
    assert_eq!(none.apply(&src, &mut r), src);
}

#[test]
fn every_magnitude_op_is_identity_at_zero() {
    for c in [1, 3] {
        for (w, h) in [(28, 28), (13, 9), (1, 1)] {
            let src = noise(w, h, c, 3);
            for op in Op::ALL {
                if matches!(op, Op::AutoContrast | Op::Equalize) {
                    continue; // no magnitude
                }
                for negative in [false, true] {
                    assert_eq!(op.apply_signed(&src, 0.0, negative), src, "{}", op.name());
                }
                assert_eq!(op.apply(&src, 0.0, &mut rng(5)), src, "{}", op.name());
            }
        }
    }
}

#[test]
fn ops_keep_size_and_channels() {
    let mut r = rng(11);
    for c in [1, 3] {
        for (w, h) in [(28, 28), (13, 9), (2, 5), (1, 1)] {
            let src = noise(w, h, c, 4);
            for op in Op::ALL {
                for m in [0.3, 1.0] {
                    let out = op.apply(&src, m, &mut r);
                    assert_eq!(out.shape(), src.shape(), "{}", op.name());
                    assert!(out.is_valid());
                }
            }
            for aug in [
                &RandAugment::default() as &dyn Augment,
                &WeakAugment {
                    max_shift: 4,
                    flip_horizontal: true,
                },
            ] {
                for s in 0..20 {
                    let out = aug.apply(&src, &mut rng(s));
                    assert_eq!(out.shape(), src.shape());
                    assert!(out.is_valid());
                }
            }
        }
    }
}

#[test]
fn ops_do_not_panic_on_odd_images() {
    let empty = Image8 {
        width: 0,
        height: 0,
        channels: 1,
        data: vec![],
    };
    let broken = Image8 {
        width: 4,
        height: 4,
        channels: 3,
        data: vec![1; 5],
    };
    for src in [&empty, &broken] {
        for op in Op::ALL {
            let _ = op.apply_signed(src, 1.0, true);
        }
        let _ = RandAugment::default().apply(src, &mut rng(0));
        let _ = WeakAugment {
            max_shift: 2,
            flip_horizontal: true,
        }
        .apply(src, &mut rng(0));
        let _ = cutout(src, 1, 1, 3, 127);
    }
    // Out-of-range settings are clamped, not trusted.
    let wild = RandAugment {
        n: 1000,
        max_magnitude: f32::NAN,
        cutout: 7.0,
    };
    let out = wild.apply(&noise(8, 8, 1, 0), &mut rng(0));
    assert_eq!(out.shape(), noise(8, 8, 1, 0).shape());
    assert!(wild.validate().is_err());
}

// ---------------------------------------------------------------- geometry

#[test]
fn translate_moves_pixels_by_k() {
    let src = ramp(6, 5);
    let t = translate(&src, 2, 0);
    for y in 0..5 {
        for x in 0..6 {
            let want = if x >= 2 { px(&src, x - 2, y) } else { 0 };
            assert_eq!(px(&t, x, y), want);
        }
    }
    let t = translate(&src, -1, 3);
    assert_eq!(px(&t, 0, 3), px(&src, 1, 0));
    assert_eq!(px(&t, 4, 4), px(&src, 5, 1));
    assert_eq!(px(&t, 5, 4), 0);
    assert_eq!(px(&t, 2, 2), 0);
    assert!(translate(&src, 6, 0).data.iter().all(|&v| v == 0));
    assert!(translate(&src, 0, -9).data.iter().all(|&v| v == 0));

    // Op mapping: round(0.3 * m * 10) = 3 px at m = 1, sign as drawn.
    let src = ramp(10, 10);
    let t = Op::TranslateX.apply_signed(&src, 1.0, false);
    assert_eq!(t, translate(&src, 3, 0));
    let t = Op::TranslateY.apply_signed(&src, 0.5, true);
    assert_eq!(t, translate(&src, 0, -2)); // round(1.5) = 2
    assert_eq!(px(&t, 4, 0), px(&src, 4, 2));
}

#[test]
fn translate_works_per_pixel_for_rgb() {
    let src = noise(5, 4, 3, 2);
    let t = translate(&src, 1, 1);
    assert_eq!(t.pixel(3, 2), src.pixel(2, 1));
    assert_eq!(t.pixel(0, 2), Some(&[0u8, 0, 0][..]));
}

#[test]
fn weak_shift_stays_in_range_and_flip_happens() {
    let src = ramp(8, 8);
    let aug = WeakAugment {
        max_shift: 2,
        flip_horizontal: false,
    };
    let mut seen = std::collections::HashSet::new();
    for s in 0..300 {
        let out = aug.apply(&src, &mut rng(s));
        let hit = (-2..=2)
            .flat_map(|dx| (-2..=2).map(move |dy| (dx, dy)))
            .find(|&(dx, dy)| translate(&src, dx, dy) == out);
        seen.insert(hit.expect("output is a shift of at most 2"));
    }
    assert_eq!(seen.len(), 25, "all shifts in [-2, 2]^2 occur");

    let flip = WeakAugment {
        max_shift: 0,
        flip_horizontal: true,
    };
    let outs: Vec<Image8> = (0..40).map(|s| flip.apply(&src, &mut rng(s))).collect();
    assert!(outs
        .iter()
        .all(|o| *o == src || *o == flip_horizontal(&src)));
    assert!(outs.contains(&src) && outs.contains(&flip_horizontal(&src)));
    assert_eq!(px(&flip_horizontal(&src), 0, 0), px(&src, 7, 0));
}

/// Counter-clockwise quarter turn of a square image by index arithmetic.
fn quarter_ccw(src: &Image8) -> Image8 {
    let n = src.width;
    let mut out = src.clone();
    for y in 0..n {
        for x in 0..n {
            // The pixel at (x, y) comes from (n - 1 - y, x): the right column becomes the top row.
            let s = ((x * n + (n - 1 - y)) * src.channels as u32) as usize;
            let d = ((y * n + x) * src.channels as u32) as usize;
            let c = src.channels as usize;
            out.data[d..d + c].copy_from_slice(&src.data[s..s + c]);
        }
    }
    out
}

#[test]
fn rotate_by_right_angles_maps_pixels() {
    for (n, c) in [(5, 1), (6, 1), (4, 3)] {
        let src = noise(n, n, c, n as u64);
        let q1 = quarter_ccw(&src);
        let q2 = quarter_ccw(&q1);
        let q3 = quarter_ccw(&q2);
        assert_eq!(rotate(&src, 90.0), q1, "n={n}");
        assert_eq!(rotate(&src, 180.0), q2, "n={n}");
        assert_eq!(rotate(&src, 270.0), q3, "n={n}");
        assert_eq!(rotate(&src, -90.0), q3, "n={n}");
        assert_eq!(rotate(&src, 360.0), src, "n={n}");
        assert_eq!(rotate(&src, 450.0), q1, "n={n}");
    }
    // Top-right corner of a 3x3 goes to the top-left at +90 (counter-clockwise).
    let r = rotate(&ramp(3, 3), 90.0);
    assert_eq!(r.data, vec![3, 6, 9, 2, 5, 8, 1, 4, 7]);
    // Rotating a non-square image by 90° crops and fills with 0.
    let r = rotate(&ramp(5, 3), 90.0);
    assert_eq!(px(&r, 0, 0), 0);
    assert_eq!(px(&r, 2, 1), px(&ramp(5, 3), 2, 1)); // the centre stays
                                                     // The op: ±30° at m = 1.
    let src = noise(9, 9, 1, 3);
    assert_eq!(
        Op::Rotate.apply_signed(&src, 1.0, false),
        rotate(&src, 30.0)
    );
    assert_eq!(
        Op::Rotate.apply_signed(&src, 0.5, true),
        rotate(&src, -15.0)
    );
    assert_eq!(px(&rotate(&src, 30.0), 4, 4), px(&src, 4, 4));
}

#[test]
fn shear_follows_the_formula() {
    let src = ramp(5, 5);
    // s = 0.5, cy = 2: row y samples x + 0.5 * (y - 2), rounded half up.
    let s = shear_x(&src, 0.5);
    for x in 0..5 {
        assert_eq!(px(&s, x, 2), px(&src, x, 2)); // offset 0
        let want4 = if x + 1 < 5 { px(&src, x + 1, 4) } else { 0 }; // offset +1
        assert_eq!(px(&s, x, 4), want4);
        let want0 = if x >= 1 { px(&src, x - 1, 0) } else { 0 }; // offset -1
        assert_eq!(px(&s, x, 0), want0);
        // Row 3: offset +0.5 rounds up to +1; row 1: -0.5 rounds up to 0.
        assert_eq!(px(&s, x, 3), if x + 1 < 5 { px(&src, x + 1, 3) } else { 0 });
        assert_eq!(px(&s, x, 1), px(&src, x, 1));
    }
    let t = shear_y(&src, -0.5);
    assert_eq!(px(&t, 4, 2), px(&src, 4, 1)); // y + (-0.5) * (4 - 2) = y - 1
    assert_eq!(px(&t, 4, 0), 0);
    assert_eq!(px(&t, 0, 0), px(&src, 0, 1));
    assert_eq!(
        Op::ShearX.apply_signed(&src, 1.0, true),
        shear_x(&src, -0.3)
    );
    assert_eq!(
        Op::ShearY.apply_signed(&src, 1.0, false),
        shear_y(&src, 0.3)
    );
}

// ---------------------------------------------------------------- colour

#[test]
fn posterize_keeps_top_bits() {
    let src = img(4, 1, 1, vec![0b1011_0111, 255, 15, 128]);
    assert_eq!(posterize(&src, 4).data, vec![0b1011_0000, 240, 0, 128]);
    assert_eq!(posterize(&src, 1).data, vec![128, 128, 0, 128]);
    assert_eq!(posterize(&src, 0).data, vec![0, 0, 0, 0]);
    assert_eq!(posterize(&src, 8), src);
    assert_eq!(
        Op::Posterize.apply_signed(&src, 0.5, false),
        posterize(&src, 6)
    );
    assert_eq!(
        Op::Posterize.apply_signed(&src, 1.0, false),
        posterize(&src, 4)
    );
}

#[test]
fn solarize_inverts_above_threshold() {
    let src = img(5, 1, 1, vec![0, 127, 128, 200, 255]);
    assert_eq!(solarize(&src, 128).data, vec![0, 127, 127, 55, 0]);
    assert_eq!(solarize(&src, 0).data, vec![255, 128, 127, 55, 0]);
    assert_eq!(solarize(&src, 256), src);
    assert_eq!(
        Op::Solarize.apply_signed(&src, 0.5, false),
        solarize(&src, 128)
    );
    assert_eq!(
        Op::Solarize.apply_signed(&src, 1.0, false),
        solarize(&src, 0)
    );
}

#[test]
fn autocontrast_stretches_each_channel() {
    let src = img(3, 1, 1, vec![50, 100, 150]);
    // (px - 50) * 255 / 100, rounded down.
    assert_eq!(autocontrast(&src).data, vec![0, 127, 255]);
    // PIL's float rounding, kept for parity: 68 -> 50.99.. -> 50 and 220 -> 254.99.. -> 254.
    let pil = img(3, 1, 1, vec![30, 68, 220]);
    assert_eq!(autocontrast(&pil).data, vec![0, 50, 254]);
    let flat = img(2, 1, 1, vec![9, 9]);
    assert_eq!(autocontrast(&flat), flat);
    // RGB: channel 0 spans 10..20, channel 1 is constant, channel 2 spans 0..255 already.
    let rgb = img(2, 1, 3, vec![10, 7, 0, 20, 7, 255]);
    assert_eq!(autocontrast(&rgb).data, vec![0, 7, 0, 255, 7, 255]);
}

#[test]
fn equalize_matches_pil_formula() {
    // 255 x 10, 255 x 20, 10 x 30: step = (520 - 10) // 255 = 2, n starts at 1;
    // lut[10] = 1 // 2 = 0, lut[20] = (1 + 255) // 2 = 128, lut[30] = (1 + 510) // 2 = 255.
    let mut data = vec![10u8; 255];
    data.extend([20u8; 255]);
    data.extend([30u8; 10]);
    let src = img(520, 1, 1, data);
    let out = equalize(&src);
    assert_eq!((out.data[0], out.data[300], out.data[519]), (0, 128, 255));
    // Fewer than 256 pixels outside the top bin: step = 0, identity.
    let small = img(4, 1, 1, vec![1, 2, 3, 4]);
    assert_eq!(equalize(&small), small);
    // A single used value: identity.
    let flat = Image8::filled(30, 30, 1, 77);
    assert_eq!(equalize(&flat), flat);
    // Per channel: RGB with channel 1 constant keeps it.
    let mut rgb = Image8::filled(520, 1, 3, 0);
    for (i, p) in rgb.data.chunks_exact_mut(3).enumerate() {
        p[0] = src.data[i];
        p[1] = 5;
        p[2] = src.data[i];
    }
    let out = equalize(&rgb);
    assert_eq!(out.pixel(300, 0), Some(&[128u8, 5, 128][..]));
}

#[test]
fn contrast_brightness_sharpness_by_hand() {
    let src = img(4, 1, 1, vec![0, 100, 200, 100]); // mean 100
    assert_eq!(gray_mean(&src), 100);
    assert_eq!(contrast(&src, 0.5).data, vec![50, 100, 150, 100]);
    assert_eq!(contrast(&src, 1.9).data, vec![0, 100, 255, 100]);
    assert_eq!(contrast(&src, 0.0).data, vec![100; 4]);
    // 0.1: 100 + 0.1 * (0 - 100) = 90, 100 + 0.1 * 100 = 110.
    assert_eq!(
        Op::Contrast.apply_signed(&src, 1.0, true).data,
        vec![90, 100, 110, 100]
    );
    // RGB: the mean is of the PIL-gray image; pure red has luma 76.
    let red = img(1, 1, 3, vec![255, 0, 0]);
    assert_eq!(gray_mean(&red), 76);
    assert_eq!(contrast(&red, 0.0).data, vec![76, 76, 76]);

    let b = img(3, 1, 1, vec![255, 3, 100]);
    assert_eq!(brightness(&b, 0.5).data, vec![127, 1, 50]); // truncated like PIL
    assert_eq!(brightness(&b, 1.9).data, vec![255, 5, 190]);
    assert_eq!(
        Op::Brightness.apply_signed(&b, 1.0, true).data,
        vec![25, 0, 10]
    );

    // 3x3 with a bright centre: SMOOTH centre = 5 * 130 / 13 = 50, border copied.
    let mut s = Image8::filled(3, 3, 1, 0);
    s.data[4] = 130;
    assert_eq!(smooth(&s).data, vec![0, 0, 0, 0, 50, 0, 0, 0, 0]);
    assert_eq!(sharpness(&s, 0.0), smooth(&s));
    assert_eq!(sharpness(&s, 2.0).data[4], 210); // 50 + 2 * (130 - 50)
    assert_eq!(sharpness(&s, 1.9).data[4], 202); // 50 + 1.9 * 80 = 202
                                                 // 4x4 of ones with one 14: neighbours see (8 + 13) / 13 -> round(1.615) = 2 inside.
    let mut t = Image8::filled(4, 4, 1, 1);
    t.data[5] = 14; // (1, 1)
    let sm = smooth(&t);
    assert_eq!(sm.data[5], 6); // (8 + 5 * 14) / 13 = 6
    assert_eq!(sm.data[10], 2); // (2, 2): (7 + 14 + 5) / 13 = 2
    assert_eq!(sm.data[0], 1);
}

#[test]
fn cutout_fills_exactly_the_square() {
    let src = Image8::filled(10, 8, 3, 9);
    let out = cutout(&src, 3, 2, 4, 127);
    for y in 0..8 {
        for x in 0..10 {
            let inside = (1..5).contains(&x) && (0..4).contains(&y);
            let want = if inside { [127u8; 3] } else { [9u8; 3] };
            assert_eq!(out.pixel(x, y), Some(&want[..]), "({x}, {y})");
        }
    }
    // Clipped at the corner: x, y in [-2, 2) -> [0, 2).
    let out = cutout(&src, 0, 0, 4, 127);
    assert_eq!(out.data.iter().filter(|&&v| v == 127).count(), 4 * 3);
    // Odd side: [cx - 1, cx + 2).
    let out = cutout(&Image8::filled(5, 5, 1, 0), 2, 2, 3, 127);
    let filled: Vec<usize> = (0..25).filter(|&i| out.data[i] == 127).collect();
    assert_eq!(filled, vec![6, 7, 8, 11, 12, 13, 16, 17, 18]);
    assert_eq!(cutout(&src, 3, 3, 0, 127), src);
    assert_eq!(cutout(&src, 30, 3, 4, 127), src);
}

#[test]
fn random_cutout_is_a_clipped_square_of_127() {
    let src = Image8::filled(20, 16, 1, 0);
    let mut sizes = Vec::new();
    for s in 0..200 {
        let out = random_cutout(&src, 0.5, &mut rng(s));
        let cells: Vec<(u32, u32)> = (0..16)
            .flat_map(|y| (0..20).map(move |x| (x, y)))
            .filter(|&(x, y)| px(&out, x, y) == 127)
            .collect();
        assert!(out.data.iter().all(|&v| v == 0 || v == 127));
        if let (Some(minx), Some(maxx)) = (
            cells.iter().map(|c| c.0).min(),
            cells.iter().map(|c| c.0).max(),
        ) {
            let miny = cells.iter().map(|c| c.1).min().unwrap();
            let maxy = cells.iter().map(|c| c.1).max().unwrap();
            // A full rectangle, at most 8 (= 0.5 * 16) on a side.
            assert_eq!(cells.len() as u32, (maxx - minx + 1) * (maxy - miny + 1));
            assert!(maxx - minx < 8 && maxy - miny < 8);
            sizes.push(maxx - minx + 1);
        }
    }
    assert!(sizes.iter().any(|&s| s >= 6), "{sizes:?}");
    // RandAugment always ends with a cutout of 127.
    let out = RandAugment {
        n: 0,
        max_magnitude: 1.0,
        cutout: 1.0,
    }
    .apply(&src, &mut rng(3));
    assert_eq!(out, random_cutout(&src, 1.0, &mut rng(3)));
}

#[test]
fn rand_augment_draw_order_is_documented() {
    // n ops: index, magnitude, (sign); then cutout: u, cx, cy.
    let src = noise(12, 12, 3, 8);
    let aug = RandAugment {
        n: 2,
        max_magnitude: 0.8,
        cutout: 0.4,
    };
    let mut r = rng(77);
    let mut manual = src.clone();
    for _ in 0..2 {
        let op = Op::ALL[r.gen_range(0..12)];
        let m = r.gen::<f32>() * 0.8;
        manual = op.apply(&manual, m, &mut r);
    }
    let manual = random_cutout(&manual, 0.4, &mut r);
    assert_eq!(aug.apply(&src, &mut rng(77)), manual);
}

// ---------------------------------------------------------------- config

#[test]
fn op_names_round_trip() {
    for op in Op::ALL {
        assert_eq!(Op::from_name(op.name()), Some(op));
    }
    assert_eq!(Op::from_name("blur"), None);
}

#[test]
fn augment_config_from_toml() {
    #[derive(serde::Deserialize)]
    struct Cfg {
        weak: AugmentConfig,
        strong: AugmentConfig,
    }
    let cfg: Cfg = toml::from_str(
        "weak = { kind = \"weak\", max_shift = 2 }\nstrong = { kind = \"randaugment\", n = 3 }\n",
    )
    .unwrap();
    assert_eq!(
        cfg.weak,
        AugmentConfig::Weak(WeakAugment {
            max_shift: 2,
            flip_horizontal: false
        })
    );
    assert_eq!(
        cfg.strong,
        AugmentConfig::RandAugment(RandAugment {
            n: 3,
            ..RandAugment::default()
        })
    );
    assert!(cfg.strong.build().is_ok());
    let id: AugmentConfig = toml::from_str("kind = \"identity\"").unwrap();
    assert_eq!(id, AugmentConfig::Identity);
    assert!(toml::from_str::<AugmentConfig>("kind = \"weak\"\nshift = 2").is_err());
    let bad: AugmentConfig = toml::from_str("kind = \"randaugment\"\ncutout = 2.0").unwrap();
    let err = bad.build().err().unwrap();
    assert!(err.to_string().contains("cutout"), "{err}");
}
