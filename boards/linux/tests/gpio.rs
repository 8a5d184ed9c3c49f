//! Opening GPIO lines: errors name the chip and line, with or without the `linux-gpio` feature.

use fieldtune_board_linux::{GpioError, LineSpec, OutputLine};

#[cfg(not(feature = "linux-gpio"))]
#[test]
fn without_the_feature_opening_says_so() {
    let e = OutputLine::open(&LineSpec::new("tegra234-gpio", 105), "fieldtune", false).unwrap_err();
    assert!(matches!(e, GpioError::NotBuilt { line: 105, .. }));
    assert_eq!(
        e.to_string(),
        "GPIO tegra234-gpio line 105: this build has no GPIO support (build with the `linux-gpio` feature)"
    );
}

#[cfg(feature = "linux-gpio")]
#[test]
fn missing_chips_are_named_with_what_is_here() {
    for chip in ["/dev/gpiochip-none", "gpiochip987", "no-such-label"] {
        let e = OutputLine::open(&LineSpec::new(chip, 3), "fieldtune", false).unwrap_err();
        match &e {
            GpioError::ChipNotFound { chip: c, available } => {
                assert_eq!(c, chip);
                assert!(!available.is_empty());
            }
            other => panic!("{chip}: expected ChipNotFound, got {other}"),
        }
        assert!(
            e.to_string()
                .starts_with(&format!("GPIO chip `{chip}` not found (chips here: ")),
            "{e}"
        );
    }
}

#[test]
fn line_specs_display_for_messages() {
    let mut s = LineSpec::new("gpiochip0", 7);
    assert_eq!(s.to_string(), "gpiochip0 line 7");
    s.active_low = true;
    assert_eq!(s.to_string(), "gpiochip0 line 7 (active low)");
}
