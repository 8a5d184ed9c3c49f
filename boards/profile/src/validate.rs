//! Value checks that parsing cannot make.

use std::collections::HashSet;

use crate::{same_power_mode, EngineKind, Problem, Profile};

pub(crate) fn validate(p: &Profile) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut bad = |key: &str, message: String| {
        out.push(Problem {
            key: key.to_string(),
            message,
        })
    };

    let b = &p.board;
    if b.name.is_empty()
        || !b
            .name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        bad(
            "board.name",
            format!(
                "`{}`: use lower-case letters, digits and '-' (the file name)",
                b.name
            ),
        );
    }
    if b.description.trim().is_empty() {
        bad("board.description", "must not be empty".into());
    }
    if b.arch.trim().is_empty() {
        bad(
            "board.arch",
            "must not be empty (aarch64, x86_64, ...)".into(),
        );
    }
    if b.cpu_cores == 0 {
        bad("board.cpu_cores", "must be > 0".into());
    }
    if b.memory_mb == 0 {
        bad("board.memory_mb", "must be > 0".into());
    }

    let e = &p.engine;
    if e.order.is_empty() {
        bad(
            "engine.order",
            "must name at least one engine (ort, tract)".into(),
        );
    }
    let mut seen = HashSet::new();
    for (i, k) in e.order.iter().enumerate() {
        if !seen.insert(*k) {
            bad(
                &format!("engine.order[{i}]"),
                format!("`{}` is listed twice", k.name()),
            );
        }
    }
    let mut seen = HashSet::new();
    for (i, ep) in e.execution_providers.iter().enumerate() {
        if !seen.insert(*ep) {
            bad(
                &format!("engine.execution_providers[{i}]"),
                format!("`{}` is listed twice", ep.name()),
            );
        }
    }
    if e.order.contains(&EngineKind::Ort) && e.execution_providers.is_empty() {
        bad(
            "engine.execution_providers",
            "must not be empty when engine.order has ort".into(),
        );
    }

    let a = &p.adaptation;
    if a.memory_budget_mb == 0 {
        bad("adaptation.memory_budget_mb", "must be > 0".into());
    } else if b.memory_mb > 0 && a.memory_budget_mb > b.memory_mb {
        bad(
            "adaptation.memory_budget_mb",
            format!(
                "{} MiB is more than board.memory_mb ({} MiB)",
                a.memory_budget_mb, b.memory_mb
            ),
        );
    }
    if a.batch_labeled == 0 {
        bad("adaptation.batch_labeled", "must be > 0".into());
    }
    if a.batch_unlabeled == 0 {
        bad("adaptation.batch_unlabeled", "must be > 0".into());
    }
    if !(1..=100).contains(&a.duty_cycle_percent) {
        bad(
            "adaptation.duty_cycle_percent",
            format!("{}: must be 1 to 100", a.duty_cycle_percent),
        );
    }
    if p.inference.batch == 0 {
        bad("inference.batch", "must be > 0".into());
    }

    let t = &p.thermal;
    let ceiling_ok = t.ceiling_c > 0.0 && t.ceiling_c <= 125.0;
    let resume = t.resume_c();
    if !ceiling_ok {
        bad(
            "thermal.ceiling_c",
            format!("{} °C: must be above 0 and at most 125", t.ceiling_c),
        );
    } else if resume.is_nan() || resume >= t.ceiling_c {
        bad(
            "thermal.resume_c",
            format!(
                "{} °C: must be below thermal.ceiling_c ({} °C)",
                resume, t.ceiling_c
            ),
        );
    }
    for (i, z) in t.zones.iter().enumerate() {
        if z.trim().is_empty() {
            bad(&format!("thermal.zones[{i}]"), "must not be empty".into());
        }
    }

    let pw = &p.power;
    if let Some(mode) = &pw.mode {
        if !pw.modes.is_empty() && !pw.modes.iter().any(|m| same_power_mode(m, mode)) {
            bad(
                "power.mode",
                format!(
                    "`{mode}` is not one of power.modes ({})",
                    pw.modes.join(", ")
                ),
            );
        }
    }

    if p.camera.pipeline.trim().is_empty() {
        bad("camera.pipeline", "must not be empty".into());
    }
    if p.camera.trigger_pulse_us == 0 || p.camera.trigger_pulse_us > 4_000_000 {
        bad(
            "camera.trigger_pulse_us",
            format!("{}: must be 1 to 4000000", p.camera.trigger_pulse_us),
        );
    }

    let mut used = Vec::new();
    for (name, l) in p.gpio.lines() {
        if l.chip.trim().is_empty() {
            bad(&format!("gpio.{name}.chip"), "must not be empty".into());
        }
        if let Some(pin) = l.header_pin {
            if !(1..=40).contains(&pin) {
                bad(
                    &format!("gpio.{name}.header_pin"),
                    format!("{pin}: must be 1 to 40"),
                );
            }
        }
        if let Some((other, _)) = used
            .iter()
            .find(|(_, o): &&(&str, &crate::GpioLine)| o.chip == l.chip && o.line == l.line)
        {
            bad(&format!("gpio.{name}"), format!("{l} is also gpio.{other}"));
        }
        used.push((name, l));
    }
    out
}
