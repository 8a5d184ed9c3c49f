//! Byte parity with PIL 9.4 on fixtures written by `tests/pil/make_fixtures.py`.

use std::path::Path;

use fieldtune_augment::ops;
use fieldtune_augment::Image8;

fn load(path: &Path) -> Image8 {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if img.color().has_color() {
        img.to_rgb8().into()
    } else {
        img.to_luma8().into()
    }
}

fn apply(op: &str, img: &Image8, p: f32) -> Image8 {
    match op {
        "autocontrast" => ops::autocontrast(img),
        "equalize" => ops::equalize(img),
        "rotate" => ops::rotate(img, p),
        "shear_x" => ops::shear_x(img, p),
        "shear_y" => ops::shear_y(img, p),
        "translate_x" => ops::translate(img, p as i64, 0),
        "translate_y" => ops::translate(img, 0, p as i64),
        "contrast" => ops::contrast(img, p),
        "brightness" => ops::brightness(img, p),
        "sharpness" => ops::sharpness(img, p),
        "posterize" => ops::posterize(img, p as u8),
        "solarize" => ops::solarize(img, p as u16),
        other => panic!("unknown op {other}"),
    }
}

#[test]
fn ops_match_pil() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pil");
    let cases = std::fs::read_to_string(dir.join("cases.txt")).unwrap();
    let mut failures = Vec::new();
    let mut n = 0;
    for line in cases.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (input, op, param, expected) = (f[0], f[1], f[2], f[3]);
        let src = load(&dir.join(input));
        let want = load(&dir.join(expected));
        let got = apply(op, &src, param.parse().unwrap());
        n += 1;
        if got != want {
            let diff = got
                .data
                .iter()
                .zip(&want.data)
                .filter(|(a, b)| a != b)
                .count();
            let max = got
                .data
                .iter()
                .zip(&want.data)
                .map(|(a, b)| a.abs_diff(*b))
                .max();
            failures.push(format!("{line}: {diff} values differ (max {max:?})"));
        }
    }
    assert!(n >= 40, "only {n} cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
