//! Comparing a profile with a machine.

use fieldtune_board_profile::{
    check_engines, check_host, compare, Finding, Host, Level, Profile, ThermalZone,
};

fn zone(kind: &str, temp_c: f32) -> ThermalZone {
    ThermalZone {
        kind: kind.into(),
        temp_c: Some(temp_c),
    }
}

fn orin_nano_host() -> Host {
    Host {
        arch: "aarch64".into(),
        cpus_present: Some(6),
        cpus_usable: 6,
        mem_total_mb: Some(7_620),
        device_tree_model: Some(
            "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super".into(),
        ),
        thermal_zones: vec![
            zone("cpu-thermal", 45.5),
            zone("gpu-thermal", 44.0),
            zone("soc0-thermal", 44.0),
            zone("tj-thermal", 46.1),
        ],
        gpio_chips: vec!["gpiochip0".into(), "gpiochip1".into()],
        gpio_labels: Some(vec!["tegra234-gpio".into(), "tegra234-gpio-aon".into()]),
        video_devices: 1,
        nvpmodel: Some(Ok("15W".into())),
    }
}

fn levels(f: &[Finding]) -> Vec<(Level, &'static str)> {
    f.iter().map(|f| (f.level, f.topic)).collect()
}

#[test]
fn a_matching_board_is_all_ok() {
    let p = Profile::load("jetson-orin-nano-8gb").unwrap();
    let f = compare(&p, &orin_nano_host());
    for x in &f {
        assert_eq!(x.level, Level::Ok, "{x}");
    }
    let topics: Vec<&str> = f.iter().map(|x| x.topic).collect();
    assert_eq!(
        topics,
        [
            "arch", "model", "cpu", "memory", "memory", "thermal", "thermal", "thermal", "power",
            "camera", "gpio", "gpio", "gpio"
        ]
    );
    assert_eq!(
        f[5].to_string(),
        "[ok]      thermal  cpu-thermal 45.5 °C (ceiling 80 °C)"
    );
}

#[test]
fn what_differs_is_said() {
    let p = Profile::load("jetson-orin-nano-8gb").unwrap();
    let mut h = orin_nano_host();
    h.nvpmodel = Some(Ok("MAXN_SUPER".into()));
    h.cpus_usable = 4; // 7W mode takes two cores offline
    h.thermal_zones.retain(|z| z.kind != "tj-thermal");
    h.thermal_zones[0].temp_c = Some(81.0);
    h.gpio_labels = Some(vec!["tegra194-gpio".into()]);
    let f = compare(&p, &h);
    let by_topic = |t: &str| f.iter().filter(|x| x.topic == t).collect::<Vec<_>>();
    assert_eq!(by_topic("cpu")[0].level, Level::Warn);
    assert!(by_topic("cpu")[0]
        .message
        .contains("6 cores present, 4 usable"));
    let thermal = by_topic("thermal");
    assert_eq!(thermal[0].level, Level::Warn, "{}", thermal[0]);
    assert!(thermal[0].message.contains("at or above the 80 °C ceiling"));
    assert_eq!(thermal[2].level, Level::Differs);
    assert_eq!(
        thermal[2].message,
        "zone tj-thermal not found (zones here: cpu-thermal, gpu-thermal, soc0-thermal)"
    );
    let power = by_topic("power");
    assert_eq!(power[0].level, Level::Differs);
    assert!(power[0]
        .message
        .starts_with("nvpmodel mode is MAXN_SUPER, profile expects 15W"));
    assert!(
        by_topic("gpio")
            .iter()
            .all(|g| g.level == Level::Differs
                && g.message.contains("no chip labelled tegra234-gpio"))
    );
}

#[test]
fn a_pc_is_not_a_jetson() {
    let p = Profile::load("jetson-orin-nano-8gb").unwrap();
    let h = Host {
        arch: "x86_64".into(),
        cpus_present: Some(2),
        cpus_usable: 2,
        mem_total_mb: Some(24_105),
        ..Host::default()
    };
    let f = compare(&p, &h);
    assert_eq!(
        levels(&f),
        [
            (Level::Differs, "arch"),
            (Level::Differs, "model"),
            (Level::Differs, "cpu"),
            (Level::Warn, "memory"),
            (Level::Ok, "memory"),
            (Level::Differs, "thermal"),
            (Level::Differs, "thermal"),
            (Level::Differs, "thermal"),
            (Level::Differs, "power"),
            (Level::Warn, "camera"),
            (Level::Differs, "gpio"),
            (Level::Differs, "gpio"),
            (Level::Differs, "gpio"),
        ]
    );
    assert_eq!(f[0].message, "profile is aarch64, this machine is x86_64");
    assert_eq!(
        f[3].message,
        "profile says 8192 MiB, this machine has more: 24105 MiB"
    );
    assert!(
        f[10].message.contains("no GPIO character device"),
        "{}",
        f[10]
    );
}

#[test]
fn memory_budget_against_a_small_machine() {
    let p = Profile::load("x86-cpu").unwrap();
    let h = Host {
        arch: "x86_64".into(),
        cpus_present: Some(4),
        cpus_usable: 4,
        mem_total_mb: Some(7_000),
        ..Host::default()
    };
    let f = compare(&p, &h);
    let mem: Vec<&Finding> = f.iter().filter(|x| x.topic == "memory").collect();
    assert_eq!(mem[0].level, Level::Ok);
    let mut small = h.clone();
    small.mem_total_mb = Some(4_000);
    let f_small = compare(&p, &small);
    assert_eq!(
        f_small[2].message,
        "profile says 8192 MiB, this machine has only 4000 MiB"
    );
    assert_eq!(f_small[2].level, Level::Differs);
    assert_eq!(
        f_small[3].level,
        Level::Differs,
        "budget larger than the machine"
    );
    assert_eq!(mem[1].level, Level::Warn);
    assert_eq!(
        mem[1].message,
        "adaptation budget 4096 MiB is more than half of this machine's 7000 MiB"
    );
    // x86-cpu watches no zone: said, not silently skipped.
    assert!(f
        .iter()
        .any(|x| x.topic == "thermal" && x.level == Level::Warn));
}

#[test]
fn engines_against_what_loaded() {
    let p = Profile::load("jetson-orin-nano-8gb").unwrap();
    let eps = [
        "CPUExecutionProvider".to_string(),
        "CUDAExecutionProvider".to_string(),
    ];
    let f = check_engines(&p, true, &eps);
    assert_eq!(
        levels(&f),
        [(Level::Differs, "engine"), (Level::Ok, "engine")]
    );
    assert!(f[0]
        .message
        .starts_with("execution provider tensorrt (TensorrtExecutionProvider) is not available"));
    assert_eq!(
        f[1].message,
        "would run ort with cuda (profile order: ort, tract)"
    );

    let f = check_engines(&p, false, &[]);
    assert_eq!(
        levels(&f),
        [(Level::Differs, "engine"), (Level::Ok, "engine")]
    );
    assert_eq!(f[1].message, "would run tract (profile order: ort, tract)");

    let pi = Profile::load("raspberry-pi-5").unwrap();
    let f = check_engines(&pi, false, &[]);
    assert_eq!(levels(&f), [(Level::Ok, "engine")]);
}

#[test]
fn probing_this_machine_works() {
    // Whatever this machine is, the probe reads it and the comparison names the arch first.
    let h = Host::probe();
    assert_eq!(h.arch, std::env::consts::ARCH);
    assert!(h.cpus_usable >= 1);
    let f = check_host(&Profile::load("x86-cpu").unwrap());
    assert_eq!(f[0].topic, "arch");
    for x in &f {
        println!("{x}");
    }
}

#[test]
fn every_difference_but_the_model_name_matters() {
    let p = Profile::load("jetson-orin-nano-8gb").unwrap();
    assert!(compare(&p, &orin_nano_host()).iter().all(|f| !f.matters()));
    let mut h = orin_nano_host();
    h.device_tree_model = Some("NVIDIA Jetson Orin NX".into());
    let f = compare(&p, &h);
    let model = f.iter().find(|f| f.topic == "model").unwrap();
    assert!(model.level == Level::Differs && !model.matters(), "{model}");
    h.arch = "x86_64".into();
    h.cpus_present = Some(8);
    h.thermal_zones.clear();
    let f = compare(&p, &h);
    let matter: Vec<&str> = f.iter().filter(|f| f.matters()).map(|f| f.topic).collect();
    assert_eq!(
        matter,
        ["arch", "cpu", "thermal", "thermal", "thermal"],
        "{f:?}"
    );
    // A warning never matters.
    h = orin_nano_host();
    h.video_devices = 0;
    let f = compare(&p, &h);
    assert!(f.iter().any(|f| f.level == Level::Warn));
    assert!(f.iter().all(|f| !f.matters()));
}
