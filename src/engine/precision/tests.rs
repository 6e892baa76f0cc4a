//! The choice of a tower's arithmetic ([`choose`]) on fake towers, and the settings' spelling.

use super::*;

fn unit(v: &[f32]) -> Embedding {
    Embedding::new(v.to_vec()).expect("a non-zero vector")
}

#[test]
fn the_lowest_cosine_is_the_worst_pair() {
    let a = [unit(&[1.0, 0.0]), unit(&[0.0, 1.0])];
    let b = [unit(&[1.0, 0.0]), unit(&[1.0, 1.0])];
    let c = min_cosine(&a, &b);
    assert!((c - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-7, "{c}");
    assert_eq!(min_cosine(&[], &[]), 1.0);
}

#[test]
fn settings_spell_the_modes_in_lowercase() {
    #[derive(Deserialize)]
    struct S {
        p: Precision,
    }
    for (text, want) in [
        ("auto", Precision::Auto),
        ("f32", Precision::F32),
        ("bf16", Precision::Bf16),
        ("int8", Precision::Int8),
        ("int16", Precision::Int16),
    ] {
        let s: S = toml::from_str(&format!("p = \"{text}\"")).unwrap();
        assert_eq!(s.p, want);
    }
    assert!(toml::from_str::<S>("p = \"fp16\"").is_err());
    assert_eq!(Precision::default(), Precision::Auto);
    assert_eq!(
        serde_json::to_value(Arithmetic::Bf16).unwrap(),
        serde_json::json!("bf16")
    );
}

/// `f32` never builds a lossy tower; `auto` without the instructions neither, nor where no
/// lossy product is enough faster (and it checks nothing); with them, `auto` tries the fast
/// ones, the fastest first, and keeps the first at or above the threshold, else f32; `bf16`,
/// `int8` and `int16` keep theirs below it, and slower.
#[test]
fn the_choice_follows_the_mode_the_cpu_the_speed_and_the_threshold() {
    use Arithmetic::{Bf16, Int16, Int8, F32};
    // A fake tower: its "embedding" is a fixed direction per arithmetic.
    fn build(
        built: &std::cell::RefCell<Vec<Arithmetic>>,
    ) -> impl FnMut(Arithmetic) -> Result<Arithmetic, EngineError> + '_ {
        move |a| {
            built.borrow_mut().push(a);
            Ok(a)
        }
    }
    let off = |a: Arithmetic| match a {
        F32 => 0.0,
        Bf16 => 0.01,
        Int8 => 0.02,
        Int16 => 0.005,
    };
    let embed =
        |a: &Arithmetic| -> Result<Vec<Embedding>, EncodeError> { Ok(vec![unit(&[1.0, off(*a)])]) };
    // The cosine each lossy direction makes with f32's: bf16 0.99995, int8 0.9998, int16
    // 0.9999875.
    let cosine = |a: Arithmetic| 1.0 / (1.0 + f64::from(off(a)).powi(2)).sqrt();
    let built = std::cell::RefCell::new(Vec::new());
    let speeds = |bf16: f64, int8: f64, int16: f64| Lossy {
        bf16: Some(bf16),
        int8: Some(int8),
        int16: Some(int16),
    };
    let (got, r) = choose(
        "t",
        Precision::F32,
        0.9,
        || speeds(2.0, 3.0, 1.5),
        build(&built),
        embed,
    )
    .unwrap();
    assert_eq!(
        (got, r.check_min_cosine(), r.speedups, r.reason),
        (F32, None, Lossy::default(), Reason::F32Requested)
    );
    assert_eq!(*built.borrow(), [F32]);
    match (Bf16.supported(), Int8.supported()) {
        (true, true) => {}
        (false, false) => {
            eprintln!("no AVX512-BF16 nor AVX512-VNNI on this CPU: only the f32 cases run");
            for mode in [
                Precision::Auto,
                Precision::Bf16,
                Precision::Int8,
                Precision::Int16,
            ] {
                let (got, r) =
                    choose("t", mode, 0.9, Lossy::default, build(&built), embed).unwrap();
                assert_eq!((got, r.reason), (F32, Reason::UnsupportedCpu), "{mode:?}");
            }
            return;
        }
        partly => {
            eprintln!("SKIPPED: this CPU has only one of AVX512-BF16 and AVX512-VNNI ({partly:?})");
            return;
        }
    }
    let just_under = MIN_SPEEDUP - 0.01;
    let auto = Precision::Auto;
    for (mode, threshold, speedups, active, reason, builds) in [
        // The fastest passes.
        (
            auto,
            0.99,
            speeds(2.0, 3.0, 1.5),
            Int8,
            Reason::CheckPassed,
            vec![F32, Int8],
        ),
        (
            auto,
            0.99,
            speeds(3.0, 2.0, 1.5),
            Bf16,
            Reason::CheckPassed,
            vec![F32, Bf16],
        ),
        // The fastest fails, the next passes.
        (
            auto,
            0.9999,
            speeds(2.0, 3.0, 1.5),
            Bf16,
            Reason::CheckPassed,
            vec![F32, Int8, Bf16],
        ),
        // All fail: f32, built again.
        (
            auto,
            1.0,
            speeds(2.0, 3.0, 1.5),
            F32,
            Reason::CheckFailed,
            vec![F32, Int8, Bf16, Int16, F32],
        ),
        // bf16 slower (an Intel Xeon): int8, then int16, is tried.
        (
            auto,
            0.99,
            speeds(0.7, 3.0, 1.8),
            Int8,
            Reason::CheckPassed,
            vec![F32, Int8],
        ),
        (
            auto,
            0.9999,
            speeds(0.7, 3.0, 1.8),
            Int16,
            Reason::CheckPassed,
            vec![F32, Int8, Int16],
        ),
        (
            auto,
            0.99999,
            speeds(0.7, 3.0, 1.8),
            F32,
            Reason::CheckFailed,
            vec![F32, Int8, Int16, F32],
        ),
        // None fast enough, or not measured: f32, nothing else built.
        (
            auto,
            0.99,
            speeds(0.7, just_under, 1.0),
            F32,
            Reason::NotFaster,
            vec![F32],
        ),
        (
            auto,
            0.99,
            Lossy::default(),
            F32,
            Reason::NotFaster,
            vec![F32],
        ),
        // Asked for: kept below the threshold, and slower.
        (
            Precision::Bf16,
            1.0,
            speeds(0.7, 3.0, 1.8),
            Bf16,
            Reason::Requested,
            vec![F32, Bf16],
        ),
        (
            Precision::Int8,
            1.0,
            speeds(3.0, 0.7, 1.8),
            Int8,
            Reason::Requested,
            vec![F32, Int8],
        ),
        (
            Precision::Int16,
            1.0,
            speeds(3.0, 2.0, 0.7),
            Int16,
            Reason::Requested,
            vec![F32, Int16],
        ),
    ] {
        let what = format!("{mode:?}, threshold {threshold}, speed-ups {speedups:?}");
        built.borrow_mut().clear();
        let (got, r) = choose("t", mode, threshold, || speedups, build(&built), embed).unwrap();
        assert_eq!(
            (got, r.active, r.reason),
            (active, active, reason),
            "{what}"
        );
        assert_eq!(*built.borrow(), builds, "{what}");
        // Every lossy arithmetic built was checked, and only those.
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-6,
            (a, b) => a == b,
        };
        for a in Arithmetic::LOSSY {
            let want = builds.contains(&a).then(|| cosine(a));
            assert!(close(r.checks.of(a), want), "{what}: {a:?} {r:?}");
        }
        let highest = Arithmetic::LOSSY
            .into_iter()
            .filter(|a| builds.contains(a))
            .map(cosine)
            .reduce(f64::max);
        assert!(close(r.check_min_cosine(), highest), "{what}: {r:?}");
        let mut reported = Lossy::default();
        for a in Arithmetic::LOSSY {
            if mode == auto || mode.lossy() == Some(a) {
                reported.set(a, speedups.of(a));
            }
        }
        assert_eq!(r.speedups, reported, "{what}");
    }
}
