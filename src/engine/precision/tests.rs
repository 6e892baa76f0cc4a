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
/// ones, the fastest first, and keeps the first at or above the threshold, else f32; `bf16`
/// and `int8` keep theirs below it, and slower.
#[test]
fn the_choice_follows_the_mode_the_cpu_the_speed_and_the_threshold() {
    use Arithmetic::{Bf16, Int8, F32};
    // A fake tower: its "embedding" is a fixed direction per arithmetic.
    fn build(
        built: &std::cell::RefCell<Vec<Arithmetic>>,
    ) -> impl FnMut(Arithmetic) -> Result<Arithmetic, EngineError> + '_ {
        move |a| {
            built.borrow_mut().push(a);
            Ok(a)
        }
    }
    let embed = |a: &Arithmetic| -> Result<Vec<Embedding>, EncodeError> {
        Ok(vec![match a {
            F32 => unit(&[1.0, 0.0]),
            Bf16 => unit(&[1.0, 0.01]),
            Int8 => unit(&[1.0, 0.02]),
        }])
    };
    let (cos_bf16, cos_int8) = (
        1.0 / (1.0f64 + 0.0001).sqrt(),
        1.0 / (1.0f64 + 0.0004).sqrt(),
    );
    let built = std::cell::RefCell::new(Vec::new());
    let both = |bf16: f64, int8: f64| Lossy {
        bf16: Some(bf16),
        int8: Some(int8),
    };
    let (got, r) = choose(
        "t",
        Precision::F32,
        0.9,
        || both(2.0, 3.0),
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
            for mode in [Precision::Auto, Precision::Bf16, Precision::Int8] {
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
    let none = Lossy::default();
    let auto = Precision::Auto;
    for (mode, threshold, speedups, active, reason, builds, checks) in [
        // The fastest passes.
        (
            auto,
            0.99,
            both(2.0, 3.0),
            Int8,
            Reason::CheckPassed,
            vec![F32, Int8],
            (None, Some(cos_int8)),
        ),
        (
            auto,
            0.99,
            both(3.0, 2.0),
            Bf16,
            Reason::CheckPassed,
            vec![F32, Bf16],
            (Some(cos_bf16), None),
        ),
        // The fastest fails, the next passes.
        (
            auto,
            0.9999,
            both(2.0, 3.0),
            Bf16,
            Reason::CheckPassed,
            vec![F32, Int8, Bf16],
            (Some(cos_bf16), Some(cos_int8)),
        ),
        // Both fail: f32, built again.
        (
            auto,
            1.0,
            both(2.0, 3.0),
            F32,
            Reason::CheckFailed,
            vec![F32, Int8, Bf16, F32],
            (Some(cos_bf16), Some(cos_int8)),
        ),
        // bf16 slower (an Intel Xeon): int8 alone is tried.
        (
            auto,
            0.99,
            both(0.7, 3.0),
            Int8,
            Reason::CheckPassed,
            vec![F32, Int8],
            (None, Some(cos_int8)),
        ),
        (
            auto,
            0.9999,
            both(0.7, 3.0),
            F32,
            Reason::CheckFailed,
            vec![F32, Int8, F32],
            (None, Some(cos_int8)),
        ),
        // Neither fast enough, or not measured: f32, nothing else built.
        (
            auto,
            0.99,
            both(0.7, just_under),
            F32,
            Reason::NotFaster,
            vec![F32],
            (None, None),
        ),
        (
            auto,
            0.99,
            none,
            F32,
            Reason::NotFaster,
            vec![F32],
            (None, None),
        ),
        // Asked for: kept below the threshold, and slower.
        (
            Precision::Bf16,
            1.0,
            both(0.7, 3.0),
            Bf16,
            Reason::Requested,
            vec![F32, Bf16],
            (Some(cos_bf16), None),
        ),
        (
            Precision::Int8,
            1.0,
            both(3.0, 0.7),
            Int8,
            Reason::Requested,
            vec![F32, Int8],
            (None, Some(cos_int8)),
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
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-6,
            (a, b) => a == b,
        };
        assert!(
            close(r.checks.bf16, checks.0) && close(r.checks.int8, checks.1),
            "{what}: {r:?}"
        );
        let highest = [checks.0, checks.1].into_iter().flatten().reduce(f64::max);
        assert!(close(r.check_min_cosine(), highest), "{what}: {r:?}");
        let reported = match mode {
            Precision::Auto => speedups,
            Precision::Bf16 => Lossy {
                bf16: speedups.bf16,
                int8: None,
            },
            _ => Lossy {
                bf16: None,
                int8: speedups.int8,
            },
        };
        assert_eq!(r.speedups, reported, "{what}");
    }
}
